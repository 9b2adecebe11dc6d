"""``--threshold-cv``: the foreground threshold chosen by leave-one-patient-out over the training patients."""

from __future__ import annotations

import argparse
import json
import math

import pytest

import vlsdk_medical.plugin as medical_plugin
from vlsdk_medical.pipeline import (
    LesionTrainConfig,
    add_arguments,
    evaluate_held_out,
    fit_lesion_model,
    lesion_train_set,
    run_from_args,
    train_lesion_segmenter,
)
from vlsdk_medical.threshold_cv import pick_threshold, threshold_dice


def _quick(brats_root, tmp_path, **changes) -> LesionTrainConfig:
    return LesionTrainConfig(data_root=str(brats_root), out_dir=str(tmp_path), quick=True, max_steps=2,
                             eval_slices=4, max_slices_per_case=4, roi_size=64, progress=False, **changes).resolved()


def test_pick_threshold_means_over_cases():
    table = {"a": {0.5: 0.70, 0.7: 0.80, 0.9: 0.60}, "b": {0.5: 0.90, 0.7: 0.86, 0.9: 0.95}}
    threshold, means = pick_threshold(table)
    assert threshold == 0.7 and means == pytest.approx({0.5: 0.80, 0.7: 0.83, 0.9: 0.775})
    assert pick_threshold({"a": {0.5: 0.8, 0.9: 0.9}, "b": {0.5: 0.8, 0.9: 0.6}})[0] == 0.5  # 0.80 vs 0.75
    assert pick_threshold({"a": {0.6: 0.8, 0.5: 0.8}})[0] == 0.5  # ties: the lowest
    # a case without lesion (NaN) does not count
    no_lesion = {0.5: math.nan, 0.9: math.nan}
    assert pick_threshold({"a": {0.5: 0.6, 0.9: 0.7}, "b": no_lesion}) == (0.9, {0.5: 0.6, 0.9: 0.7})


@pytest.mark.parametrize("table", [{}, {"a": {0.5: 0.8}, "b": {0.6: 0.8}}, {"a": {0.5: math.nan}}])
def test_pick_threshold_bad_tables(table):
    with pytest.raises(ValueError):
        pick_threshold(table)


def test_threshold_dice_agrees_with_the_held_out_evaluation(register_plugin, brats_root, tmp_path):
    from vlsdk_medical.dataset import find_brats_cases

    register_plugin(medical_plugin, "medical")
    cfg = _quick(brats_root, tmp_path, train_splits=("validation",))
    trainer, _ = fit_lesion_model(cfg)
    cases = find_brats_cases(cfg.data_root, cfg.eval_splits, cfg.modalities)
    table = threshold_dice(trainer.model, cfg, "cpu", cases, [0.3, 0.5, 0.7])
    (case,) = cases
    for t in (0.3, 0.5, 0.7):
        cfg.threshold = t
        held_out = evaluate_held_out(trainer.model, cfg, "cpu")["dice"][case.case_id]
        assert table[case.case_id][t] == pytest.approx(held_out)
    assert len(set(table[case.case_id].values())) > 1  # the thresholds give different masks


def test_exclude_cases_leaves_patients_out(brats_root, tmp_path):
    train_set, _ = lesion_train_set(_quick(brats_root, tmp_path, exclude_cases=("brats_2013_pat0005_1",)))
    assert [c.case_id for c in train_set.cases] == ["brats_2013_pat0006_1"]
    for bad, match in ((("brats_2013_pat0001_1",), "not patients of the training splits"),
                       (("brats_2013_pat0005_1", "brats_2013_pat0006_1"), "leave no training patient")):
        with pytest.raises(ValueError, match=match):
            lesion_train_set(_quick(brats_root, tmp_path, exclude_cases=bad))


def test_quick_run_picks_the_threshold_on_the_folds(register_plugin, brats_root, tmp_path, capsys):
    register_plugin(medical_plugin, "medical")
    cfg = _quick(brats_root, tmp_path, threshold_cv=True, cv_thresholds=(0.4, 0.6))
    results = train_lesion_segmenter(cfg)
    cv = results["threshold_cv"]
    assert set(cv["folds"]) == {"brats_2013_pat0005_1", "brats_2013_pat0006_1"}  # quick trains on "train" only
    assert (cv["threshold"], cv["mean"]) == pick_threshold(cv["folds"])
    assert results["inference"]["threshold"] == cv["threshold"]
    assert {p.name for p in (tmp_path / "cv").iterdir()} == set(cv["folds"])
    assert "threshold cv, fold 2/2 (brats_2013_pat0006_1 left out)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())["threshold_cv"]
    assert saved["threshold"] == cv["threshold"]


def test_threshold_cv_needs_a_binary_head_and_training(brats_root, tmp_path, capsys):
    with pytest.raises(ValueError, match="threshold_cv"):
        _quick(brats_root, tmp_path, threshold_cv=True, classes="brats")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", str(brats_root), "--eval-model", str(tmp_path), "--threshold-cv"])
    assert run_from_args(args) == 2
    assert "--threshold-cv" in capsys.readouterr().out

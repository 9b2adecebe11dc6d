"""``--threshold-cv``: the foreground threshold chosen by leave-one-patient-out over the training patients."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

import vlsdk_medical.plugin as medical_plugin
from vlsdk_medical.cli import add_arguments, run_from_args
from vlsdk_medical.evaluation import evaluate_held_out
from vlsdk_medical.task import LesionTask, held_out_set, lesion_train_set
from vlsdk_medical.threshold_cv import cross_validate_threshold, pick_threshold


def _quick(brats_root, tmp_path, **changes):
    values = {"data": brats_root, "out": tmp_path, "model": "tiny", "train_splits": ["train"], "max_steps": 2,
              "batch_size": 4, "eval_slices": 4, "max_slices_per_case": 4, "roi_size": 64, "progress": False,
              "device": "cpu", **changes}
    return LesionTask().settings(**values)


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


def test_dice_at_thresholds_agrees_with_the_held_out_evaluation(brats_root, tmp_path):
    import vlsdk

    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=2)
    model.add_head("lesion", task="segmentation", num_classes=1)  # untrained: probabilities spread around 0.5
    settings = _quick(brats_root, tmp_path, extra_thresholds=[0.3, 0.5, 0.7])
    data = held_out_set(settings)
    table = evaluate_held_out(model, data, settings)["dice_at"]
    (case,) = table[0.5]
    for t in (0.3, 0.5, 0.7):
        plain = evaluate_held_out(model, data, LesionTask().settings(**{**vars(settings), "threshold": t,
                                                                         "extra_thresholds": []}))
        assert table[t][case] == pytest.approx(plain["dice"][case])
    assert len({table[t][case] for t in table}) > 1  # the thresholds give different masks


def test_exclude_cases_leaves_patients_out(brats_root, tmp_path):
    train_set = lesion_train_set(_quick(brats_root, tmp_path, exclude_cases=["brats_2013_pat0005_1"]))
    assert [c.case_id for c in train_set.cases] == ["brats_2013_pat0006_1"]


def test_quick_run_picks_the_threshold_on_the_folds(register_plugin, brats_root, tmp_path, capsys):
    register_plugin(medical_plugin, "medical")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", str(brats_root), "--out", str(tmp_path), "--quick", "--max-steps", "1",
                              "--eval-slices", "4", "--roi-size", "64", "--no-progress", "--threshold-cv"])
    assert run_from_args(args) == 0
    cv = json.loads((tmp_path / "threshold_cv.json").read_text())
    assert set(cv["folds"]) == {"brats_2013_pat0005_1", "brats_2013_pat0006_1"}  # quick trains on "train" only
    folds = {case: {float(t): d for t, d in row.items()} for case, row in cv["folds"].items()}
    assert cv["threshold"] == pick_threshold(folds)[0]
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["metrics"]["inference"]["threshold"] == cv["threshold"]
    assert {p.name for p in (tmp_path / "cv").iterdir()} == set(cv["folds"])
    for case in cv["folds"]:  # each fold scored only its left-out patient, with a model that never saw it
        fold = json.loads((tmp_path / "cv" / case / "metrics.json").read_text())
        assert fold["metrics"]["eval_cases"] == [case]
        trained = json.loads((tmp_path / "cv" / case / "model" / "config.json").read_text())
        assert case not in trained["metadata"]["training"]["medical_input"]["train_cases"]
    assert "threshold cv, fold 2/2 (brats_2013_pat0006_1 left out)" in capsys.readouterr().out


def test_threshold_cv_needs_a_binary_head_and_training(brats_root, tmp_path, capsys):
    with pytest.raises(ValueError, match="threshold_cv needs classes='whole'"):
        cross_validate_threshold(LesionTask(), _quick(brats_root, tmp_path, classes="brats"), [0.5])
    with pytest.raises(ValueError, match="extra_thresholds"):
        _quick(brats_root, tmp_path, classes="brats", extra_thresholds=[0.5])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", str(brats_root), "--eval-model", str(tmp_path), "--threshold-cv"])
    assert run_from_args(args) == 2
    assert "--threshold-cv" in capsys.readouterr().out

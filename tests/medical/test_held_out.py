"""``held_out`` / ``--held-out``: any patient can be the held-out one (leave-one-patient-out runs)."""

from __future__ import annotations

import argparse
import json

import pytest

import vlsdk_medical.plugin as medical_plugin
from vlsdk_medical.pipeline import LesionTrainConfig, add_arguments, held_out_cases, run_from_args
from vlsdk_medical.threshold_cv import cross_validate_threshold

PATIENTS = ["brats_2013_pat0001_1", "brats_2013_pat0004_1", "brats_2013_pat0005_1", "brats_2013_pat0006_1"]


def test_held_out_replaces_the_splits(brats_root):
    cfg = LesionTrainConfig(data_root=str(brats_root), held_out=["brats_2013_pat0005_1"],
                            exclude_cases=("brats_2013_pat0004_1",)).resolved()
    assert cfg.exclude_cases == ("brats_2013_pat0004_1", "brats_2013_pat0005_1")
    assert [c.case_id for c in held_out_cases(cfg)] == ["brats_2013_pat0005_1"]
    assert cfg.resolved() == cfg  # resolving twice changes nothing
    default = LesionTrainConfig(data_root=str(brats_root)).resolved()
    assert [c.case_id for c in held_out_cases(default)] == ["brats_2013_pat0001_1"]  # the test split


def test_unknown_held_out_patient_is_named(brats_root):
    cfg = LesionTrainConfig(data_root=str(brats_root), held_out=("pat9",)).resolved()
    with pytest.raises(ValueError, match=r"held_out \['pat9'\] are not patients.*brats_2013_pat0001_1"):
        held_out_cases(cfg)


def test_cli_trains_on_every_other_patient(register_plugin, brats_root, tmp_path, capsys):
    register_plugin(medical_plugin, "medical")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", str(brats_root), "--out", str(tmp_path), "--quick", "--max-steps", "1",
                              "--eval-slices", "5", "--roi-size", "64", "--no-progress",
                              "--held-out", "brats_2013_pat0004_1"])
    assert run_from_args(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["eval_cases"] == ["brats_2013_pat0004_1"]
    assert results["train_cases"] == [p for p in PATIENTS if p != "brats_2013_pat0004_1"]
    assert "held-out patient brats_2013_pat0004_1" in capsys.readouterr().out
    # the saved model evaluated on the same held-out patient gives the same Dice
    again = parser.parse_args(["--data", str(brats_root), "--out", str(tmp_path / "again"), "--eval-slices", "5",
                               "--roi-size", "64", "--quick", "--held-out", "brats_2013_pat0004_1",
                               "--eval-model", str(tmp_path / "model")])
    assert run_from_args(again) == 0
    assert json.loads((tmp_path / "again" / "results.json").read_text())["dice"] == pytest.approx(results["dice"])
    # without --held-out it would score pat0001, which this model trained on: said, not silently reported
    default = parser.parse_args(["--data", str(brats_root), "--out", str(tmp_path / "default"), "--eval-slices", "5",
                                 "--roi-size", "64", "--quick", "--eval-model", str(tmp_path / "model")])
    with pytest.warns(UserWarning, match=r"was trained on \['brats_2013_pat0001_1'\]"):
        assert run_from_args(default) == 0


def test_threshold_cv_folds_never_see_the_held_out_patient(register_plugin, brats_root, tmp_path):
    register_plugin(medical_plugin, "medical")
    cfg = LesionTrainConfig(data_root=str(brats_root), out_dir=str(tmp_path), quick=True, max_steps=1, eval_slices=5,
                            max_slices_per_case=2, roi_size=64, progress=False, threshold_cv=True,
                            cv_thresholds=(0.5,), held_out=("brats_2013_pat0006_1",)).resolved()
    cv = cross_validate_threshold(cfg)
    assert sorted(cv["folds"]) == [p for p in PATIENTS if p != "brats_2013_pat0006_1"]

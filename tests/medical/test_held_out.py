"""``held_out`` / ``--held-out``: any patient can be the held-out one (leave-one-patient-out runs)."""

from __future__ import annotations

import argparse
import json

import pytest

import vlsdk_medical.plugin as medical_plugin
from vlsdk_medical.cli import add_arguments, run_from_args
from vlsdk_medical.lesion_settings import LesionSettings
from vlsdk_medical.task import held_out_cases, train_cases
from vlsdk_medical.threshold_cv import fold_settings

PATIENTS = ["brats_2013_pat0001_1", "brats_2013_pat0004_1", "brats_2013_pat0005_1", "brats_2013_pat0006_1"]


def _ids(cases):
    return [c.case_id for c in cases]


def test_held_out_replaces_the_splits(brats_root):
    settings = LesionSettings(data=brats_root, held_out=["brats_2013_pat0005_1"],
                              exclude_cases=["brats_2013_pat0004_1"])
    assert _ids(held_out_cases(settings)) == ["brats_2013_pat0005_1"]
    assert _ids(train_cases(settings)) == ["brats_2013_pat0001_1", "brats_2013_pat0006_1"]  # every split trains
    default = LesionSettings(data=brats_root)
    assert _ids(held_out_cases(default)) == ["brats_2013_pat0001_1"]  # the test split
    assert _ids(train_cases(default)) == ["brats_2013_pat0004_1", "brats_2013_pat0005_1", "brats_2013_pat0006_1"]


def test_unknown_held_out_or_excluded_patient_is_named(brats_root):
    with pytest.raises(ValueError, match=r"held_out \['pat9'\] are not patients.*brats_2013_pat0001_1"):
        train_cases(LesionSettings(data=brats_root, held_out=["pat9"]))
    with pytest.raises(ValueError, match=r"exclude_cases \['brats_2013_pat0001_1'\] are not patients of the "
                                         r"training splits \['train'\]"):
        train_cases(LesionSettings(data=brats_root, train_splits=["train"], exclude_cases=["brats_2013_pat0001_1"]))
    with pytest.raises(ValueError, match="leave no training patient"):
        train_cases(LesionSettings(data=brats_root, train_splits=["train"],
                                   exclude_cases=["brats_2013_pat0005_1", "brats_2013_pat0006_1"]))
    with pytest.raises(ValueError, match="overlap"):
        LesionSettings(train_splits=["train", "test"])


def test_cli_trains_on_every_other_patient(register_plugin, brats_root, tmp_path, capsys):
    register_plugin(medical_plugin, "medical")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", str(brats_root), "--out", str(tmp_path), "--quick", "--max-steps", "1",
                              "--eval-slices", "5", "--roi-size", "64", "--no-progress",
                              "--held-out", "brats_2013_pat0004_1"])
    assert run_from_args(args) == 0
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["metrics"]["eval_cases"] == ["brats_2013_pat0004_1"]
    meta = json.loads((tmp_path / "model" / "config.json").read_text())["metadata"]
    assert meta["training"]["medical_input"]["train_cases"] == [p for p in PATIENTS if p != "brats_2013_pat0004_1"]
    assert "held-out patient brats_2013_pat0004_1" in capsys.readouterr().out
    # the saved model evaluated on the same held-out patient gives the same Dice
    again = parser.parse_args(["--data", str(brats_root), "--out", str(tmp_path / "again"), "--eval-slices", "5",
                               "--roi-size", "64", "--quick", "--held-out", "brats_2013_pat0004_1",
                               "--eval-model", str(tmp_path / "model")])
    assert run_from_args(again) == 0
    evaluated = json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"]
    assert evaluated["dice"] == pytest.approx(summary["metrics"]["dice"])
    assert (tmp_path / "again" / "predictions.png").is_file()
    # without --held-out it would score pat0001, which this model trained on: said, not silently reported
    default = parser.parse_args(["--data", str(brats_root), "--out", str(tmp_path / "default"), "--eval-slices", "5",
                                 "--roi-size", "64", "--quick", "--eval-model", str(tmp_path / "model")])
    with pytest.warns(UserWarning, match=r"was trained on \['brats_2013_pat0001_1'\]"):
        assert run_from_args(default) == 0


def test_threshold_cv_folds_never_see_the_held_out_patient(brats_root, tmp_path):
    settings = LesionSettings(data=brats_root, out=tmp_path, held_out=["brats_2013_pat0006_1"])
    for patient in ("brats_2013_pat0001_1", "brats_2013_pat0004_1", "brats_2013_pat0005_1"):
        fold = fold_settings(settings, patient, [0.5, 0.7])
        assert _ids(held_out_cases(fold)) == [patient] and fold.extra_thresholds == [0.5, 0.7]
        assert sorted(_ids(train_cases(fold))) == [p for p in PATIENTS if p not in (patient, "brats_2013_pat0006_1")]
        assert fold.out == tmp_path / "cv" / patient
    plain = LesionSettings(data=brats_root, train_splits=["train"])  # pat0004 (validation) and pat0001 (test) unused
    assert _ids(train_cases(fold_settings(plain, "brats_2013_pat0005_1", [0.5]))) == ["brats_2013_pat0006_1"]
    with pytest.raises(ValueError, match="no training patient"):
        fold_settings(settings, "brats_2013_pat0006_1", [0.5])

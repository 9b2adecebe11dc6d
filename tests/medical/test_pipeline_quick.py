"""The lesion pipeline in --quick mode through the ``vlsdk medical-lesion`` subcommand and the example."""

from __future__ import annotations

import json
import math
import runpy
import sys

import vlsdk_medical.plugin as medical_plugin


def test_quick_run_via_cli(register_plugin, brats_root, tmp_path, capsys):
    register_plugin(medical_plugin, "medical")
    import vlsdk
    from vlsdk.cli import main

    out = tmp_path / "run"
    status = main(["medical-lesion", "--quick", "--data", str(brats_root), "--out", str(out), "--max-steps", "2",
                   "--eval-slices", "4", "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "held-out patient brats_2013_pat0001_1: whole-tumour Dice" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["eval_cases"] == ["brats_2013_pat0001_1"]
    assert "brats_2013_pat0001_1" not in results["train_cases"]
    assert math.isfinite(results["dice"]["brats_2013_pat0001_1"]) and results["steps"] == 2
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = vlsdk.VLModel.from_pretrained(out / "model")
    assert "lesion" in model.heads and "medical.lesion" in model.expert_specs


def test_example_script_help(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["medical_lesion_segmentation.py", "--help"])
    try:
        runpy.run_path("examples/medical_lesion_segmentation.py", run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0
    text = capsys.readouterr().out
    for flag in ("--quick", "--device", "--amp", "--epochs", "--batch-size"):
        assert flag in text


def test_quick_multiclass_head(register_plugin, brats_root, tmp_path):
    from vlsdk_medical.pipeline import LesionTrainConfig, train_lesion_segmenter

    register_plugin(medical_plugin, "medical")
    results = train_lesion_segmenter(LesionTrainConfig(
        data_root=str(brats_root), out_dir=str(tmp_path), quick=True, max_steps=1, eval_slices=2,
        train_splits=("validation",),
        max_slices_per_case=2, roi_size=64, classes="brats", lesion_expert=False, progress=False))
    per_class = results["dice_per_class"]["brats_2013_pat0001_1"]
    assert len(per_class) == 4  # classes 1-4 (background not scored)
    assert set(results["dice"]) == {"brats_2013_pat0001_1"}  # whole tumour (nan if the 2 slices hold none)

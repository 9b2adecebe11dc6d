"""The ``medical.lesion`` task in quick mode: through ``vlsdk medical-lesion``, the example and the runner."""

from __future__ import annotations

import json
import math
import runpy
import sys

import pytest

import vlsdk_medical.plugin as medical_plugin


def test_quick_run_via_cli(register_plugin, brats_root, tmp_path, capsys):
    register_plugin(medical_plugin, "medical")
    import vlsdk
    from vlsdk.cli import main
    from vlsdk_medical.inference import recorded_input

    out = tmp_path / "run"
    status = main(["medical-lesion", "--quick", "--data", str(brats_root), "--out", str(out), "--max-steps", "2",
                   "--eval-slices", "4", "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "held-out patient brats_2013_pat0001_1: whole-tumour Dice" in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["task"] == "medical.lesion" and summary["steps"] == 2
    assert summary["metrics"]["eval_cases"] == ["brats_2013_pat0001_1"]
    assert math.isfinite(summary["metrics"]["dice"]["brats_2013_pat0001_1"])
    assert summary["primary"] == summary["metrics"]["dice_mean"]
    assert (out / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recorded = recorded_input(out / "model")  # what vlsdk predict and --eval-model read back
    assert recorded["train_cases"] == ["brats_2013_pat0005_1", "brats_2013_pat0006_1"]  # quick: "train" only
    model = vlsdk.VLModel.from_pretrained(out / "model")
    assert "lesion" in model.heads and "medical.lesion" in model.expert_specs
    assert model.metadata.class_names == {"lesion": ("background", "lesion")}
    assert model.metadata.input.channels == ("flair", "t1c")


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    import argparse

    from vlsdk_medical.cli import add_arguments, run_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_from_args(parser.parse_args([])) == 2  # no library default into ../shared
    assert "pass --data DIR" in capsys.readouterr().out
    assert run_from_args(parser.parse_args(["--data", str(tmp_path / "absent")])) == 2
    assert "absent not found" in capsys.readouterr().out


def test_example_script_help(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["medical_lesion_segmentation.py", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path("examples/medical_lesion_segmentation.py", run_name="__main__")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--quick", "--device", "--amp", "--epochs", "--batch-size", "--held-out", "--threshold-cv",
                 "--eval-model", "--context-slices"):
        assert flag in text


def test_quick_multiclass_head(register_plugin, brats_root, tmp_path):
    from vlsdk.tasks import train
    from vlsdk_medical.task import LesionTask

    register_plugin(medical_plugin, "medical")
    task = LesionTask()
    settings = task.settings(data=brats_root, out=tmp_path, model="tiny", max_steps=1, eval_slices=2,
                             train_splits=["validation"], max_slices_per_case=2, roi_size=64, batch_size=2,
                             classes="brats", experts=[], progress=False, device="cpu", draw=0)
    result = train(task, settings)
    per_class = result.metrics["dice_per_class"]["brats_2013_pat0001_1"]
    assert len(per_class) == 4  # classes 1-4 (background not scored)
    assert set(result.metrics["dice"]) == {"brats_2013_pat0001_1"}  # whole tumour (nan if the 2 slices hold none)
    meta = json.loads((tmp_path / "model" / "config.json").read_text())["metadata"]
    assert meta["class_names"]["lesion"] == ["background", "necrosis", "oedema", "non-enhancing", "enhancing"]


def test_predict_counts_the_voxels_the_evaluation_scores(brats_root):
    import torch

    import vlsdk
    from vlsdk_medical.evaluation import evaluate_held_out
    from vlsdk_medical.task import LesionTask, held_out_set

    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=2)
    model.add_head("lesion", task="segmentation", num_classes=1)  # untrained: speckled predictions
    task = LesionTask()
    settings = task.settings(data=brats_root, eval_slices=3, roi_size=64)
    data = held_out_set(settings)
    (row,) = task.predict(model, data, settings)
    pred = evaluate_held_out(model, data, settings)["shown"]["brats_2013_pat0001_1"][2]  # after post-processing
    assert row["case"] == "brats_2013_pat0001_1" and len(row["slices"]) == 3
    assert row["voxels"] == [int((pred == 0).sum()), int(pred.sum())]
    assert row["volume_mm3"] > 0  # three slices spread over the brain: each stands for a slab of slices

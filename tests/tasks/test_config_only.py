"""A task composed only from a config: train, evaluate, save, reload, predict and export with no Python."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vlsdk.cli.main import main

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "coco_detection.yaml"


def _run(*args: str) -> None:
    status = main(list(args))
    assert status == 0, f"vlsdk {' '.join(args)} exited {status}"


def test_coco_detection_from_the_shipped_config(coco_dir, tmp_path, capsys):
    out = tmp_path / "run"
    _run("train", str(CONFIG), f"data={coco_dir}", f"out={out}", "--quick", "device=cpu", "max_steps=12", "epochs=3")
    printed = capsys.readouterr().out
    assert "quick: a smoke run" in printed and "map" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "detection" and metrics["primary_metric"] == "map"
    assert math.isfinite(metrics["primary"]) and 0 <= metrics["primary"] <= 1
    assert metrics["steps"] == 12 and metrics["train_samples"] + metrics["val_samples"] == 12
    assert set(metrics["metrics"]["per_class"]) <= {"scratch", "dent"}
    for name in ("model/config.json", "model/model.safetensors", "model/task.json", "predictions.png",
                 "report/report.html", "train/metrics.jsonl"):
        assert (out / name).is_file(), name

    # the saved model says what it is: class names, channels, size, and the expert the config named
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["metadata"]["class_names"] == {"detection": ["scratch", "dent"]}
    assert config["metadata"]["input"]["image_size"] == [128, 128]
    assert [e["name"] for e in config["experts"]] == ["industrial.pcb_defect"]

    # reload and evaluate: the same model on the same held-out images gives the same figure
    _run("eval", str(out / "model"), f"out={tmp_path / 'eval'}", "--format", "coco")
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["primary"] == pytest.approx(metrics["primary"], abs=1e-9)
    # standard formats: pycocotools reads the files, and its AP is vlsdk's mAP@0.5:0.95
    from pycocotools.coco import COCO

    truth = COCO(str(tmp_path / "eval" / "coco_ground_truth.json"))
    assert len(truth.getImgIds()) == metrics["val_samples"]
    truth.loadRes(str(tmp_path / "eval" / "coco_results.json"))
    assert again["metrics"]["cocoeval"]["AP"] == pytest.approx(again["metrics"]["map"], abs=1e-6)
    assert again["metrics"]["cocoeval"]["AP50"] == pytest.approx(again["metrics"]["map50"], abs=1e-6)
    assert again["metrics"]["map"] > 0  # a model that finds something, so the agreement means something
    assert "pycocotools COCOeval: AP" in capsys.readouterr().out

    # without out=, eval writes beside the model and leaves the training run's summary alone
    _run("eval", str(out / "model"))
    assert (out / "eval" / "metrics.json").is_file() and "steps" in json.loads((out / "metrics.json").read_text())
    # data whose classes are not the model's would shift every label id: refused, naming both
    from .conftest import write_coco

    other = write_coco(tmp_path / "other", classes=("dent", "scratch"))
    capsys.readouterr()
    assert main(["eval", str(out / "model"), f"data={other}", f"out={tmp_path / 'e2'}"]) == 2
    assert "['dent', 'scratch'] are not the model's ['scratch', 'dent']" in capsys.readouterr().err

    # predict on an image file, with class names, and export to ONNX
    _run("predict", str(coco_dir / "images" / "board_000.png"), "--model", str(out / "model"),
         "--out", str(tmp_path / "pred"), "--score-threshold", "0.0", "--format", "coco")
    listed = COCO(str(tmp_path / "pred" / "coco_images.json"))  # the ids the COCO results refer to
    found = listed.loadRes(str(tmp_path / "pred" / "coco_results.json"))
    assert listed.imgs[1]["width"] == 96 and len(found.getAnnIds()) > 0
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    found = predictions["inputs"][0]["detection"]
    assert found["labels"] and set(found["labels"]) <= {"scratch", "dent"}
    assert predictions["inputs"][0]["model_size"] == [128, 128]  # the trained size, not the file's 96 px
    _run("export", "onnx", "--model", str(out / "model"), "--out", str(tmp_path / "model.onnx"))
    assert (tmp_path / "model.onnx").stat().st_size > 0


def test_help_comes_from_the_settings_dataclass(capsys):
    assert main(["train", str(CONFIG), "--help"]) == 0
    text = capsys.readouterr().out
    from vlsdk.settings import field_help
    from vlsdk.tasks.detection import DetectionSettings

    helps = field_help(DetectionSettings)
    for name in ("image_size", "val_fraction", "experts", "precision", "max_seconds"):
        assert f"--{name.replace('_', '-')}" in text
        assert helps[name].split("(")[0].strip()[:30] in " ".join(text.split())


def test_settings_flags_and_key_values_are_typed(coco_dir, tmp_path, capsys):
    bad = main(["train", str(CONFIG), f"data={coco_dir}", "--batch-size", "2.5"])
    assert bad == 2 and "batch_size" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "value", "closest"), [
    ("dataset", "{name: cocoo}", "coco"),
    ("metric", "detection.mAP", "detection.map"),
    ("head", "detektion", "detection"),
])
def test_unknown_names_in_a_config_name_the_closest(coco_dir, tmp_path, capsys, key, value, closest):
    config = tmp_path / "task.yaml"
    config.write_text(CONFIG.read_text() + f"\n{key}: {value}\n")
    status = main(["train", str(config), f"data={coco_dir}", f"out={tmp_path / 'run'}", "--quick", "device=cpu"])
    err = capsys.readouterr().err
    assert status != 0 and closest in err and "Traceback" not in err, err


def test_unknown_setting_names_the_closest(coco_dir, capsys):
    assert main(["train", str(CONFIG), f"data={coco_dir}", "image_sise=64"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_segmentation_from_a_mask_folder(mask_dir, tmp_path):
    out = tmp_path / "seg"
    _run("train", "--task", "segmentation", f"data={mask_dir}", f"out={out}", "--quick", "device=cpu",
         "dataset=mask_folder", "--transforms", "resize,flip")  # a pipeline as a comma list on the command line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["primary_metric"] == "dice" and 0 <= metrics["primary"] <= 1
    assert (out / "predictions.png").is_file()
    assert main(["eval", str(out / "model"), "--format", "coco"]) == 2  # boxes only: a clear error, no traceback

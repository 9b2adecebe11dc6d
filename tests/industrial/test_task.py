"""The ``industrial.pcb`` task through ``vlsdk pcb --quick`` on real DeepPCB pairs: train, evaluate, save, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from PIL import Image

from vlsdk_industrial.task import HEAD, PcbSettings, build_detector


@pytest.mark.vlsdk_entry_points
def test_quick_mode_through_the_vlsdk_command(shared_data: Path, tmp_path: Path, capsys, plugin_host,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from vlsdk import VLModel
    from vlsdk.cli import main

    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "industrial")  # a fresh host with the real entry point, alone

    data = shared_data / "deeppcb"
    if not (data / "PCBData").is_dir():
        pytest.skip(f"{data} holds no PCBData/")
    out = tmp_path / "run"
    assert main(["pcb", "--quick", "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pin-hole" in printed and "AP@.33" in printed and "F-score" in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 3 and summary["val_samples"] == 4 and summary["skipped"]["train"] == []
    assert summary["task"] == "industrial.pcb" and summary["primary_metric"] == "map_deeppcb"
    assert summary["train_samples"] == 8 + 3  # 8 real pairs + 3:1 synthetic boards
    assert np.isfinite(summary["first_loss"]) and np.isfinite(summary["last_loss"])
    per_class = summary["metrics"]["per_class"]
    from vlsdk_industrial.deeppcb import DeepPCBDataset

    gt = np.concatenate([r.labels for r in DeepPCBDataset(data, "test", max_samples=4).records])
    assert [int(c["num_gt"]) for c in per_class.values()] == np.bincount(gt, minlength=6).tolist()
    with Image.open(out / "predictions.png") as png:
        assert png.width >= 2 * 256 and png.height >= 2 * 256  # 2 x 2 boards, scaled up for legible labels
    model = VLModel.from_pretrained(out / "model")
    assert "industrial.pcb_defect" in model.expert_specs and HEAD in model.heads
    assert model.config.in_chans == 2  # board + template
    model.eval()
    with torch.no_grad():
        dets = model.heads[HEAD].decode(model(torch.zeros(1, 2, 64, 64), heads=[HEAD])[HEAD], score_threshold=0.0)
    assert len(dets) == 1
    # evaluate the saved model again, without training
    again = tmp_path / "again"
    assert main(["pcb", "--checkpoint", str(out / "model"), "--data", str(data), "--out", str(again), "--image-size",
                 "256", "--eval-pairs", "4", "--batch-size", "4", "--workers", "0", "--no-progress",
                 "--format", "coco"]) == 0
    evaluated = json.loads((again / "metrics.json").read_text())
    truth = json.loads((again / "coco_ground_truth.json").read_text())  # DeepPCB's test boards in COCO form
    assert len(truth["images"]) == 4 and {c["name"] for c in truth["categories"]} >= {"open", "pin-hole"}
    assert [im["width"] for im in truth["images"]] == [640] * 4  # boxes in the boards' own pixels
    assert evaluated["metrics"]["cocoeval"]["AP"] == pytest.approx(evaluated["metrics"]["map"], abs=1e-6)
    assert "steps" not in evaluated and evaluated["model"] == str(out / "model")
    meta = json.loads((out / "model" / "config.json").read_text())["metadata"]
    assert meta["input"]["channels"] == ["board", "template"] and meta["class_names"][HEAD][0] == "open"
    assert (out / "model" / "README.md").is_file()  # the model card
    assert evaluated["metrics"]["per_class"] == summary["metrics"]["per_class"]  # same model, same boards
    # inference on a folder of boards (links to two real pairs, read in place)
    boards = tmp_path / "boards"
    boards.mkdir()
    for r in DeepPCBDataset(data, "test", max_samples=2).records:
        for f in (r.image, r.template):
            (boards / f.name).symlink_to(f)
    assert main(["pcb", "--checkpoint", str(out / "model"), "--predict", str(boards), "--out", str(tmp_path / "pred"),
                 "--device", "cpu"]) == 0
    assert "at 256 px" in capsys.readouterr().out  # the size the model was trained at, not 640
    predicted = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert sorted(Path(p["path"]).name for p in predicted) == sorted(f.name for f in boards.glob("*_test.jpg"))
    assert all(set(p["labels"]) <= set(meta["class_names"][HEAD]) for p in predicted)
    with Image.open(tmp_path / "pred" / "predictions.png") as png:
        assert png.width > 0
    capsys.readouterr()
    assert main(["pcb", "--checkpoint", str(out / "model"), "--data", str(data), "--out", str(again), "--no-template",
                 "--image-size", "256", "--eval-pairs", "1", "--workers", "0", "--no-progress"]) == 1
    assert "takes 2-channel boards but the data has 1 channel(s); drop --no-template" in capsys.readouterr().err


def test_throughput_measurement(tmp_path: Path) -> None:
    from vlsdk_industrial.throughput import measure_throughput

    torch.manual_seed(0)
    model = build_detector("tiny", in_chans=2, expert=True)
    result = measure_throughput(model, batch_size=2, image_size=64, device="cpu", amp="none", warmup=1, batches=2)
    assert result.boards_per_s > 0 and result.in_chans == 2 and result.batch_size == 2
    assert not model.moe_layers[0].dense  # the dense switch is restored
    assert result.forward_boards_per_s > 0  # the forward alone, timed in the same run
    with pytest.raises(ValueError, match="amp"):
        measure_throughput(model, device="cpu", amp="fp8")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cast = measure_throughput(model, batch_size=2, image_size=64, device="cpu", amp="bf16", bf16_weights=True,
                              channels_last=True, profile=True, warmup=1, batches=1)
    assert cast.bf16_weights and cast.channels_last and cast.kernels_ms["total"] > 0
    after = model.state_dict()  # the caller's model keeps its fp32 weights
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="bf16_weights"):
        measure_throughput(model, device="cpu", amp="none", bf16_weights=True)


def test_build_detector_and_config_validation() -> None:
    torch.manual_seed(0)
    model = build_detector("tiny", in_chans=1, expert=False)
    out = model(torch.zeros(2, 1, 64, 64), heads=[HEAD])
    assert out[HEAD].cls_logits.shape[-1] == 6 and model.expert_specs == {}
    with pytest.raises(ValueError, match="in_chans"):
        build_detector("tiny", in_chans=0)
    from vlsdk.settings import settings_from

    for bad in ({"image_size": 100}, {"precision": "fp8"}, {"epochs": 0}, {"synthetic_ratio": 0.0},
                {"max_steps": -1}, {"synthetic_style": "photo"}, {"train_pairs": 0}, {"batch_size": 2.5}):
        with pytest.raises(ValueError):
            settings_from(PcbSettings, bad, "test")
    assert PcbSettings(template=False).channels == 1 and PcbSettings().data is None  # no default data path


def test_synthetic_style_option() -> None:
    import argparse

    from vlsdk_industrial.cli import config_from_args, configure

    parser = argparse.ArgumentParser()
    configure(parser)
    cfg = config_from_args(parser.parse_args(["--synthetic-ratio", "1", "--synthetic-style", "deeppcb"]))
    assert cfg.synthetic_style == "deeppcb" and cfg.synthetic_ratio == 1.0
    assert config_from_args(parser.parse_args([])).synthetic_style == "default"
    with pytest.raises(SystemExit):
        parser.parse_args(["--synthetic-style", "photo"])

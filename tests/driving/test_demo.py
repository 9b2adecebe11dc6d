"""The driving part of ``vlsdk demo``: synthetic scenes only, devkit AP, BEV picture, routing inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from PIL import Image

import vlsdk_driving.demo as driving_demo
import vlsdk_driving.plugin as driving_plugin
from vlsdk.cli import main
from vlsdk.demo import DemoResult


def test_quick_demo_through_vlsdk_demo(register_plugin, monkeypatch, tmp_path):
    """One quick run (about 15 s): ``vlsdk demo --quick --domain driving`` calling the plugin's ``run_demo``."""
    results: list[tuple[dict, DemoResult]] = []
    run_demo = driving_demo.run_demo

    def recording_run_demo(out_dir, *, quick, device, seed):
        result = run_demo(out_dir, quick=quick, device=device, seed=seed)
        results.append(({"out_dir": out_dir, "quick": quick, "device": device, "seed": seed}, result))
        return result

    monkeypatch.setattr(driving_demo, "run_demo", recording_run_demo)  # the hook imports it at registration
    register_plugin(driving_plugin, "driving")
    assert main(["demo", "--quick", "--domain", "driving", "--out", str(tmp_path)]) == 0

    (call, result), = results
    assert call == {"out_dir": tmp_path / "driving", "quick": True, "device": "cpu", "seed": 0}
    assert isinstance(result, DemoResult) and result.domain == "driving" and result.expert == "driving.lidar"
    assert set(result.metrics) == {"car_ap_2m", "map"}
    for value in result.metrics.values():
        assert math.isfinite(value) and 0.0 <= value <= 1.0
    (png,) = result.images
    assert png.is_file() and png.parent == tmp_path / "driving" and png.stat().st_size > 20_000
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    assert min(pixels.shape[:2]) > 300 and pixels.std() > 10  # a drawn scene, not a blank canvas
    lime = (pixels[..., 0] < 60) & (pixels[..., 1] > 200) & (pixels[..., 2] < 60)
    assert lime.sum() > 100  # the ground-truth boxes are drawn

    model, samples = result.model, result.samples
    assert not model.training
    assert samples.dim() == 4 and samples.shape[1] == model.config.in_chans and len(samples) >= 2
    assert torch.isfinite(samples).all() and samples.abs().sum() > 0
    with torch.no_grad():
        out = model(samples[:1], heads=["bev"])
    assert out["bev"] is not None  # the samples are what the model takes

    html = (tmp_path / "report.html").read_text()
    assert "driving" in html and "LiDAR BEV" in html
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert math.isclose(metrics["driving.car_ap_2m"], result.metrics["car_ap_2m"], abs_tol=1e-4)
    assert 0.0 <= metrics["driving.own_expert_share"] <= 1.0


def _trained_steps(folder) -> int:
    """The last optimiser step the Trainer logged under ``folder/train`` (independent of the demo's report)."""
    import csv

    with open(folder / "train" / "metrics.csv", newline="") as f:
        return max(int(row["step"]) for row in csv.DictReader(f) if row["split"] == "train")


def test_steps_option_sets_the_training_steps(register_plugin, tmp_path):
    register_plugin(driving_plugin, "driving")
    assert main(["demo", "--quick", "--domain", "driving", "--steps", "5", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["driving.train_steps"] == 5 and _trained_steps(tmp_path / "driving") == 5  # default: 48


def test_demo_evaluates_on_the_nuscenes_folder(shared_data, register_plugin, tmp_path):
    """``--data driving=<nuScenes>``: trained on synthetic scenes, scored on the folder's one real keyframe."""
    nuscenes = shared_data / "nuscenes_mini"
    register_plugin(driving_plugin, "driving")
    assert main(["demo", "--quick", "--domain", "driving", "--data", f"driving={nuscenes}",
                 "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["driving.train_steps"] == 48
    assert all(0.0 <= metrics[f"driving.{k}"] <= 1.0 for k in ("car_ap_2m", "map"))
    html = (tmp_path / "report.html").read_text()
    assert "synthetic training, real nuScenes evaluation" in html and f"Real data from {nuscenes}" in html
    assert "1 real keyframe(s) (v1.0-mini" in html and "trained on synthetic scenes only" in html
    pixels = np.asarray(Image.open(tmp_path / "driving" / "bev_detection.png").convert("RGB"), dtype=np.float32)
    lime = (pixels[..., 0] < 60) & (pixels[..., 1] > 200) & (pixels[..., 2] < 60)
    assert lime.sum() > 100  # the real keyframe's ground-truth boxes are drawn


def test_data_that_is_not_a_nuscenes_folder(tmp_path):
    import pytest

    with pytest.raises(ValueError, match=r"no nuScenes tables \(a v1.0-\*/sample.json folder"):
        driving_demo.run_demo(tmp_path, quick=True, device="cpu", seed=0, data=tmp_path)

"""The demo pipeline in a CI-sized run, and its ``vlsdk driving-detect`` command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import vlsdk_driving.plugin as driving_plugin
from vlsdk_driving.bev import BEVGrid
from vlsdk_driving.pipeline import add_demo_arguments, augment, build_detector, load_detector, predict, run_demo
from vlsdk_driving.sample import Boxes3D, DrivingSample


def test_quick_demo_writes_model_pictures_and_metrics(register_plugin, nuscenes_root, tmp_path, capsys):
    register_plugin(driving_plugin, "driving")
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    args = parser.parse_args(["--quick", "--out", str(tmp_path), "--train-scenes", "1", "--test-scenes", "1",
                              "--epochs", "1", "--no-progress", "--nuscenes", str(nuscenes_root),
                              "--depth-steps", "2"])
    assert run_demo(args) == 0
    printed = capsys.readouterr().out
    assert "held-out synthetic scenes" in printed and "real nuScenes keyframe" in printed
    for name in ("bev_synthetic.png", "bev_nuscenes.png", "camera_depth.png", "metrics.json",
                 "model/config.json", "model/model.safetensors", "model/bev_encoder.json",
                 "depth_model/config.json"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"synthetic", "nuscenes", "depth"} <= set(metrics)
    assert metrics["depth"]["nuscenes"]["pixels"] > 1000 and metrics["depth"]["nuscenes"]["abs_rel"] > 0
    assert "camera depth on nuscenes CAM_FRONT: AbsRel" in printed
    detector = load_detector(tmp_path / "model")
    assert detector.encoder.grid == BEVGrid((-32, 32), (-32, 32), (-5, 3), 0.5)
    pts = np.random.default_rng(0).uniform(-20, 20, (500, 5)).astype(np.float32)
    sample = DrivingSample("x", pts, Boxes3D.empty(), point_fields=("x", "y", "z", "intensity", "time_lag"))
    assert len(predict(detector, [sample], score_threshold=0.0)) == 1


def test_augment_keeps_points_in_their_boxes():
    rng = np.random.default_rng(0)
    boxes = Boxes3D(np.array([[10.0, 3, -1, 4, 2, 1.5, 0.4]]), np.array([0]), velocity=np.array([[1.0, 0.5]]))
    local = rng.uniform(-0.45, 0.45, (200, 3)) * boxes.lwh
    c, s = np.cos(0.4), np.sin(0.4)
    pts = np.c_[local[:, 0] * c - local[:, 1] * s + 10, local[:, 0] * s + local[:, 1] * c + 3, local[:, 2] - 1,
                np.zeros((200, 2))].astype(np.float32)
    sample = DrivingSample("x", pts, boxes, point_fields=("x", "y", "z", "intensity", "time_lag"))
    for _ in range(5):
        p, b = augment(sample, rng)
        assert b.points_inside(p).all()
        ratio = np.linalg.norm(b.velocity) / np.linalg.norm(boxes.velocity)
        np.testing.assert_allclose(ratio, np.linalg.norm(b.lwh) / np.linalg.norm(boxes.lwh))  # scaled together


def test_predict_skips_the_backbone_stage_no_head_reads(register_plugin):
    register_plugin(driving_plugin, "driving")
    torch.manual_seed(0)
    fields = ("x", "y", "z", "intensity", "time_lag")
    detector = build_detector(BEVGrid((-16, 16), (-16, 16), (-5, 3), 0.5), point_fields=fields)
    model = detector.model.eval()
    assert max(detector.head.strides) == 16 and model.encoder.strides[-1] == 32  # stride 32: the last stage
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-15, 15, (3000, 2)), rng.uniform(-2, 2, (3000, 1)), rng.uniform(0, 255, (3000, 1)),
                np.zeros((3000, 1))].astype(np.float32)
    sample = DrivingSample("x", pts, Boxes3D.empty(), point_fields=fields)
    calls = []
    hooks = [b.register_forward_hook(lambda *_: calls.append(1)) for b in model.encoder.stages[-1].blocks]
    try:
        boxes = predict(detector, [sample], score_threshold=0.0)[0]
        assert calls == []
        with torch.no_grad():
            full = model(detector.encoder([torch.from_numpy(pts)]), heads=["bev"])
        assert calls  # the hooks do see a full forward
    finally:
        for h in hooks:
            h.remove()
    ref = detector.head.decode(full["bev"], score_threshold=0.0)[0]
    assert len(ref) > 0
    np.testing.assert_array_equal(boxes.boxes, ref.boxes)
    np.testing.assert_array_equal(boxes.scores, ref.scores)
    np.testing.assert_array_equal(boxes.labels, ref.labels)


def test_cli_command_is_registered_with_help(capsys):
    from vlsdk.cli.main import main

    assert main(["driving-detect", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out

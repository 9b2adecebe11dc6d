"""The driving tasks (``driving.bev``, ``driving.depth``) through the runner, the ``vlsdk driving-detect``
alias and ``vlsdk predict`` / ``vlsdk eval`` on what they save; the detector's parts."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

import vlsdk_driving.plugin as driving_plugin
from vlsdk_driving.bev import BEVGrid
from vlsdk_driving.cli import add_demo_arguments, run_demo
from vlsdk_driving.detector import build_detector, load_detector, predict
from vlsdk_driving.sample import Boxes3D, DrivingSample
from vlsdk_driving.training import augment


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    return parser.parse_args(list(argv))


def test_alias_trains_the_bev_task_then_depth(register_plugin, nuscenes_root, tmp_path, capsys):
    register_plugin(driving_plugin, "driving")
    args = _args("--quick", "--out", str(tmp_path), "--train-scenes", "1", "--test-scenes", "1", "--epochs", "1",
                 "--no-progress", "--nuscenes", str(nuscenes_root), "--depth-steps", "2")
    assert run_demo(args) == 0
    printed = capsys.readouterr().out
    assert "held-out synthetic scenes (nuscenes-devkit center-distance AP)" in printed
    assert f"{nuscenes_root} (nuscenes-devkit DetectionEval)" in printed and "NDS" in printed
    for name in ("metrics.json", "predictions.png", "model/config.json", "model/model.safetensors", "model/task.json",
                 "train/checkpoint/trainer_state.pt", "train/curves.png", "depth/model/task.json",
                 "depth/predictions.png", "nuscenes_eval/synthetic/submission.json",
                 "nuscenes_eval/data/metrics_summary.json"):
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "metrics.json").read_text())
    metrics = summary["metrics"]
    assert summary["task"] == "driving.bev" and summary["primary_metric"] == "car_ap_2m"
    assert summary["steps"] == 1  # 1 scene x 4 keyframes, batch 4: one step an epoch
    assert metrics["car_ap_2m"] == metrics["synthetic.car_ap_2m"] and 0.0 <= metrics["car_ap_2m"] <= 1.0
    for key in ("synthetic.devkit_map", "synthetic.nds", "data.devkit_map", "data.nds", "data.car_ap_2m"):
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, key
    assert metrics["data_devkit"]["num_gt"]["car"] > 0  # the real keyframe's cars were scored by the devkit
    assert summary["settings"]["max_seconds"] == 25.0 and summary["settings"]["model"] == "tiny"  # --quick
    depth = json.loads((tmp_path / "depth" / "metrics.json").read_text())
    assert depth["steps"] == 2 and depth["metrics"]["data.pixels"] > 1000
    assert 0 < depth["metrics"]["data.abs_rel"] and 0 <= depth["metrics"]["data.delta1"] <= 1
    assert "camera depth (2 steps): AbsRel" in printed
    detector = load_detector(tmp_path / "model")  # the encoder rebuilt from the task's saved settings
    assert detector.encoder.grid == BEVGrid((-32, 32), (-32, 32), (-5, 3), 0.5)
    pts = np.random.default_rng(0).uniform(-20, 20, (500, 5)).astype(np.float32)
    sample = DrivingSample("x", pts, Boxes3D.empty(), point_fields=("x", "y", "z", "intensity", "time_lag"))
    assert len(predict(detector, [sample], score_threshold=0.0)) == 1


def test_alias_without_a_data_folder_says_what_to_pass(tmp_path, capsys):
    assert run_demo(_args("--quick", "--out", str(tmp_path))) == 2
    assert "pass --nuscenes DATAROOT" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_bev_settings_errors_name_the_setting():
    from vlsdk_driving.bev_task import BEVTask

    task = BEVTask()
    with pytest.raises(ValueError, match="train_scenes=0 trains on data; name val_data"):
        task.settings(data="x", train_scenes=0)
    with pytest.raises(ValueError, match="azimuth_steps must be"):
        task.settings(data="x", azimuth_steps=(900, 500))
    with pytest.raises(ValueError, match="synthesizer: .*'driving.scene'.*driving.scenes"):
        task._scenes(task.settings(data="x", synthesizer="driving.scene"), "train")


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

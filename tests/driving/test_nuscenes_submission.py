"""Submission JSON in the global frame and the devkit's DetectionEval on the real keyframe and synthetic scenes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vlsdk_driving.nuscenes_eval import detection_eval, evaluate_predictions, resolve_eval_set
from vlsdk_driving.sample import Boxes3D
from vlsdk_driving.submission import build_submission, submission_entries
from vlsdk_driving.synth import SYNTHETIC_SPLIT, NuScenesSceneSynthesizer, SceneRandomization


def _perfect(dataset, truth: dict[str, Boxes3D]) -> dict[str, Boxes3D]:
    """The ground truth as predictions (score 1), without boxes the devkit ignores (no LiDAR point)."""
    out = {}
    for token, boxes in truth.items():
        pts = np.array([dataset.nusc.get("sample_annotation", t)["num_lidar_pts"] for t in boxes.tokens])
        kept = boxes.select(pts > 0)
        out[token] = Boxes3D(kept.boxes, kept.labels, scores=np.ones(len(kept)), velocity=kept.velocity)
    return out


def _in_unit(*values: float) -> bool:
    return all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)


@pytest.fixture(scope="module")
def synth_scenes(tmp_path_factory):
    synth = NuScenesSceneSynthesizer(2, 2, camera_channel=None,
                                     randomization=SceneRandomization(azimuth_steps=(300, 400), num_objects=(8, 12)))
    dataset = synth(0, tmp_path_factory.mktemp("scenes"))
    return synth, dataset


def test_submission_boxes_equal_devkit_box_transforms(nuscenes_ds, real_sample):
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    nusc = nuscenes_ds.nusc
    gt = real_sample.boxes
    pred = Boxes3D(gt.boxes, gt.labels, scores=np.linspace(1, 0.5, len(gt)), velocity=np.full((len(gt), 2), 2.0))
    sub = build_submission(nuscenes_ds, {real_sample.token: pred})
    assert sub["meta"] == {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                           "use_external": False}
    entries = sub["results"][real_sample.token]
    assert [e["detection_score"] for e in entries] == sorted(pred.scores, reverse=True)
    sd = nusc.get("sample_data", nusc.get("sample", real_sample.token)["data"]["LIDAR_TOP"])
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    for entry, i in zip(entries, np.argsort(-pred.scores, kind="stable"), strict=True):
        x, y, z, length, w, h, yaw = gt.boxes[i]
        box = Box([x, y, z], [w, length, h], Quaternion(axis=[0, 0, 1], angle=yaw), velocity=(2.0, 2.0, 0.0))
        box.rotate(Quaternion(cs["rotation"]))
        box.translate(np.array(cs["translation"]))
        box.rotate(Quaternion(pose["rotation"]))
        box.translate(np.array(pose["translation"]))
        np.testing.assert_allclose(entry["translation"], box.center, atol=1e-9)
        np.testing.assert_allclose(entry["rotation"], box.orientation.elements, atol=1e-12)
        np.testing.assert_allclose(entry["velocity"], box.velocity[:2], atol=1e-9)
        np.testing.assert_allclose(entry["size"], box.wlh, atol=1e-12)
        ann = nusc.get("sample_annotation", gt.tokens[i])  # and the table's own global box
        np.testing.assert_allclose(entry["translation"], ann["translation"], atol=1e-6)
        yaw_diff = Quaternion(entry["rotation"]).yaw_pitch_roll[0] - Quaternion(ann["rotation"]).yaw_pitch_roll[0]
        assert abs(math.remainder(yaw_diff, 2 * math.pi)) < 5e-3
        assert entry["attribute_name"] in ("", "vehicle.moving", "pedestrian.moving", "cycle.with_rider")


def test_submission_rejects_non_finite_predictions():
    boxes = Boxes3D(np.array([[1.0, 2, 0, 4, 2, 1.5, np.nan]]), np.array([0]), scores=np.array([0.5]))
    with pytest.raises(ValueError, match="sample s1: predicted box 0 has a non-finite centre/size/yaw"):
        submission_entries("s1", boxes, np.eye(4), (1.0, 0, 0, 0))


def test_detection_eval_on_the_real_keyframe(nuscenes_ds, real_sample, tmp_path):
    assert resolve_eval_set(nuscenes_ds) == "mini_train"  # scene-0061 is in the devkit's mini_train split
    perfect = evaluate_predictions(nuscenes_ds, _perfect(nuscenes_ds, {real_sample.token: real_sample.boxes}),
                                   tmp_path / "perfect")
    assert perfect["evaluator"] == "DetectionEval" and perfect["eval_set"] == "mini_train"
    assert set(perfect["class_ap"]) == {"car", "truck", "trailer", "bus", "construction_vehicle", "bicycle",
                                        "motorcycle", "pedestrian", "traffic_cone", "barrier"}
    present = perfect["num_gt"]
    assert present and all(perfect["class_ap"][c] > 0.99 for c in present)
    assert perfect["mAP_classes_with_gt"] > 0.99
    assert perfect["mAP"] == pytest.approx(sum(perfect["class_ap"].values()) / 10)  # absent classes score 0
    assert perfect["mATE"] == pytest.approx((10 - len(present)) / 10, abs=1e-3)  # 0 m where matched, 1 elsewhere
    assert _in_unit(perfect["mAP"], perfect["NDS"])
    assert (tmp_path / "perfect" / "metrics_summary.json").is_file()
    # shifted 1.5 m: matches only at the 2 m and 4 m thresholds
    shifted = {t: Boxes3D(b.boxes + [1.5, 0, 0, 0, 0, 0, 0], b.labels, scores=b.scores)
               for t, b in _perfect(nuscenes_ds, {real_sample.token: real_sample.boxes}).items()}
    worse = evaluate_predictions(nuscenes_ds, shifted, tmp_path / "shifted")
    assert _in_unit(worse["mAP"], worse["NDS"])
    assert worse["mAP_classes_with_gt"] == pytest.approx(0.5, abs=0.03) and worse["NDS"] < perfect["NDS"]
    assert worse["mATE"] > perfect["mATE"]


def test_detection_eval_on_synthetic_scenes(synth_scenes, tmp_path):
    synth, dataset = synth_scenes
    names = [s["name"] for s in dataset.nusc.scene]
    assert json.loads((dataset.table_root / "splits.json").read_text()) == {SYNTHETIC_SPLIT: names}
    assert resolve_eval_set(dataset) == SYNTHETIC_SPLIT
    result = evaluate_predictions(dataset, _perfect(dataset, synth.truth), tmp_path / "perfect")
    assert result["evaluator"] == "DetectionEval" and result["samples"] == len(dataset) == 4
    assert result["mAP_classes_with_gt"] > 0.99 and _in_unit(result["mAP"], result["NDS"])
    assert result["label_tp_errors"]["car"]["vel_err"] < 0.05  # the truth's velocities match the devkit's estimate
    empty = evaluate_predictions(dataset, {t: Boxes3D.empty() for t in dataset.sample_tokens}, tmp_path / "empty")
    assert empty["mAP"] == 0.0 and empty["NDS"] == 0.0 and "no predicted box" in empty["evaluator"]
    partial = build_submission(dataset, {dataset.sample_tokens[0]: Boxes3D.empty()})
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(partial))
    with pytest.raises(ValueError, match=f"partial.json: 3 sample.*{dataset.sample_tokens[1]}"):
        detection_eval(dataset, path, tmp_path / "partial")

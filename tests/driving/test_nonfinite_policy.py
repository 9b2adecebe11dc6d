"""The non-finite policy in the driving readers: errors naming file, record and field; counted skips."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from vlsdk_driving.kitti import KittiDataset, load_kitti_frame, read_kitti_calib, read_kitti_labels
from vlsdk_driving.nuscenes_adapter import DataWarning, NuScenesDataset
from vlsdk_driving.synth import NuScenesSceneSynthesizer, SceneRandomization

CALIB = ("P2: 700 0 600 45 0 700 180 0 0 0 1 0.005\nR0_rect: 1 0 0 0 1 0 0 0 1\n"
         "Tr_velo_to_cam: 0 -1 0 0 0 0 -1 -0.08 1 0 0 -0.27\n")
LABEL = "Car 0 0 0 1 2 3 4 1.5 1.6 4.0 1 2 10 0.1\nPedestrian 0 0 0 1 2 3 4 1.7 0.6 0.8 -2 2 8 0.3\n"


@pytest.fixture()
def scenes(tmp_path):
    NuScenesSceneSynthesizer(1, 2, camera_channel=None,
                             randomization=SceneRandomization(azimuth_steps=(200, 300))).write(tmp_path, seed=0)
    return tmp_path


def _edit(root, table, index, field, value):
    path = root / "v1.0-mini" / f"{table}.json"
    rows = json.loads(path.read_text())
    rows[index][field] = value
    path.write_text(json.dumps(rows))
    return rows[index]


@pytest.mark.parametrize("field, value", [("rotation", [np.nan, 0, 0, 1]), ("translation", [1.0, np.inf, 0.0]),
                                          ("size", [2.0, np.nan, 1.5])])
def test_nuscenes_nonfinite_annotation(scenes, field, value):
    rec = _edit(scenes, "sample_annotation", 2, field, value)
    with pytest.raises(ValueError, match=rf"sample_annotation.json: record {rec['token']} has a non-finite {field}"):
        NuScenesDataset(scenes)
    with pytest.warns(DataWarning, match=rf"{rec['token']} has a non-finite {field}.*on_error='skip'"):
        ds = NuScenesDataset(scenes, on_error="skip")
    sample = ds[ds.sample_tokens.index(rec["sample_token"])]
    assert rec["token"] not in sample.boxes.tokens and np.isfinite(sample.boxes.boxes).all()
    assert ds.skipped["nonfinite_sample_annotation"] == 1 and ds.skipped["nonfinite_box"] == 1


def test_nuscenes_nonfinite_calibration_and_pose(scenes):
    cal = _edit(scenes, "calibrated_sensor", 0, "translation", [0.9, np.nan, 1.8])
    with pytest.raises(ValueError, match=rf"calibrated_sensor.json: record {cal['token']} has a non-finite translation"):
        NuScenesDataset(scenes)
    with pytest.warns(DataWarning, match="samples using them are skipped"):
        ds = NuScenesDataset(scenes, on_error="skip")
    assert len(ds) == 0 and ds.skipped["nonfinite_pose_sample"] == 2  # both keyframes use that LiDAR calibration
    _edit(scenes, "calibrated_sensor", 0, "translation", cal["translation"][:1] + [0.0, 1.8])
    pose = _edit(scenes, "ego_pose", 1, "rotation", [np.nan, 0, 0, 0])
    with pytest.raises(ValueError, match=rf"ego_pose.json: record {pose['token']} has a non-finite rotation"):
        NuScenesDataset(scenes)


def test_nuscenes_nonfinite_points_dropped_counted_warned_once(scenes):
    ds = NuScenesDataset(scenes)
    sd = ds.nusc.get("sample_data", ds.nusc.get("sample", ds.sample_tokens[0])["data"]["LIDAR_TOP"])
    pts = np.fromfile(scenes / sd["filename"], np.float32).reshape(-1, 5)
    pts[[0, 5, 9], 2] = [np.nan, np.inf, -np.inf]
    pts.tofile(scenes / sd["filename"])
    with pytest.warns(DataWarning) as caught:
        sample = ds[0]
    assert [str(w.message) for w in caught if "non-finite points" in str(w.message)] == [
        f"nuScenes: dropped 3 non-finite points of {sd['filename']} (sample_data {sd['token']})"]
    assert len(sample.points) == len(pts) - 3 and np.isfinite(sample.points).all()
    assert ds.skipped["nan_points"] == 3


def test_kitti_nonfinite_labels_calibration_and_points(tmp_path):
    calib, label, velo = tmp_path / "calib.txt", tmp_path / "label.txt", tmp_path / "000001.bin"
    calib.write_text(CALIB.replace("0.005", "nan"))
    with pytest.raises(ValueError, match=r"calib.txt:1: calibration P2 has 1 non-finite value\(s\) .*position 11: nan"):
        read_kitti_calib(calib)
    calib.write_text(CALIB)
    label.write_text(LABEL.replace("-2 2 8", "-2 nan 8"))
    with pytest.raises(ValueError, match=r"label.txt:2: non-finite y in a Pedestrian label"):
        read_kitti_labels(label, np.eye(4))
    skipped: Counter[str] = Counter()
    with pytest.warns(DataWarning, match=r"skipped 1 label line.*label.txt:2: non-finite y"):
        boxes = read_kitti_labels(label, np.eye(4), skipped, on_error="skip")
    assert boxes.names == ["car"] and skipped == {"nonfinite_label": 1}
    pts = np.random.default_rng(0).uniform(-20, 20, (100, 4)).astype(np.float32)
    pts[[3, 4], 0] = np.nan
    pts.tofile(velo)
    with pytest.warns(DataWarning, match="000001.bin: dropped 2 non-finite points"):
        sample = load_kitti_frame(velo, calib, None, skipped=skipped)
    assert len(sample.points) == 98 and skipped["nan_points"] == 2
    for sub, path in (("velodyne", velo), ("calib", calib), ("label_2", label)):
        (tmp_path / sub).mkdir()
        path.rename(tmp_path / sub / f"000001{path.suffix}")
    with pytest.raises(ValueError, match="000001.txt:2: non-finite y"), pytest.warns(DataWarning):
        KittiDataset(tmp_path)[0]
    ds = KittiDataset(tmp_path, on_error="skip")
    with pytest.warns(DataWarning):
        assert ds[0].boxes.names == ["car"]
    assert ds.skipped["nonfinite_label"] == 1 and ds.skipped["nan_points"] == 2

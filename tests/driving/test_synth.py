"""Synthetic nuScenes-format scenes: the devkit loads them, boxes round-trip, bad input is reported."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from vlsdk_driving.nuscenes_adapter import DataWarning, NuScenesDataset
from vlsdk_driving.synth import NuScenesSceneSynthesizer, SceneRandomization, raycast_boxes

SMALL = SceneRandomization(num_objects=(3, 6), azimuth_steps=(150, 250))


def small(**kw) -> NuScenesSceneSynthesizer:
    kw.setdefault("randomization", SMALL)
    kw.setdefault("image_size", (64, 36))
    return NuScenesSceneSynthesizer(kw.pop("num_scenes", 1), kw.pop("samples_per_scene", 2), **kw)


@pytest.fixture(scope="module")
def synth_ds(tmp_path_factory):
    synth = NuScenesSceneSynthesizer(2, 3, randomization=SceneRandomization(azimuth_steps=(300, 400)),
                                     image_size=(96, 54))
    ds = synth(seed=3, root=tmp_path_factory.mktemp("scenes"))
    return synth, ds


def test_devkit_loads_and_boxes_round_trip(synth_ds):
    synth, ds = synth_ds
    nusc = ds.nusc
    assert len(nusc.scene) == 2 and len(ds) == 6 and len(nusc.sample_data) == 12
    for i in range(len(ds)):
        s = ds[i]
        truth = synth.truth[s.token]
        assert len(s.boxes) == len(truth) >= 6
        assert s.boxes.tokens == truth.tokens
        np.testing.assert_allclose(s.boxes.boxes[:, :6], truth.boxes[:, :6], atol=1e-6)
        np.testing.assert_allclose(np.angle(np.exp(1j * (s.boxes.yaw - truth.yaw))), 0, atol=1e-6)
        np.testing.assert_array_equal(s.boxes.labels, truth.labels)
        # the devkit's box_velocity (from the prev/next annotations) recovers the simulated motion
        np.testing.assert_allclose(s.boxes.velocity, truth.velocity, atol=1e-6)
        # the ray-cast sweep hits the boxes: objects close by hold points
        near = np.hypot(*truth.centers[:, :2].T) < 20
        inside = s.boxes.points_inside(s.points).sum(1)
        assert (inside[near] > 0).mean() > 0.7
        assert s.points.shape[1] == 5 and np.isfinite(s.points).all()
        cam = s.cameras["CAM_FRONT"]
        assert cam.load_image().shape == (54, 96, 3)
    assert not ds.skipped


def test_randomization_and_determinism(tmp_path):
    a = small()(seed=1, root=tmp_path / "a")
    b = small()(seed=1, root=tmp_path / "b")
    c = small()(seed=2, root=tmp_path / "c")
    np.testing.assert_array_equal(a[0].points, b[0].points)
    assert a[0].points.shape != c[0].points.shape or not np.array_equal(a[0].points, c[0].points)
    multi = NuScenesDataset(tmp_path / "a", nsweeps=2, camera_channels=())
    merged = multi[1]
    assert merged.points.shape[0] == a[0].points.shape[0] + a[1].points.shape[0]
    assert set(np.round(np.unique(merged.points[:, 4]), 3)) == {0.0, 0.5}


def test_custom_rig_channels(tmp_path):
    synth = small(lidar_channel="LIDAR_ROOF", camera_channel="CAM_NOSE")
    ds = synth(seed=0, root=tmp_path)
    assert ds.lidar_channel == "LIDAR_ROOF" and list(ds[0].cameras) == ["CAM_NOSE"]
    with pytest.raises(ValueError, match="unknown LiDAR channel 'LIDAR_TOP'.*LIDAR_ROOF"):
        NuScenesDataset(tmp_path)


def test_raycast_hits_nearest_box():
    boxes = np.array([[10.0, 0, 1, 2, 2, 2, 0], [20.0, 0, 1, 2, 2, 2, 0.3]])
    dirs = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 0, 1.0]])
    t, hit = raycast_boxes(np.array([0.0, 0, 1]), dirs, boxes)
    assert hit.tolist() == [0, -1, -2]
    assert t[0] == pytest.approx(9.0) and t[1] == pytest.approx(1.0)


def _first_lidar_file(root):
    sd = json.loads((root / "v1.0-mini" / "sample_data.json").read_text())
    rec = next(r for r in sd if r["fileformat"] == "pcd")
    return rec, root / rec["filename"]


def test_missing_and_truncated_and_empty_sweeps(tmp_path):
    small(camera_channel=None).write(tmp_path, seed=0)
    rec, path = _first_lidar_file(tmp_path)
    ds = NuScenesDataset(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(ValueError, match=f"truncated LiDAR sweep.*{path.name}.*{rec['token']}"):
        ds[0]
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=f"empty LiDAR sweep.*{path.name}"):
        ds[0]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"{path.name}.*{rec['token']}"):
        ds[0]


def test_nan_points_and_bad_boxes_are_counted_skips(tmp_path):
    synth = small(camera_channel=None)
    synth.write(tmp_path, seed=0)
    _, path = _first_lidar_file(tmp_path)
    pts = np.fromfile(path, np.float32).reshape(-1, 5)
    pts[:7, 1] = np.nan
    pts.tofile(path)
    table = tmp_path / "v1.0-mini" / "sample_annotation.json"
    anns = json.loads(table.read_text())
    anns[0]["size"] = [0.0, 4.0, 1.5]
    table.write_text(json.dumps(anns))
    ds = NuScenesDataset(tmp_path)
    index = ds.sample_tokens.index(anns[0]["sample_token"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(ds)):
            ds[i]
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any("7 non-finite points" in m for m in messages)
    assert any(anns[0]["token"] in m for m in messages)
    assert ds.skipped["nan_points"] == 7 and ds.skipped["bad_box"] == 1
    with pytest.warns(DataWarning):
        assert len(ds[index].boxes) == len(synth.truth[anns[0]["sample_token"]]) - 1


def test_table_referencing_a_missing_sample_data(tmp_path):
    small(camera_channel=None).write(tmp_path, seed=0)
    table = tmp_path / "v1.0-mini" / "sample_data.json"
    sd = json.loads(table.read_text())
    sd[1]["prev"] = "feedfacefeedfacefeedfacefeedface"
    table.write_text(json.dumps(sd))
    # a dangling prev/next link is a warning (merging stops there), not a construction error
    with pytest.warns(DataWarning, match="sample_data.json: 1 prev/next.*feedfacefeedfacefeedfacefeedface"):
        ds = NuScenesDataset(tmp_path, nsweeps=3)
    index = ds.sample_tokens.index(sd[1]["sample_token"])
    assert (ds[index].points[:, 4] == 0).all()  # the keyframe alone: nothing before the broken link
    sd[1]["prev"] = sd[0]["token"]
    sd[1]["calibrated_sensor_token"] = "0badc0de"
    table.write_text(json.dumps(sd))
    with pytest.raises(ValueError, match=f"sample_data.json record '{sd[1]['token']}' field "
                                         "'calibrated_sensor_token'.*missing token '0badc0de'"):
        NuScenesDataset(tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_scenes"):
        NuScenesSceneSynthesizer(0)
    with pytest.raises(ValueError, match="class_weights"):
        SceneRandomization(class_weights={"tank": 1.0})
    with pytest.raises(ValueError, match="dropout"):
        SceneRandomization(dropout=(0.0, 1.0))

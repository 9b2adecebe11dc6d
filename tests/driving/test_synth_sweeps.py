"""Synthetic sweeps and the six-camera rig, read back through nuscenes-devkit and our adapter."""

from __future__ import annotations

import numpy as np
import pytest
from pyquaternion import Quaternion

from vlsdk_driving.depth import project_points
from vlsdk_driving.synth import NUSCENES_CAMERAS, SWEEP_INTERVAL, NuScenesSceneSynthesizer, SceneRandomization

SWEEPS = 9
RAND = SceneRandomization(num_objects=(3, 6), azimuth_steps=(120, 160), ego_speed=(6.0, 8.0))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    synth = NuScenesSceneSynthesizer(1, 2, sweeps=SWEEPS, camera_channels=tuple(NUSCENES_CAMERAS),
                                     image_size=(48, 27), randomization=RAND)
    ds = synth(seed=5, root=tmp_path_factory.mktemp("swept"), nsweeps=SWEEPS + 1)
    return synth, ds


def test_sweep_tables_follow_nuscenes(swept):
    synth, ds = swept
    nusc = ds.nusc
    lidar = [r for r in nusc.sample_data if r["channel"] == "LIDAR_TOP"]
    assert len(lidar) == 2 * (SWEEPS + 1) and sum(not r["is_key_frame"] for r in lidar) == 2 * SWEEPS
    # one prev/next chain through sweeps and keyframes, 20 Hz, each record with its own moving ego pose
    first = next(r for r in lidar if not r["prev"])
    chain = [first]
    while chain[-1]["next"]:
        chain.append(nusc.get("sample_data", chain[-1]["next"]))
    assert len(chain) == len(lidar)
    assert np.diff([r["timestamp"] for r in chain]).tolist() == [int(SWEEP_INTERVAL * 1e6)] * (len(chain) - 1)
    assert [r["is_key_frame"] for r in chain] == ([False] * SWEEPS + [True]) * 2
    assert all(r["filename"].startswith("sweeps/" if not r["is_key_frame"] else "samples/") for r in chain)
    xy = np.array([nusc.get("ego_pose", r["ego_pose_token"])["translation"][:2] for r in chain])
    step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    np.testing.assert_allclose(step, step[0], rtol=1e-6)
    assert 6.0 * SWEEP_INTERVAL <= step[0] <= 8.0 * SWEEP_INTERVAL  # ego speed x 50 ms, in a straight line
    # keyframes are the samples', and the six cameras are attached with their calibrations
    for sample in nusc.sample:
        assert nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["is_key_frame"]
        assert set(NUSCENES_CAMERAS) <= set(sample["data"])
    yaws = {}
    for channel, mount in NUSCENES_CAMERAS.items():
        sd = nusc.get("sample_data", nusc.sample[0]["data"][channel])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        assert cs["translation"] == list(mount.translation)
        axis = Quaternion(cs["rotation"]).rotation_matrix[:, 2]  # the optical axis in the ego frame
        yaws[channel] = np.degrees(np.arctan2(axis[1], axis[0]))
        assert (sd["width"], sd["height"]) == (48, 27)
    np.testing.assert_allclose([yaws[c] for c in NUSCENES_CAMERAS],
                               [np.degrees(np.arctan2(np.sin(np.radians(m.yaw)), np.cos(np.radians(m.yaw))))
                                for m in NUSCENES_CAMERAS.values()], atol=1e-9)


def test_adapter_merge_equals_devkit_multisweep(swept):
    from nuscenes.utils.data_classes import LidarPointCloud

    _, ds = swept
    nusc = ds.nusc
    for index in range(len(ds)):
        sample = nusc.get("sample", ds.sample_tokens[index])
        ours = ds[index].points
        pc, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP",
                                                         nsweeps=SWEEPS + 1, min_distance=0.0)
        assert ours.shape == (pc.points.shape[1], 5)
        np.testing.assert_allclose(ours[:, :4], pc.points.T, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ours[:, 4], times[0], atol=1e-6)
        # time lags: 0 for the keyframe, then 50 ms steps back (the first sample's sweeps precede it)
        lags = np.unique(np.round(ours[:, 4], 4))
        np.testing.assert_allclose(lags, SWEEP_INTERVAL * np.arange(SWEEPS + 1), atol=1e-6)


def test_keyframes_do_not_depend_on_sweeps_or_cameras(swept, tmp_path):
    synth, ds = swept
    plain = NuScenesSceneSynthesizer(1, 2, camera_channel="CAM_FRONT", image_size=(48, 27), randomization=RAND)
    single = plain(seed=5, root=tmp_path)
    for i in range(len(single)):
        a, b = single[i], ds[i]
        assert a.token == b.token
        np.testing.assert_array_equal(a.points[:, :4], b.points[b.points[:, 4] == 0, :4])
        np.testing.assert_array_equal(a.cameras["CAM_FRONT"].load_image(), b.cameras["CAM_FRONT"].load_image())


def test_six_cameras_see_all_around_the_car(swept):
    _, ds = swept
    sample = ds[1]
    keyframe = sample.points[sample.points[:, 4] == 0]
    seen = np.zeros(len(keyframe), bool)
    for channel, cam in sample.cameras.items():
        visible = np.asarray(project_points(keyframe, cam)[2])
        assert visible.sum() > 50, channel
        seen |= visible
    # every 30-degree sector around the car (LiDAR azimuth) has points some camera sees
    sector = ((np.arctan2(keyframe[:, 1], keyframe[:, 0]) + np.pi) // (np.pi / 6)).astype(int) % 12
    assert len(sample.cameras) == 6 and (np.bincount(sector[seen], minlength=12) > 0).all()


def test_bad_sweep_and_camera_arguments():
    with pytest.raises(ValueError, match="sweeps must be an int from 0 to 9"):
        NuScenesSceneSynthesizer(sweeps=10)
    with pytest.raises(ValueError, match="camera_channels must be distinct names from"):
        NuScenesSceneSynthesizer(camera_channels=("CAM_FRONT", "CAM_ROOF"))

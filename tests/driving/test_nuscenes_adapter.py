"""The nuScenes adapter on the real keyframe, checked against the devkit itself."""

from __future__ import annotations

import numpy as np
import pytest

from vlsdk_driving.depth import project_points, sparse_depth_map
from vlsdk_driving.nuscenes_adapter import NuScenesDataset, read_lidar_file
from vlsdk_driving.sample import DETECTION_CLASSES


def test_real_keyframe_points_and_metadata(nuscenes_ds, real_sample):
    assert len(nuscenes_ds) == 1
    assert real_sample.token == "ca9a282c9e77460f8360f564131a8af5"
    assert real_sample.points.shape == (34688, 5)
    assert np.isfinite(real_sample.points).all()
    assert (real_sample.points[:, 4] == 0).all()  # one sweep: no time lag
    assert set(real_sample.cameras) == {"CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK",
                                        "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}
    assert not nuscenes_ds.skipped


def test_real_boxes_equal_devkit_get_sample_data(nuscenes_ds, real_sample):
    from nuscenes.eval.detection.utils import category_to_detection_name

    nusc = nuscenes_ds.nusc
    lidar_token = nusc.get("sample", real_sample.token)["data"]["LIDAR_TOP"]
    _, dev_boxes, _ = nusc.get_sample_data(lidar_token)
    boxes = real_sample.boxes
    assert len(dev_boxes) == len(boxes) == 69
    assert boxes.tokens == [b.token for b in dev_boxes]
    np.testing.assert_allclose(boxes.centers, [b.center for b in dev_boxes], atol=1e-9)
    np.testing.assert_allclose(boxes.lwh, [[b.wlh[1], b.wlh[0], b.wlh[2]] for b in dev_boxes], atol=1e-9)
    np.testing.assert_allclose(boxes.yaw, [b.orientation.yaw_pitch_roll[0] for b in dev_boxes], atol=1e-9)
    assert boxes.names == [category_to_detection_name(b.name) for b in dev_boxes]
    # the footprints agree with the devkit's Box.corners() (same size/heading convention); our
    # boxes keep only the yaw of the slightly tilted LIDAR_TOP frame, so compare at mid-height
    dev = np.stack([b.corners().T for b in dev_boxes])  # (n, 8, 3): pairs (0,3) (1,2) (4,7) (5,6)
    dev_mid = (dev[:, [0, 1, 4, 5], :2] + dev[:, [3, 2, 7, 6], :2]) / 2
    ours = boxes.corners()[:, :4, :2]
    d = np.linalg.norm(ours[:, :, None] - dev_mid[:, None], axis=-1).min(2)
    assert d.max() < 5e-3


def test_real_boxes_contain_their_lidar_points(nuscenes_ds, real_sample):
    """num_lidar_pts from the table vs points inside our boxes (boundary points may differ)."""
    nusc = nuscenes_ds.nusc
    expected = np.array([nusc.get("sample_annotation", t)["num_lidar_pts"] for t in real_sample.boxes.tokens])
    inside = real_sample.boxes.points_inside(real_sample.points).sum(1)
    assert np.abs(inside - expected).max() <= max(2, 0.05 * expected.max())
    assert set(real_sample.boxes.names) <= set(DETECTION_CLASSES)


def test_projected_points_land_inside_images_as_the_devkit_projects_them(nuscenes_ds, real_sample):
    nusc = nuscenes_ds.nusc
    lidar_token = nusc.get("sample", real_sample.token)["data"]["LIDAR_TOP"]
    covered = np.zeros(len(real_sample.points), bool)
    for cam in real_sample.cameras.values():
        w, h = cam.image_size
        assert (w, h) == (1600, 900) and cam.image_path.is_file()
        uv, depth, visible = project_points(real_sample.points, cam)
        uv, visible = uv.numpy(), visible.numpy()
        assert visible.sum() > 2500  # thousands of points in every camera
        inside = uv[visible]
        assert (inside[:, 0] >= 0).all() and (inside[:, 0] < w).all()
        assert (inside[:, 1] >= 0).all() and (inside[:, 1] < h).all()
        assert (depth.numpy()[visible] >= 1).all()
        # the devkit's own projection (keeps 1 < u < w - 1, 1 < v < h - 1, depth > 1)
        dev_uv, _, _ = nusc.explorer.map_pointcloud_to_image(lidar_token, cam.token)
        strict = visible & (uv[:, 0] > 1) & (uv[:, 0] < w - 1) & (uv[:, 1] > 1) & (uv[:, 1] < h - 1)
        assert strict.sum() == dev_uv.shape[1]
        np.testing.assert_allclose(uv[strict], dev_uv[:2].T, atol=0.1)
        covered |= visible
    # the six cameras see all around: most points farther than 3 m land in some image
    far = np.hypot(real_sample.points[:, 0], real_sample.points[:, 1]) > 3
    assert covered[far].mean() > 0.5


def test_sparse_depth_map_nearest_point_per_pixel(real_sample):
    cam = real_sample.cameras["CAM_FRONT"]
    full = sparse_depth_map(real_sample.points, cam)
    assert full.shape == (900, 1600)
    small = sparse_depth_map(real_sample.points, cam, (225, 400))
    assert small.shape == (225, 400)
    assert 0 < (small > 0).sum() <= (full > 0).sum()
    assert float(small[small > 0].min()) >= 1.0
    assert float(small[small > 0].min()) == pytest.approx(float(full[full > 0].min()))


def test_configurable_channels(nuscenes_root):
    ds = NuScenesDataset(nuscenes_root, camera_channels=["CAM_FRONT"])
    assert list(ds[0].cameras) == ["CAM_FRONT"]
    assert NuScenesDataset(nuscenes_root, camera_channels=()).camera_channels == ()
    with pytest.raises(ValueError, match="unknown camera channel.*CAM_TOP.*CAM_FRONT"):
        NuScenesDataset(nuscenes_root, camera_channels=["CAM_TOP"])
    with pytest.raises(ValueError, match="unknown LiDAR channel 'LIDAR_ROOF'.*LIDAR_TOP"):
        NuScenesDataset(nuscenes_root, lidar_channel="LIDAR_ROOF")
    with pytest.raises(ValueError, match="nsweeps"):
        NuScenesDataset(nuscenes_root, nsweeps=0)
    with pytest.raises(FileNotFoundError, match="v9.9"):
        NuScenesDataset(nuscenes_root, version="v9.9")


def test_read_lidar_file_bad_files(tmp_path):
    missing = tmp_path / "gone.pcd.bin"
    with pytest.raises(FileNotFoundError, match="gone.pcd.bin.*tok1"):
        read_lidar_file(missing, "tok1")
    empty = tmp_path / "empty.pcd.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty LiDAR sweep.*empty.pcd.bin"):
        read_lidar_file(empty)
    cut = tmp_path / "cut.pcd.bin"
    np.arange(12, dtype=np.float32).tofile(cut)  # 48 bytes: 2.4 records
    with pytest.raises(ValueError, match="truncated LiDAR sweep.*cut.pcd.bin.*48 bytes"):
        read_lidar_file(cut)
    ok = tmp_path / "ok.pcd.bin"
    np.arange(10, dtype=np.float32).tofile(ok)
    np.testing.assert_array_equal(read_lidar_file(ok), [[0, 1, 2, 3], [5, 6, 7, 8]])


def test_mmdet3d_stub_clouds_read(shared_data):
    """The mmdet3d test clouds are truncated in points (100) but whole in records: they load."""
    root = shared_data / "nuscenes_mini" / "mmdet3d_tests_data_nuscenes" / "samples" / "LIDAR_TOP"
    files = sorted(root.glob("*.pcd.bin"))
    assert files
    assert read_lidar_file(files[0]).shape == (100, 4)

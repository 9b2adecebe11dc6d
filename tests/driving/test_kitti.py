"""The KITTI adapter on the real frame 000008, checked against mmdetection3d's own info file."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from vlsdk_driving.depth import project_points
from vlsdk_driving.kitti import KittiDataset, read_kitti_calib, read_kitti_labels, read_kitti_velodyne
from vlsdk_driving.nuscenes_adapter import POINT_FIELDS


@pytest.fixture(scope="module")
def kitti_root(shared_data: Path) -> Path:
    root = shared_data / "kitti"
    if not (root / "mmdet3d_demo" / "000008.bin").is_file():
        pytest.skip(f"{root} lacks mmdet3d_demo/000008.bin")
    return root


@pytest.fixture(scope="module")
def kitti_ds(kitti_root: Path) -> KittiDataset:
    rec = kitti_root / "kitti_format_reconstructed"
    return KittiDataset(velodyne_dir=kitti_root / "mmdet3d_demo", calib_dir=rec / "calib",
                        label_dir=rec / "label_2", image_dir=kitti_root / "mmdet3d_demo")


def test_frame_into_the_common_sample_type(kitti_ds):
    assert kitti_ds.frame_ids == ["000008"]
    s = kitti_ds[0]
    assert s.source == "kitti" and s.token == "000008"
    assert s.points.shape == (17238, 5) and s.point_fields == POINT_FIELDS
    assert len(s.boxes) == 6 and s.boxes.names == ["car"] * 6
    assert kitti_ds.skipped["kitti_type_DontCare"] == 4  # counted, not silently dropped
    inside = s.boxes.points_inside(s.points).sum(1)
    assert (inside > 40).all()  # every car holds LiDAR points in the Velodyne frame


def test_boxes_and_projection_match_mmdet3d(kitti_ds, kitti_root):
    info = pickle.loads((kitti_root / "mmdet3d_demo" / "000008.pkl").read_bytes())["data_list"][0]
    cars = [i for i in info["instances"] if i["bbox_label_3d"] >= 0]
    s = kitti_ds[0]
    cam = s.cameras["image_2"]
    assert cam.image_size == (1242, 375)
    uv, depth, visible = project_points(s.boxes.centers, cam)
    np.testing.assert_allclose(uv.numpy(), [c["center_2d"] for c in cars], atol=1e-2)
    np.testing.assert_allclose(depth.numpy(), [c["depth"] for c in cars], atol=1e-3)
    lidar2img = np.array(info["images"]["CAM2"]["lidar2img"])
    uv_pts, _, vis_pts = project_points(s.points, cam)
    assert vis_pts.float().mean() > 0.99  # the scan is cropped to the camera's field of view
    ph = np.c_[s.points[:, :3], np.ones(len(s.points))] @ lidar2img.T
    ref = ph[:, :2] / ph[:, 2:3]
    np.testing.assert_allclose(uv_pts.numpy()[vis_pts.numpy()], ref[vis_pts.numpy()], atol=1e-2)


def test_bad_kitti_files(tmp_path, kitti_root):
    cut = tmp_path / "cut.bin"
    np.zeros(6, np.float32).tofile(cut)
    with pytest.raises(ValueError, match="truncated LiDAR sweep.*cut.bin"):
        read_kitti_velodyne(cut)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_kitti_velodyne(tmp_path / "nope.bin")
    calib = tmp_path / "calib.txt"
    calib.write_text("P2: 1 2 3\n")
    with pytest.raises(ValueError, match="calib.txt: expected P2 with 12 values"):
        read_kitti_calib(calib)
    calib.write_text("P2 1 2 3\n")
    with pytest.raises(ValueError, match="calib.txt:1"):
        read_kitti_calib(calib)
    label = tmp_path / "label.txt"
    label.write_text("Car 0 0 0 1 2 3 4 1.5 1.6 4.0 1 2 3 0.1\nTram 0 0 0 1 2 3 4 1 1 1 1 2 3 0\n"
                     "Car 0 0 0 1 2 3 4 1.5 x 4.0 1 2 3 0.1\n")
    with pytest.raises(ValueError, match="label.txt:3"), pytest.warns(UserWarning, match="Tram"):
        read_kitti_labels(label, np.eye(4))
    label.write_text("Car 0 0 0 1 2 3 4 1.5 1.6 4.0 1 2 3 0.1\nTram 0 0 0 1 2 3 4 1 1 1 1 2 3 0\n"
                     "Car 0 0 0 1 2 3 4 0 1 4.0 1 2 3 0.1\n")
    from collections import Counter

    skipped: Counter[str] = Counter()
    with pytest.warns(UserWarning) as caught:
        boxes = read_kitti_labels(label, np.eye(4), skipped)
    assert ["Tram" in str(w.message) for w in caught] == [True, False]
    assert "label.txt:3: skipped box with non-positive size" in str(caught[1].message)
    assert len(boxes) == 1 and skipped == {"kitti_type_Tram": 1, "bad_box": 1}
    with pytest.raises(ValueError, match="velodyne_dir"):
        KittiDataset()
    with pytest.raises(FileNotFoundError, match="calibration"):
        KittiDataset(velodyne_dir=kitti_root / "mmdet3d_demo", calib_dir=tmp_path)

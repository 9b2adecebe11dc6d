"""nuScenes-format logs through nuscenes-devkit: LiDAR sweeps, camera views and 3D boxes per sample.

The tables are read by ``nuscenes.nuscenes.NuScenes`` (never re-parsed here), points by
``LidarPointCloud.from_file`` and boxes by ``NuScenes.get_sample_data``, which moves them into the
LiDAR frame. Sensor channels are options, so a rig with other camera or LiDAR names works without
code changes.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from functools import reduce
from pathlib import Path

import numpy as np

from vlsdk_driving.sample import Boxes3D, CameraView, DrivingSample, class_index

__all__ = ["NuScenesDataset", "read_lidar_file", "POINT_FIELDS", "DataWarning"]

#: Columns of the points a :class:`NuScenesDataset` returns (``time_lag`` in seconds, 0 for the keyframe).
POINT_FIELDS: tuple[str, ...] = ("x", "y", "z", "intensity", "time_lag")

#: Bytes of one ``.pcd.bin`` point record: 5 float32 (x, y, z, intensity, ring index).
_RECORD_BYTES = 5 * 4


class DataWarning(UserWarning):
    """Something in the data was skipped (and counted in the dataset's ``skipped`` counter)."""


def read_lidar_file(path: str | Path, token: str = "", record_floats: int = 5) -> np.ndarray:
    """Read a ``.pcd.bin`` sweep with the devkit's ``LidarPointCloud.from_file``, after checking it.

    Args:
        path: the ``.pcd.bin`` file.
        token: the sample_data token, for error messages.
        record_floats: float32 values per point record (5 for nuScenes).

    Returns:
        ``(N, 4)`` float32 ``x, y, z, intensity`` (N may include NaN rows; callers filter them).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is empty or truncated (size not a multiple of the point record).
    """
    from nuscenes.utils.data_classes import LidarPointCloud

    path = Path(path)
    where = f"{path}" + (f" (sample_data {token})" if token else "")
    if not path.is_file():
        raise FileNotFoundError(f"LiDAR sweep file is missing: {where}")
    size = path.stat().st_size
    record = record_floats * 4
    if size == 0:
        raise ValueError(f"empty LiDAR sweep: {where} has 0 bytes")
    if size % record:
        raise ValueError(f"truncated LiDAR sweep: {where} has {size} bytes, not a multiple of the "
                         f"{record}-byte point record ({record_floats} float32)")
    if record_floats != 5:
        scan = np.fromfile(path, dtype=np.float32).reshape(-1, record_floats)
        return np.ascontiguousarray(scan[:, :4])
    return np.ascontiguousarray(LidarPointCloud.from_file(str(path)).points.T)


class NuScenesDataset:
    """A map-style dataset of :class:`DrivingSample` over a nuScenes-format log.

    Args:
        dataroot: the folder holding ``<version>/*.json``, ``samples/`` and ``sweeps/``.
        version: the table version folder, e.g. ``"v1.0-mini"``.
        lidar_channel: the LiDAR sensor channel whose frame everything is expressed in.
        camera_channels: camera channels to attach; ``None`` takes every camera the tables list,
            ``()`` none.
        nsweeps: sweeps to merge (the keyframe and ``nsweeps - 1`` earlier ones, following
            ``prev``), each moved into the keyframe's LiDAR frame, with its time lag as a column.
        min_distance: drop points closer than this to the sensor in the xy plane (the ego car);
            0 keeps all.
        verbose: let the devkit print its loading report.

    Raises:
        FileNotFoundError: ``dataroot/version`` does not exist.
        ValueError: a channel is not in the sensor table, or a table references a token that does
            not exist (the message names the table and the token).

    Example:
        >>> ds = NuScenesDataset("../shared/data/nuscenes_mini")  # doctest: +SKIP
        >>> sample = ds[0]; sample.points.shape, len(sample.boxes)  # doctest: +SKIP
        ((34688, 5), 69)
    """

    def __init__(self, dataroot: str | Path, version: str = "v1.0-mini", *, lidar_channel: str = "LIDAR_TOP",
                 camera_channels: Sequence[str] | None = None, nsweeps: int = 1, min_distance: float = 0.0,
                 verbose: bool = False) -> None:
        if not isinstance(nsweeps, int) or nsweeps < 1:
            raise ValueError(f"nsweeps must be an int >= 1, got {nsweeps!r}")
        if min_distance < 0:
            raise ValueError(f"min_distance must be >= 0, got {min_distance!r}")
        self.dataroot = Path(dataroot)
        table_root = self.dataroot / version
        if not table_root.is_dir():
            raise FileNotFoundError(f"nuScenes tables not found: {table_root} is not a folder")
        from nuscenes.nuscenes import NuScenes

        try:
            self.nusc = NuScenes(version=version, dataroot=str(self.dataroot), verbose=verbose)
        except KeyError as exc:
            raise ValueError(f"nuScenes tables in {table_root}: a record references the missing token "
                             f"{exc.args[0]!r}") from None
        self.version = version
        self.lidar_channel = lidar_channel
        self.nsweeps = nsweeps
        self.min_distance = float(min_distance)
        modality = {s["channel"]: s["modality"] for s in self.nusc.sensor}
        if modality.get(lidar_channel) != "lidar":
            lidars = sorted(c for c, m in modality.items() if m == "lidar")
            raise ValueError(f"unknown LiDAR channel {lidar_channel!r} in {table_root}/sensor.json; "
                             f"LiDAR channels: {lidars}")
        cameras = sorted(c for c, m in modality.items() if m == "camera")
        if camera_channels is None:
            camera_channels = cameras
        unknown = [c for c in camera_channels if c not in cameras]
        if unknown:
            raise ValueError(f"unknown camera channel(s) {unknown} in {table_root}/sensor.json; "
                             f"camera channels: {cameras}")
        self.camera_channels = tuple(camera_channels)
        self._check_references(table_root)
        self.sample_tokens = [s["token"] for s in self.nusc.sample]
        #: what was skipped so far (non-detection categories, NaN points, bad boxes), by reason.
        self.skipped: Counter[str] = Counter()

    def _check_references(self, table_root: Path) -> None:
        known = {r["token"] for r in self.nusc.sample_data}
        for r in self.nusc.sample_data:
            for key in ("prev", "next"):
                if r[key] and r[key] not in known:
                    raise ValueError(f"{table_root}/sample_data.json: record {r['token']} has {key}={r[key]!r}, "
                                     "a sample_data token that does not exist")
        for s in self.nusc.sample:
            if self.lidar_channel not in s["data"]:
                raise ValueError(f"{table_root}: sample {s['token']} has no {self.lidar_channel} keyframe "
                                 f"sample_data (channels: {sorted(s['data'])})")

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def _skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        warnings.warn(f"nuScenes {self.dataroot}: skipped {detail} ({reason})", DataWarning, stacklevel=3)

    def _pose(self, sd: dict) -> np.ndarray:
        """``(4, 4)`` global-from-sensor transform of a sample_data record."""
        from nuscenes.utils.geometry_utils import transform_matrix
        from pyquaternion import Quaternion

        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
        global_from_car = transform_matrix(pose["translation"], Quaternion(pose["rotation"]))
        car_from_sensor = transform_matrix(cs["translation"], Quaternion(cs["rotation"]))
        return global_from_car @ car_from_sensor

    def load_points(self, lidar_token: str) -> np.ndarray:
        """The merged ``(N, 5)`` points (see :data:`POINT_FIELDS`) of a keyframe LiDAR sample_data.

        Args:
            lidar_token: the keyframe's LiDAR sample_data token.
        """
        ref = self.nusc.get("sample_data", lidar_token)
        ref_from_global = np.linalg.inv(self._pose(ref))
        sd, chunks = ref, []
        for _ in range(self.nsweeps):
            pts = read_lidar_file(self.dataroot / sd["filename"], sd["token"])
            bad = ~np.isfinite(pts).all(1)
            if bad.any():
                self.skipped["nan_points"] += int(bad.sum())
                warnings.warn(f"nuScenes: dropped {int(bad.sum())} non-finite points of {sd['filename']} "
                              f"(sample_data {sd['token']})", DataWarning, stacklevel=2)
                pts = pts[~bad]
            if self.min_distance > 0:
                pts = pts[np.hypot(pts[:, 0], pts[:, 1]) >= self.min_distance]
            if sd is not ref:
                t = reduce(np.dot, [ref_from_global, self._pose(sd)])
                pts[:, :3] = pts[:, :3].astype(np.float64) @ t[:3, :3].T + t[:3, 3]  # float64, as the devkit
            lag = 1e-6 * (ref["timestamp"] - sd["timestamp"])
            chunks.append(np.concatenate([pts, np.full((len(pts), 1), lag, np.float32)], 1))
            if not sd["prev"]:
                break
            sd = self.nusc.get("sample_data", sd["prev"])
        points = np.concatenate(chunks, 0)
        if len(points) == 0:
            raise ValueError(f"empty LiDAR sweep: no finite points in {ref['filename']} (sample_data {ref['token']})")
        return points

    def load_boxes(self, lidar_token: str) -> Boxes3D:
        """The annotated boxes of a keyframe, in its LiDAR frame, via ``NuScenes.get_sample_data``.

        Boxes of categories outside the 10 detection classes and boxes with a non-positive size
        are skipped and counted in :attr:`skipped`.

        Args:
            lidar_token: the keyframe's LiDAR sample_data token.
        """
        from nuscenes.eval.detection.utils import category_to_detection_name

        _, boxes, _ = self.nusc.get_sample_data(lidar_token)
        rot = np.linalg.inv(self._pose(self.nusc.get("sample_data", lidar_token)))[:3, :3]
        rows, labels, vels, tokens = [], [], [], []
        for box in boxes:
            name = category_to_detection_name(box.name)
            if name is None:
                self.skipped["non_detection_category"] += 1
                continue
            w, length, h = (float(v) for v in box.wlh)
            if not (w > 0 and length > 0 and h > 0) or not np.isfinite(box.center).all():
                self._skip("bad_box", f"sample_annotation {box.token} with size {list(box.wlh)} / centre "
                           f"{list(box.center)}")
                continue
            rows.append([*box.center, length, w, h, box.orientation.yaw_pitch_roll[0]])
            labels.append(class_index(name))
            v = self.nusc.box_velocity(box.token)
            vels.append((rot @ v)[:2] if np.isfinite(v).all() else [np.nan, np.nan])
            tokens.append(box.token)
        if not rows:
            return Boxes3D.empty()
        return Boxes3D(np.array(rows), np.array(labels), velocity=np.array(vels), tokens=tokens)

    def load_cameras(self, sample: dict, lidar_sd: dict) -> dict[str, CameraView]:
        """The camera views of a sample, with LiDAR-to-camera transforms through the global frame."""
        lidar_to_global = self._pose(lidar_sd)
        views = {}
        for channel in self.camera_channels:
            token = sample["data"].get(channel)
            if token is None:
                raise ValueError(f"sample {sample['token']} has no {channel} sample_data "
                                 f"(channels: {sorted(sample['data'])})")
            sd = self.nusc.get("sample_data", token)
            cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            views[channel] = CameraView(
                channel=channel,
                image_path=Path(self.nusc.get_sample_data_path(token)),
                intrinsic=np.array(cs["camera_intrinsic"], dtype=np.float64),
                lidar_to_camera=np.linalg.inv(self._pose(sd)) @ lidar_to_global,
                image_size=(int(sd["width"]), int(sd["height"])),
                token=token,
            )
        return views

    def __getitem__(self, index: int) -> DrivingSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        sample = self.nusc.get("sample", self.sample_tokens[index])
        lidar_token = sample["data"][self.lidar_channel]
        lidar_sd = self.nusc.get("sample_data", lidar_token)
        return DrivingSample(
            token=sample["token"],
            points=self.load_points(lidar_token),
            boxes=self.load_boxes(lidar_token),
            cameras=self.load_cameras(sample, lidar_sd),
            point_fields=POINT_FIELDS,
            lidar_path=self.dataroot / lidar_sd["filename"],
            source="nuscenes",
            timestamp=int(sample["timestamp"]),
        )

    def __repr__(self) -> str:
        return (f"NuScenesDataset({str(self.dataroot)!r}, {self.version!r}, {len(self)} samples, "
                f"lidar={self.lidar_channel!r}, cameras={list(self.camera_channels)})")

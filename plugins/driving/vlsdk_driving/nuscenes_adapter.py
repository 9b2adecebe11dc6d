"""nuScenes-format logs through nuscenes-devkit: LiDAR sweeps, camera views and 3D boxes per sample.

The tables are read by ``nuscenes.nuscenes.NuScenes`` (re-read here only to name the record that
holds a missing token in an error message), points by
``LidarPointCloud.from_file`` and boxes by ``NuScenes.get_sample_data``, which moves them into the
LiDAR frame. Sensor channels, the table version and the category names are options, so another
fleet's nuScenes-schema logs (Lyft Level 5, an in-house rig) work without code changes.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from functools import reduce
from pathlib import Path
from typing import Literal

import numpy as np

from vlsdk_driving.categories import CategoryMap, resolve_category_map
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

    Works for other fleets that write the nuScenes schema (Lyft Level 5, an in-house rig): the
    table version, the LiDAR and camera channels and the category names are options.

    Args:
        dataroot: the folder holding ``<version>/*.json``, ``samples/`` and ``sweeps/``.
        version: the table version folder, e.g. ``"v1.0-mini"``, ``"v1.0-trainval"``.
        lidar_channel: the LiDAR sensor channel whose frame everything is expressed in.
        camera_channels: camera channels to attach; ``None`` takes every camera the tables list,
            ``()`` none.
        nsweeps: sweeps to merge (the keyframe and ``nsweeps - 1`` earlier ones, following
            ``prev``), each moved into the keyframe's LiDAR frame, with its time lag as a column.
        min_distance: drop points closer than this to the sensor in the xy plane (the ego car);
            0 keeps all.
        category_map: annotation category name -> detection class (``None`` value: drop), e.g.
            :data:`~vlsdk_driving.categories.LYFT_CATEGORY_MAP`, or a name/JSON path that
            :func:`~vlsdk_driving.categories.resolve_category_map` accepts; ``None`` uses the
            devkit's nuScenes mapping. Annotations whose category maps to nothing are dropped,
            counted per name in :attr:`dropped_categories` and warned about once.
        on_error: what a non-finite translation, size or rotation of an annotation, or a
            non-finite calibration or ego pose, does: ``"raise"`` a ``ValueError`` naming the table
            file, the record and the field; ``"skip"`` the annotation (or the samples that use the
            calibration or pose), counted in :attr:`skipped` and warned about once.
        verbose: let the devkit print its loading report.

    ``prev``/``next`` links to records missing from the tables are warned about once: a box whose
    annotation has one gets a NaN velocity, and multi-sweep merging stops at a missing sweep.

    Raises:
        FileNotFoundError: ``dataroot/version`` does not exist.
        ValueError: a channel is not in the sensor table, a table references a token that does
            not exist (the message names the table file and the token), or (``on_error="raise"``)
            a non-finite value.

    Example:
        >>> ds = NuScenesDataset("../shared/data/nuscenes_mini")  # doctest: +SKIP
        >>> sample = ds[0]; sample.points.shape, len(sample.boxes)  # doctest: +SKIP
        ((34688, 5), 69)
    """

    def __init__(self, dataroot: str | Path, version: str = "v1.0-mini", *, lidar_channel: str = "LIDAR_TOP",
                 camera_channels: Sequence[str] | None = None, nsweeps: int = 1, min_distance: float = 0.0,
                 category_map: str | Path | CategoryMap | None = None,
                 on_error: Literal["raise", "skip"] = "raise", verbose: bool = False) -> None:
        if not isinstance(nsweeps, int) or nsweeps < 1:
            raise ValueError(f"nsweeps must be an int >= 1, got {nsweeps!r}")
        if min_distance < 0:
            raise ValueError(f"min_distance must be >= 0, got {min_distance!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.dataroot = Path(dataroot)
        self.table_root = self.dataroot / version
        if not self.table_root.is_dir():
            raise FileNotFoundError(f"nuScenes tables not found: {self.table_root} is not a folder")
        from nuscenes.nuscenes import NuScenes

        self.category_map = resolve_category_map(category_map)
        self.on_error = on_error
        try:
            self.nusc = NuScenes(version=version, dataroot=str(self.dataroot), verbose=verbose)
        except KeyError as exc:
            token = exc.args[0]
            raise ValueError(f"nuScenes tables in {self.table_root}: {_referrer(self.table_root, token)} references "
                             f"a record that no table holds (missing token {token!r})") from None
        self.version = version
        self.lidar_channel = lidar_channel
        self.nsweeps = nsweeps
        self.min_distance = float(min_distance)
        modality = {s["channel"]: s["modality"] for s in self.nusc.sensor}
        if modality.get(lidar_channel) != "lidar":
            lidars = sorted(c for c, m in modality.items() if m == "lidar")
            raise ValueError(f"unknown LiDAR channel {lidar_channel!r} in {self.table_root}/sensor.json; "
                             f"LiDAR channels: {lidars}")
        cameras = sorted(c for c, m in modality.items() if m == "camera")
        if camera_channels is None:
            camera_channels = cameras
        unknown = [c for c in camera_channels if c not in cameras]
        if unknown:
            raise ValueError(f"unknown camera channel(s) {unknown} in {self.table_root}/sensor.json; "
                             f"camera channels: {cameras}")
        self.camera_channels = tuple(camera_channels)
        #: what was skipped so far (non-detection categories, NaN points, bad boxes, ...), by reason.
        self.skipped: Counter[str] = Counter()
        #: annotations dropped because their category maps to no detection class, by category name.
        self.dropped_categories: Counter[str] = Counter()
        #: ``(table, token, "prev" | "next")`` of links to records missing from the tables.
        self.dangling_links: set[tuple[str, str, str]] = set()
        self._bad_annotations: set[str] = set()
        self._bad_sensor_records: set[str] = set()  # calibrated_sensor / ego_pose tokens (on_error="skip")
        self._check_links()
        self._check_finite()
        self._count_categories()
        self.sample_tokens = [s["token"] for s in self.nusc.sample if self._usable(s)]

    # -- table checks (once, at construction) ------------------------------------------------
    def _check_links(self) -> None:
        for table in ("sample_data", "sample_annotation"):
            records = getattr(self.nusc, table)
            known = {r["token"] for r in records}
            self.dangling_links |= {(table, r["token"], key) for r in records for key in ("prev", "next")
                                    if r[key] and r[key] not in known}
        for table in ("sample_data", "sample_annotation"):
            links = sorted((tok, key) for t, tok, key in self.dangling_links if t == table)
            if links:
                tok, key = links[0]
                effect = "their boxes get NaN velocities" if table == "sample_annotation" else \
                    "multi-sweep merging stops there"
                warnings.warn(f"nuScenes {self.table_root}/{table}.json: {len(links)} prev/next link(s) point to "
                              f"records missing from the table (first: record {tok} {key}="
                              f"{self.nusc.get(table, tok)[key]!r}); {effect}", DataWarning, stacklevel=3)
        for s in self.nusc.sample:
            if self.lidar_channel not in s["data"]:
                raise ValueError(f"{self.table_root}: sample {s['token']} has no {self.lidar_channel} keyframe "
                                 f"sample_data (channels: {sorted(s['data'])})")

    def _check_finite(self) -> None:
        checks = (("sample_annotation", ("translation", "size", "rotation")),
                  ("calibrated_sensor", ("translation", "rotation", "camera_intrinsic")),
                  ("ego_pose", ("translation", "rotation")))
        for table, fields in checks:
            bad = _nonfinite_records(getattr(self.nusc, table), fields)
            if not bad:
                continue
            record, field = bad[0]
            detail = (f"{self.table_root}/{table}.json: record {record['token']} has a non-finite {field} "
                      f"{record[field]!r}; expected finite numbers ({len(bad)} such value(s) in the table)")
            if self.on_error == "raise":
                raise ValueError(detail)
            tokens = {r["token"] for r, _ in bad}
            if table == "sample_annotation":
                self._bad_annotations |= tokens
                effect = "those annotations are skipped"
            else:
                self._bad_sensor_records |= tokens
                effect = "samples using them are skipped"
            self.skipped[f"nonfinite_{table}"] += len(tokens)
            warnings.warn(f"nuScenes {detail}; {effect} (on_error='skip')", DataWarning, stacklevel=3)

    def _count_categories(self) -> None:
        names = Counter(r["category_name"] for r in self.nusc.sample_annotation)
        self.dropped_categories = Counter({n: c for n, c in names.items() if self.detection_name(n) is None})
        if self.dropped_categories:
            listed = ", ".join(f"{n} {c}" for n, c in self.dropped_categories.most_common())
            which = "the devkit's nuScenes mapping" if self.category_map is None else "the category map"
            warnings.warn(f"nuScenes {self.table_root}: {sum(self.dropped_categories.values())} annotation(s) of "
                          f"categories outside {which} are dropped: {listed}", DataWarning, stacklevel=3)

    def _usable(self, sample: dict) -> bool:
        if not self._bad_sensor_records:
            return True
        for channel in (self.lidar_channel, *self.camera_channels):
            sd = self.get("sample_data", sample["data"][channel], f"sample {sample['token']}") \
                if channel in sample["data"] else None
            if sd and {sd["calibrated_sensor_token"], sd["ego_pose_token"]} & self._bad_sensor_records:
                self.skipped["nonfinite_pose_sample"] += 1
                return False
        return True

    # -- lookups -------------------------------------------------------------------------------
    def get(self, table: str, token: str, referrer: str = "") -> dict:
        """``NuScenes.get`` whose miss names the table file and the token instead of a bare ``KeyError``.

        Args:
            table: the table name, e.g. ``"sample_data"``.
            token: the record token.
            referrer: who holds the reference, for the message.

        Raises:
            ValueError: no such record.
        """
        try:
            return self.nusc.get(table, token)
        except KeyError:
            by = f" (referenced by {referrer})" if referrer else ""
            raise ValueError(f"{self.table_root}/{table}.json has no record {token!r}{by}") from None

    def detection_name(self, category: str) -> str | None:
        """The detection class of an annotation category name (``None``: dropped).

        Args:
            category: the category name of the ``category`` table.
        """
        if self.category_map is None:
            from nuscenes.eval.detection.utils import category_to_detection_name

            return category_to_detection_name(category)
        return self.category_map.get(category)

    def is_usable_annotation(self, token: str) -> bool:
        """Whether an annotation has finite geometry (``False`` only under ``on_error="skip"``).

        Args:
            token: the sample_annotation token.
        """
        return token not in self._bad_annotations

    def box_velocity(self, annotation_token: str) -> np.ndarray:
        """``(3,)`` global-frame velocity of an annotation (``NuScenes.box_velocity``), NaN where unknown.

        An annotation with a ``prev``/``next`` link to a missing record gets NaN (warned about at
        construction, counted in :attr:`skipped` as ``dangling_link_velocity``).

        Args:
            annotation_token: the sample_annotation token.
        """
        if any(("sample_annotation", annotation_token, k) in self.dangling_links for k in ("prev", "next")):
            self.skipped["dangling_link_velocity"] += 1
            return np.full(3, np.nan)
        try:
            return self.nusc.box_velocity(annotation_token)
        except KeyError as exc:
            raise ValueError(f"{self.table_root}: box_velocity of sample_annotation {annotation_token}: no record "
                             f"{exc.args[0]!r} in sample_annotation.json or sample.json") from None

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def _skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        warnings.warn(f"nuScenes {self.dataroot}: skipped {detail} ({reason})", DataWarning, stacklevel=3)

    def _pose(self, sd: dict) -> np.ndarray:
        """``(4, 4)`` global-from-sensor transform of a sample_data record."""
        from nuscenes.utils.geometry_utils import transform_matrix
        from pyquaternion import Quaternion

        cs = self.get("calibrated_sensor", sd["calibrated_sensor_token"], f"sample_data {sd['token']}")
        pose = self.get("ego_pose", sd["ego_pose_token"], f"sample_data {sd['token']}")
        global_from_car = transform_matrix(pose["translation"], Quaternion(pose["rotation"]))
        car_from_sensor = transform_matrix(cs["translation"], Quaternion(cs["rotation"]))
        return global_from_car @ car_from_sensor

    def lidar_token(self, sample_token: str) -> str:
        """The keyframe LiDAR sample_data token of a sample.

        Args:
            sample_token: the sample token.
        """
        return self.get("sample", sample_token)["data"][self.lidar_channel]

    def global_from_lidar(self, sample_token: str) -> tuple[np.ndarray, np.ndarray]:
        """The global-from-LiDAR transform of a sample's keyframe: ``(4, 4)`` matrix and quaternion.

        Args:
            sample_token: the sample token.

        Returns:
            ``(matrix, quaternion w, x, y, z)``: ego pose times the LiDAR's calibrated sensor.
        """
        from pyquaternion import Quaternion

        sd = self.get("sample_data", self.lidar_token(sample_token), f"sample {sample_token}")
        cs = self.get("calibrated_sensor", sd["calibrated_sensor_token"], f"sample_data {sd['token']}")
        pose = self.get("ego_pose", sd["ego_pose_token"], f"sample_data {sd['token']}")
        q = Quaternion(pose["rotation"]) * Quaternion(cs["rotation"])
        return self._pose(sd), q.elements

    def load_points(self, lidar_token: str) -> np.ndarray:
        """The merged ``(N, 5)`` points (see :data:`POINT_FIELDS`) of a keyframe LiDAR sample_data.

        Args:
            lidar_token: the keyframe's LiDAR sample_data token.
        """
        ref = self.get("sample_data", lidar_token)
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
            if not sd["prev"] or ("sample_data", sd["token"], "prev") in self.dangling_links:
                break
            sd = self.get("sample_data", sd["prev"], f"sample_data {sd['token']} prev")
            if {sd["calibrated_sensor_token"], sd["ego_pose_token"]} & self._bad_sensor_records:
                self.skipped["nonfinite_pose_sweep"] += 1
                break
        points = np.concatenate(chunks, 0)
        if len(points) == 0:
            raise ValueError(f"empty LiDAR sweep: no finite points in {ref['filename']} (sample_data {ref['token']})")
        return points

    def load_boxes(self, lidar_token: str) -> Boxes3D:
        """The annotated boxes of a keyframe, in its LiDAR frame, as ``NuScenes.get_sample_data`` moves them.

        Boxes whose category maps to no detection class (see ``category_map``) and boxes with a
        non-positive size are skipped and counted in :attr:`skipped`; so are boxes with
        non-finite geometry under ``on_error="skip"`` (before the devkit's ``Box`` asserts on them).

        Args:
            lidar_token: the keyframe's LiDAR sample_data token.
        """
        from pyquaternion import Quaternion

        sd = self.get("sample_data", lidar_token)
        anns = self.get("sample", sd["sample_token"], f"sample_data {lidar_token}")["anns"]
        usable = [t for t in anns if self.is_usable_annotation(t)]
        if len(usable) < len(anns):
            self.skipped["nonfinite_box"] += len(anns) - len(usable)
        cs = self.get("calibrated_sensor", sd["calibrated_sensor_token"], f"sample_data {lidar_token}")
        pose = self.get("ego_pose", sd["ego_pose_token"], f"sample_data {lidar_token}")
        boxes = [self.nusc.get_box(t) for t in usable]
        for box in boxes:  # global -> ego -> sensor, the devkit's get_sample_data steps
            box.translate(-np.array(pose["translation"]))
            box.rotate(Quaternion(pose["rotation"]).inverse)
            box.translate(-np.array(cs["translation"]))
            box.rotate(Quaternion(cs["rotation"]).inverse)
        rot = np.linalg.inv(self._pose(sd))[:3, :3]
        rows, labels, vels, tokens = [], [], [], []
        for box in boxes:
            name = self.detection_name(box.name)
            if name is None:
                self.skipped["non_detection_category"] += 1
                continue
            w, length, h = (float(v) for v in box.wlh)
            if not (w > 0 and length > 0 and h > 0):
                self._skip("bad_box", f"sample_annotation {box.token} with size {list(box.wlh)}")
                continue
            rows.append([*box.center, length, w, h, box.orientation.yaw_pitch_roll[0]])
            labels.append(class_index(name))
            v = self.box_velocity(box.token)
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
            sd = self.get("sample_data", token, f"sample {sample['token']}")
            cs = self.get("calibrated_sensor", sd["calibrated_sensor_token"], f"sample_data {token}")
            views[channel] = CameraView(
                channel=channel,
                image_path=self.dataroot / sd["filename"],
                intrinsic=np.array(cs["camera_intrinsic"], dtype=np.float64),
                lidar_to_camera=np.linalg.inv(self._pose(sd)) @ lidar_to_global,
                image_size=(int(sd["width"]), int(sd["height"])),
                token=token,
            )
        return views

    def __getitem__(self, index: int) -> DrivingSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        sample = self.get("sample", self.sample_tokens[index])
        lidar_token = sample["data"][self.lidar_channel]
        lidar_sd = self.get("sample_data", lidar_token, f"sample {sample['token']}")
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


def _finite(value: object) -> bool:
    try:
        return bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())
    except (TypeError, ValueError):
        return False


def _nonfinite_records(records: Sequence[dict], fields: Sequence[str]) -> list[tuple[dict, str]]:
    """``(record, field)`` of every record whose field holds a non-finite or non-numeric value."""
    bad = []
    for field in fields:
        values = [r.get(field) for r in records]
        try:
            arr = np.asarray(values, dtype=np.float64).reshape(len(records), -1)
            rows = np.flatnonzero(~np.isfinite(arr).all(1)).tolist()
        except (TypeError, ValueError):  # ragged (camera_intrinsic is [] off cameras) or non-numeric
            rows = [i for i, v in enumerate(values) if not _finite(v)]
        bad += [(records[i], field) for i in rows]
    return bad


def _referrer(table_root: Path, token: str) -> str:
    """Which table record holds ``token`` in a field (the error path of a failed table load)."""
    for path in sorted(table_root.glob("*.json")):
        try:
            records = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for record in records if isinstance(records, list) else []:
            for field, value in record.items():
                if field != "token" and (value == token or isinstance(value, list) and token in value):
                    return f"{path.name} record {record.get('token')!r} field {field!r}"
    return "a record"

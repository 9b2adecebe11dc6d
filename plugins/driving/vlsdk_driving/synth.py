"""Synthetic driving scenes written as a complete nuScenes-format dataset that nuscenes-devkit loads.

Each scene places randomly sized, posed and moving objects of the 10 detection classes on a flat
ground, drives the ego car forward, and ray-casts a 32-beam spinning LiDAR (and optionally a
front camera) against the ground and the boxes, so objects occlude each other and point density
falls off with range like a real sweep. Everything is randomised per scene: object counts and
classes, sizes (around nuScenes class means), poses, speeds, azimuth resolution (point density),
range noise, point dropout, the LiDAR's mounting yaw and a few unannotated background buildings.

The output has the devkit's 13 tables in ``<root>/<version>/``, ``samples/LIDAR_TOP/*.pcd.bin``
(5 float32 per point: x, y, z, intensity, ring), ``samples/CAM_*/*.jpg`` (one front camera or the
six nuScenes cameras with their calibrations), a placeholder map PNG and ``<version>/splits.json``
naming every scene in the split :data:`SYNTHETIC_SPLIT`, the devkit's custom-split file, so
``DetectionEval(nusc, config, result_path, eval_set="synthetic")`` evaluates on them; annotation
``prev``/``next`` links make ``NuScenes.box_velocity`` work. ``category_names`` writes another
fleet's category names (e.g. Lyft's) instead of nuScenes' fine categories. With ``sweeps > 0`` non-keyframe LiDAR sweeps at 20 Hz go
to ``sweeps/LIDAR_TOP/`` (``is_key_frame`` false, each with its own ego pose along the trajectory,
linked ``prev``/``next`` with the keyframes), so multi-sweep merging (``NuScenesDataset(nsweeps=10)``,
the devkit's ``LidarPointCloud.from_file_multisweep``) has real history to merge. The sensor rig
itself is :mod:`vlsdk_driving.synth_sensors`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlsdk_driving.sample import DETECTION_CLASSES, Boxes3D
from vlsdk_driving.synth_sensors import (
    LIDAR_ORIGIN,
    NUSCENES_CAMERAS,
    CameraMount,
    raycast_boxes,
    render_camera,
    rot_z,
    scan_lidar,
)

__all__ = ["CLASS_SIZES", "CLASS_SPEEDS", "FINE_CATEGORY", "SceneRandomization", "NuScenesSceneSynthesizer",
           "raycast_boxes", "NUSCENES_CAMERAS", "SWEEP_INTERVAL", "SYNTHETIC_SPLIT"]

#: Mean ``(length, width, height)`` per class, metres (about the nuScenes means).
CLASS_SIZES: dict[str, tuple[float, float, float]] = {
    "car": (4.6, 1.95, 1.7), "truck": (6.9, 2.5, 2.8), "trailer": (12.0, 2.9, 3.9), "bus": (11.0, 2.95, 3.5),
    "construction_vehicle": (6.4, 2.8, 3.2), "bicycle": (1.7, 0.6, 1.3), "motorcycle": (2.1, 0.77, 1.5),
    "pedestrian": (0.73, 0.67, 1.77), "traffic_cone": (0.41, 0.41, 1.07), "barrier": (0.5, 2.5, 0.98),
}
#: Top speed per class, m/s (objects move straight along their heading).
CLASS_SPEEDS: dict[str, float] = {
    "car": 8.0, "truck": 6.0, "trailer": 4.0, "bus": 6.0, "construction_vehicle": 2.0, "bicycle": 4.0,
    "motorcycle": 8.0, "pedestrian": 1.5, "traffic_cone": 0.0, "barrier": 0.0,
}
#: The nuScenes fine category written for each detection class (the devkit maps it back).
FINE_CATEGORY: dict[str, str] = {
    "car": "vehicle.car", "truck": "vehicle.truck", "trailer": "vehicle.trailer", "bus": "vehicle.bus.rigid",
    "construction_vehicle": "vehicle.construction", "bicycle": "vehicle.bicycle",
    "motorcycle": "vehicle.motorcycle", "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone", "barrier": "movable_object.barrier",
}
#: The custom split (``<version>/splits.json``) that holds every written scene.
SYNTHETIC_SPLIT = "synthetic"
#: Seconds between LiDAR sweeps (20 Hz); keyframes are 10 sweeps (0.5 s) apart.
SWEEP_INTERVAL = 0.05
_KEYFRAME_INTERVAL = 0.5
_CLASS_COLOURS = np.array([[200, 40, 40], [40, 120, 200], [150, 90, 40], [220, 180, 30], [230, 120, 20],
                           [30, 180, 90], [160, 40, 160], [240, 240, 240], [255, 110, 0], [120, 120, 140]], float)


@dataclass
class SceneRandomization:
    """Domain-randomisation ranges of :class:`NuScenesSceneSynthesizer` (``(low, high)`` pairs).

    Args:
        num_objects: annotated objects per scene.
        class_weights: relative frequency of each detection class.
        size_jitter: each size dimension is scaled by ``U(1 - j, 1 + j)``.
        area: objects are placed with ``|x|, |y| <= area`` metres around the first ego pose.
        azimuth_steps: LiDAR azimuth resolution (rays per beam per turn): the point density.
        range_noise: standard deviation of the range noise, metres.
        dropout: fraction of returns dropped at random.
        ego_speed: m/s, forward.
        buildings: unannotated background boxes beyond ``area``.
        lidar_yaw: mounting yaw of the LiDAR on the car, radians.
    """

    num_objects: tuple[int, int] = (6, 16)
    class_weights: Mapping[str, float] = field(default_factory=lambda: {
        "car": 0.5, "pedestrian": 0.15, "truck": 0.08, "bus": 0.03, "trailer": 0.02, "construction_vehicle": 0.02,
        "bicycle": 0.05, "motorcycle": 0.05, "traffic_cone": 0.05, "barrier": 0.05})
    size_jitter: float = 0.15
    area: float = 30.0
    azimuth_steps: tuple[int, int] = (600, 1100)
    range_noise: tuple[float, float] = (0.0, 0.03)
    dropout: tuple[float, float] = (0.0, 0.2)
    ego_speed: tuple[float, float] = (0.0, 8.0)
    buildings: tuple[int, int] = (0, 3)
    lidar_yaw: tuple[float, float] = (-np.pi, np.pi)

    def __post_init__(self) -> None:
        for name in ("num_objects", "azimuth_steps", "range_noise", "dropout", "ego_speed", "buildings", "lidar_yaw"):
            lo, hi = getattr(self, name)
            if not lo <= hi or lo < 0 and name != "lidar_yaw":
                raise ValueError(f"{name} must be a (low, high) pair with 0 <= low <= high, got {getattr(self, name)}")
        if self.azimuth_steps[0] < 8:
            raise ValueError(f"azimuth_steps must be >= 8, got {self.azimuth_steps}")
        if not 0 <= self.dropout[1] < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        unknown = [c for c in self.class_weights if c not in DETECTION_CLASSES]
        if unknown or not self.class_weights or min(self.class_weights.values()) < 0 \
                or sum(self.class_weights.values()) <= 0:
            raise ValueError(f"class_weights must map detection classes {DETECTION_CLASSES} to weights >= 0 "
                             f"with a positive sum, got {dict(self.class_weights)}")
        if not 0 <= self.size_jitter < 1 or self.area <= 5:
            raise ValueError(f"size_jitter must be in [0, 1) and area > 5 m, got {self.size_jitter}, {self.area}")


class NuScenesSceneSynthesizer:
    """Writes randomised synthetic scenes as a nuScenes-format dataset (registered ``driving.scenes``).

    Args:
        num_scenes: scenes to write.
        samples_per_scene: keyframes per scene, 0.5 s apart.
        version: the table folder name.
        lidar_channel: the LiDAR's channel name (a different rig can use another).
        camera_channel: one camera's channel name, or ``None`` for no images; mounted like the
            nuScenes camera of that name when it is one of :data:`NUSCENES_CAMERAS`, else like
            ``CAM_FRONT``.
        camera_channels: several cameras instead (names from :data:`NUSCENES_CAMERAS`, e.g.
            ``tuple(NUSCENES_CAMERAS)`` for all six), each with its nuScenes-like calibration;
            overrides ``camera_channel``. Cameras are written at the keyframes.
        sweeps: non-keyframe LiDAR sweeps written before each keyframe, ``0.05 s`` apart (20 Hz;
            nuScenes has 9, filling the 0.5 s between keyframes), 0 to 9.
        image_size: ``(width, height)`` of the camera images.
        randomization: the randomisation ranges.
        category_names: the category name written for some detection classes (default
            :data:`FINE_CATEGORY`), e.g. ``{"truck": "other_vehicle"}`` for a Lyft-style table.

    The keyframes, their boxes and the first camera's images do not depend on ``sweeps`` or on
    the other cameras: those draw from their own generator.

    Example:
        >>> synth = NuScenesSceneSynthesizer(num_scenes=2, samples_per_scene=3, sweeps=9,
        ...                                  camera_channels=tuple(NUSCENES_CAMERAS))
        >>> dataset = synth(seed=0, root=tmp_path)  # doctest: +SKIP
        >>> len(dataset), synth.truth  # doctest: +SKIP
    """

    def __init__(self, num_scenes: int = 2, samples_per_scene: int = 3, *, version: str = "v1.0-mini",
                 lidar_channel: str = "LIDAR_TOP", camera_channel: str | None = "CAM_FRONT",
                 camera_channels: Sequence[str] | None = None, sweeps: int = 0,
                 image_size: Sequence[int] = (320, 180), randomization: SceneRandomization | None = None,
                 category_names: Mapping[str, str] | None = None) -> None:
        if not isinstance(num_scenes, int) or num_scenes < 1:
            raise ValueError(f"num_scenes must be an int >= 1, got {num_scenes!r}")
        if not isinstance(samples_per_scene, int) or samples_per_scene < 1:
            raise ValueError(f"samples_per_scene must be an int >= 1, got {samples_per_scene!r}")
        if len(image_size) != 2 or min(image_size) < 8:
            raise ValueError(f"image_size must be (width, height) >= 8 pixels, got {image_size!r}")
        between = round(_KEYFRAME_INTERVAL / SWEEP_INTERVAL) - 1
        if not isinstance(sweeps, int) or not 0 <= sweeps <= between:
            raise ValueError(f"sweeps must be an int from 0 to {between} (20 Hz sweeps between 2 Hz keyframes), "
                             f"got {sweeps!r}")
        names = dict(category_names or {})
        if set(names) - set(DETECTION_CLASSES) or not all(isinstance(v, str) and v for v in names.values()):
            raise ValueError(f"category_names must map detection classes {DETECTION_CLASSES} to non-empty names, "
                             f"got {names}")
        if camera_channels is not None:
            unknown = [c for c in camera_channels if c not in NUSCENES_CAMERAS]
            if unknown or len(set(camera_channels)) != len(camera_channels):
                raise ValueError(f"camera_channels must be distinct names from {list(NUSCENES_CAMERAS)}, "
                                 f"got {list(camera_channels)}")
            cameras = {c: NUSCENES_CAMERAS[c] for c in camera_channels}
        elif camera_channel is not None:
            cameras = {camera_channel: NUSCENES_CAMERAS.get(camera_channel, NUSCENES_CAMERAS["CAM_FRONT"])}
        else:
            cameras = {}
        self.num_scenes = num_scenes
        self.samples_per_scene = samples_per_scene
        self.version = version
        self.lidar_channel = lidar_channel
        #: camera channel -> its mount, in writing order.
        self.cameras: dict[str, CameraMount] = cameras
        self.camera_channel = next(iter(cameras), None)
        self.sweeps = sweeps
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.randomization = randomization or SceneRandomization()
        #: detection class -> the category name written to ``category.json``.
        self.category_names: dict[str, str] = {**FINE_CATEGORY, **names}
        #: sample token -> the boxes placed, in that sample's LiDAR frame (filled by :meth:`write`).
        self.truth: dict[str, Boxes3D] = {}

    def __call__(self, seed: int = 0, root: str | Path | None = None, nsweeps: int = 1):
        """Write the dataset into ``root`` (see :meth:`write`) and open it with the nuScenes adapter.

        Args:
            seed: the random seed (same seed, same dataset).
            root: the output folder (created); ``None`` makes a new temporary folder, left for
                the caller to delete (``dataset.dataroot``).
            nsweeps: sweeps the adapter merges per sample (``sweeps + 1`` takes every one written
                since the previous keyframe).

        Returns:
            a :class:`vlsdk_driving.nuscenes_adapter.NuScenesDataset` over it.
        """
        import tempfile

        from vlsdk_driving.nuscenes_adapter import NuScenesDataset

        if root is None:
            root = tempfile.mkdtemp(prefix=f"vlsdk-driving-scenes-{seed}-")
        root = self.write(root, seed)
        return NuScenesDataset(root, self.version, lidar_channel=self.lidar_channel,
                               camera_channels=tuple(self.cameras), nsweeps=nsweeps)

    # -- generation ------------------------------------------------------------------------
    def _objects(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-overlapping objects around the origin: ``(boxes (M, 7), labels, speeds)``."""
        r = self.randomization
        names = list(r.class_weights)
        p = np.array([r.class_weights[n] for n in names], float)
        n = int(rng.integers(r.num_objects[0], r.num_objects[1] + 1))
        boxes, labels, speeds = [], [], []
        for _ in range(n * 20):
            if len(boxes) == n:
                break
            name = names[rng.choice(len(names), p=p / p.sum())]
            lwh = np.array(CLASS_SIZES[name]) * rng.uniform(1 - r.size_jitter, 1 + r.size_jitter, 3)
            xy = rng.uniform(-r.area, r.area, 2)
            if abs(xy[0]) < 5 and abs(xy[1]) < 3:
                continue  # the ego car
            radius = np.hypot(lwh[0], lwh[1]) / 2
            if any(np.hypot(*(xy - b[:2])) < radius + np.hypot(b[3], b[4]) / 2 + 0.3 for b in boxes):
                continue
            boxes.append([xy[0], xy[1], lwh[2] / 2, *lwh, rng.uniform(-np.pi, np.pi)])
            labels.append(DETECTION_CLASSES.index(name))
            speeds.append(rng.uniform(0, CLASS_SPEEDS[name]) * (rng.random() < 0.6))
        return np.array(boxes).reshape(-1, 7), np.array(labels, dtype=np.int64), np.array(speeds)

    def _buildings(self, rng: np.random.Generator) -> np.ndarray:
        r = self.randomization
        out = []
        for _ in range(int(rng.integers(r.buildings[0], r.buildings[1] + 1))):
            ang = rng.uniform(-np.pi, np.pi)
            dist = r.area + rng.uniform(12, 25)
            lwh = rng.uniform([8, 4, 4], [20, 10, 12])
            out.append([dist * np.cos(ang), dist * np.sin(ang), lwh[2] / 2, *lwh, ang + np.pi / 2])
        return np.array(out).reshape(-1, 7)

    def write(self, root: str | Path, seed: int = 0) -> Path:
        """Write the whole dataset into ``root`` and record the placed boxes in :attr:`truth`.

        Args:
            root: the output folder (created; existing table files are overwritten).
            seed: the random seed.

        Returns:
            ``root`` as a :class:`Path`.
        """
        from PIL import Image

        rng = np.random.default_rng(seed)
        extra = np.random.default_rng([seed, 1])  # sweeps and further cameras: keyframes stay the same
        root = Path(root)
        tables: dict[str, list[dict]] = {k: [] for k in (
            "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
            "scene", "sample", "sample_data", "sample_annotation", "map")}
        cat_tokens = {name: _token(rng) for name in DETECTION_CLASSES}
        tables["category"] = [{"token": cat_tokens[n], "name": self.category_names[n],
                               "description": f"synthetic {n}"} for n in DETECTION_CLASSES]
        for i, level in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"), 1):
            tables["visibility"].append({"token": str(i), "level": level, "description": f"visibility {level}"})
        lidar_sensor, first_cam = _token(rng), _token(rng)
        tables["sensor"].append({"token": lidar_sensor, "channel": self.lidar_channel, "modality": "lidar"})
        cam_sensors = {c: first_cam if i == 0 else _token(extra) for i, c in enumerate(self.cameras)}
        tables["sensor"] += [{"token": t, "channel": c, "modality": "camera"} for c, t in cam_sensors.items()]
        (root / "maps").mkdir(parents=True, exist_ok=True)
        Image.new("L", (1, 1)).save(root / "maps" / "synthetic_placeholder.png")
        for folder in [f"samples/{self.lidar_channel}", *(f"samples/{c}" for c in self.cameras)] + (
                [f"sweeps/{self.lidar_channel}"] if self.sweeps else []):
            (root / folder).mkdir(parents=True, exist_ok=True)
        timestamp = 1_600_000_000_000_000 + int(rng.integers(0, 10**9))
        self.truth = {}
        for scene_i in range(self.num_scenes):
            self._write_scene(root, tables, f"synthetic-{seed}-{scene_i}", timestamp, rng, extra,
                              lidar_sensor, cam_sensors, cat_tokens)
            timestamp += int(self.samples_per_scene * _KEYFRAME_INTERVAL * 1e6) + 10_000_000
        tables["map"].append({"token": _token(rng), "log_tokens": [log["token"] for log in tables["log"]],
                              "category": "semantic_prior", "filename": "maps/synthetic_placeholder.png"})
        table_dir = root / self.version
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, rows in tables.items():
            (table_dir / f"{name}.json").write_text(json.dumps(rows, indent=0))
        (table_dir / "splits.json").write_text(json.dumps({SYNTHETIC_SPLIT: [s["name"] for s in tables["scene"]]}))
        return root

    def _write_scene(self, root: Path, tables: dict[str, list[dict]], name: str, timestamp: int,
                     rng: np.random.Generator, extra: np.random.Generator, lidar_sensor: str,
                     cam_sensors: dict[str, str], cat_tokens: dict[str, str]) -> None:
        """One scene: its calibrations, objects, keyframes (+ sweeps), camera images and annotations."""
        from pyquaternion import Quaternion

        r, n_key = self.randomization, self.samples_per_scene
        log_token, scene_token = _token(rng), _token(rng)
        tables["log"].append({"token": log_token, "logfile": name, "vehicle": "synth",
                              "date_captured": "2026-01-01", "location": "singapore-onenorth"})
        lidar_yaw = rng.uniform(*r.lidar_yaw)
        cs_lidar = {"token": _token(rng), "sensor_token": lidar_sensor, "translation": LIDAR_ORIGIN.tolist(),
                    "rotation": list(Quaternion(axis=[0, 0, 1], angle=lidar_yaw).elements), "camera_intrinsic": []}
        tables["calibrated_sensor"].append(cs_lidar)
        first_cs = _token(rng)
        cs_cams = {}
        for i, (channel, mount) in enumerate(self.cameras.items()):
            cs_cams[channel] = {"token": first_cs if i == 0 else _token(extra), "sensor_token": cam_sensors[channel],
                                "translation": list(mount.translation), "rotation": mount.rotation(),
                                "camera_intrinsic": mount.intrinsic(self.image_size)}
        tables["calibrated_sensor"] += list(cs_cams.values())
        objects, labels, speeds = self._objects(rng)
        buildings = self._buildings(rng)
        ego_xy, ego_yaw = rng.uniform(-500, 500, 2), rng.uniform(-np.pi, np.pi)
        ego_speed = rng.uniform(*r.ego_speed)
        # objects and buildings in the global frame: relative to the first ego pose
        rot0 = rot_z(ego_yaw)
        g_obj, g_bld = objects.copy(), buildings.copy()
        for g, local in ((g_obj, objects), (g_bld, buildings)):
            g[:, :2] = local[:, :2] @ rot0[:2, :2].T + ego_xy
            g[:, 6] = local[:, 6] + ego_yaw
        vel = speeds[:, None] * np.stack([np.cos(g_obj[:, 6]), np.sin(g_obj[:, 6])], -1)
        heading = np.array([np.cos(ego_yaw), np.sin(ego_yaw)])
        colours = np.concatenate([_CLASS_COLOURS[labels], np.full((len(buildings), 3), 150.0)])
        instances = [_token(rng) for _ in range(len(objects))]
        ann_tokens = [[_token(rng) for _ in range(len(objects))] for _ in range(n_key)]
        sample_tokens = [_token(rng) for _ in range(n_key)]
        lidar_sd = [_token(rng) for _ in range(n_key)]
        first_cam_sd = [_token(rng) for _ in range(n_key)]
        lidar_rows: list[dict] = []
        cam_rows: dict[str, list[dict]] = {c: [] for c in self.cameras}

        def frame(dt: float, key: bool, gen: np.random.Generator, k: int) -> tuple[dict, np.ndarray, np.ndarray]:
            """Ego pose, the LiDAR file and its sample_data row at ``dt`` s; returns (pose, boxes, hit)."""
            ts = timestamp + int(round(dt * 1e6))
            e_xy = ego_xy + ego_speed * dt * heading
            pose = {"token": _token(gen), "timestamp": ts, "translation": [float(e_xy[0]), float(e_xy[1]), 0.0],
                    "rotation": list(Quaternion(axis=[0, 0, 1], angle=ego_yaw).elements)}
            tables["ego_pose"].append(pose)
            g_now = g_obj.copy()
            g_now[:, :2] += vel * dt
            ego_boxes = np.concatenate([g_now, g_bld])  # -> the ego frame at this time
            ego_boxes[:, :2] = (ego_boxes[:, :2] - e_xy) @ rot0[:2, :2]
            ego_boxes[:, 6] -= ego_yaw
            cloud, hit = scan_lidar(gen, ego_boxes, lidar_yaw, r.azimuth_steps, r.dropout, r.range_noise)
            folder = "samples" if key else "sweeps"
            fname = f"{folder}/{self.lidar_channel}/{name}__{self.lidar_channel}__{ts}.pcd.bin"
            cloud.tofile(root / fname)
            lidar_rows.append({
                "token": lidar_sd[k] if key else _token(gen), "sample_token": sample_tokens[k],
                "ego_pose_token": pose["token"], "calibrated_sensor_token": cs_lidar["token"], "timestamp": ts,
                "fileformat": "pcd", "is_key_frame": key, "height": 0, "width": 0, "filename": fname})
            return pose, ego_boxes, hit

        for k in range(n_key):
            for j in range(self.sweeps, 0, -1):  # the sweeps since the previous keyframe, oldest first
                frame(_KEYFRAME_INTERVAL * k - SWEEP_INTERVAL * j, False, extra, k)
            dt = _KEYFRAME_INTERVAL * k
            pose, all_boxes, hit = frame(dt, True, rng, k)
            ts = pose["timestamp"]
            tables["sample"].append({"token": sample_tokens[k], "timestamp": ts,
                                     "prev": sample_tokens[k - 1] if k else "",
                                     "next": sample_tokens[k + 1] if k + 1 < n_key else "",
                                     "scene_token": scene_token})
            for i, (channel, mount) in enumerate(self.cameras.items()):
                cname = f"samples/{channel}/{name}__{channel}__{ts}.jpg"
                render_camera(root / cname, mount, self.image_size, all_boxes, colours, rng if i == 0 else extra)
                cam_rows[channel].append({
                    "token": first_cam_sd[k] if i == 0 else _token(extra), "sample_token": sample_tokens[k],
                    "ego_pose_token": pose["token"], "calibrated_sensor_token": cs_cams[channel]["token"],
                    "timestamp": ts, "fileformat": "jpg", "is_key_frame": True, "height": self.image_size[1],
                    "width": self.image_size[0], "filename": cname})
            num_pts = np.bincount(hit[hit >= 0], minlength=len(all_boxes))[: len(objects)]
            for j in range(len(objects)):
                tables["sample_annotation"].append({
                    "token": ann_tokens[k][j], "sample_token": sample_tokens[k], "instance_token": instances[j],
                    "visibility_token": "4", "attribute_tokens": [],
                    "translation": [float(v) for v in g_obj[j, :3] + np.r_[vel[j] * dt, 0.0]],
                    "size": [float(g_obj[j, 4]), float(g_obj[j, 3]), float(g_obj[j, 5])],
                    "rotation": list(Quaternion(axis=[0, 0, 1], angle=g_obj[j, 6]).elements),
                    "prev": ann_tokens[k - 1][j] if k else "",
                    "next": ann_tokens[k + 1][j] if k + 1 < n_key else "",
                    "num_lidar_pts": int(num_pts[j]), "num_radar_pts": 0})
            # the known boxes in this sample's LiDAR frame
            ego_boxes = all_boxes[: len(objects)]
            rot_l = rot_z(lidar_yaw)
            lid = ego_boxes.copy()
            lid[:, :3] = (ego_boxes[:, :3] - LIDAR_ORIGIN) @ rot_l  # R^T (p - t)
            lid[:, 6] = np.arctan2(np.sin(ego_boxes[:, 6] - lidar_yaw), np.cos(ego_boxes[:, 6] - lidar_yaw))
            v_lidar = vel @ (rot_z(ego_yaw) @ rot_l)[:2, :2]
            self.truth[sample_tokens[k]] = Boxes3D(lid, labels, velocity=v_lidar, tokens=ann_tokens[k])
        for rows in (lidar_rows, *cam_rows.values()):
            _link(rows)
            tables["sample_data"] += rows
        for j in range(len(objects)):
            tables["instance"].append({
                "token": instances[j], "category_token": cat_tokens[DETECTION_CLASSES[labels[j]]],
                "nbr_annotations": n_key, "first_annotation_token": ann_tokens[0][j],
                "last_annotation_token": ann_tokens[-1][j]})
        tables["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": n_key,
                                "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                                "name": name, "description": "vlsdk synthetic scene"})


def _token(rng: np.random.Generator) -> str:
    """A deterministic 32-hex-digit token."""
    return rng.bytes(16).hex()


def _link(rows: list[dict]) -> None:
    """Set ``prev``/``next`` of time-ordered sample_data rows of one sensor."""
    tokens = [""] + [row["token"] for row in rows] + [""]
    for i, row in enumerate(rows):
        row["prev"], row["next"] = tokens[i], tokens[i + 2]

"""Synthetic driving scenes written as a complete nuScenes-format dataset that nuscenes-devkit loads.

Each scene places randomly sized, posed and moving objects of the 10 detection classes on a flat
ground, drives the ego car forward, and ray-casts a 32-beam spinning LiDAR (and optionally a
front camera) against the ground and the boxes, so objects occlude each other and point density
falls off with range like a real sweep. Everything is randomised per scene: object counts and
classes, sizes (around nuScenes class means), poses, speeds, azimuth resolution (point density),
range noise, point dropout, the LiDAR's mounting yaw and a few unannotated background buildings.

The output has the devkit's 13 tables in ``<root>/<version>/``, ``samples/LIDAR_TOP/*.pcd.bin``
(5 float32 per point: x, y, z, intensity, ring), ``samples/CAM_FRONT/*.jpg`` and a placeholder
map PNG; annotation ``prev``/``next`` links make ``NuScenes.box_velocity`` work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlsdk_driving.sample import DETECTION_CLASSES, Boxes3D

__all__ = ["CLASS_SIZES", "CLASS_SPEEDS", "FINE_CATEGORY", "SceneRandomization", "NuScenesSceneSynthesizer",
           "raycast_boxes"]

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
_CLASS_COLOURS = np.array([[200, 40, 40], [40, 120, 200], [150, 90, 40], [220, 180, 30], [230, 120, 20],
                           [30, 180, 90], [160, 40, 160], [240, 240, 240], [255, 110, 0], [120, 120, 140]], float)
_LIDAR_HEIGHT = 1.84
_LIDAR_XY = (0.94, 0.0)
_CAMERA_POS = (1.70, 0.0, 1.51)
_CAMERA_ROT = (0.5, -0.5, 0.5, -0.5)  # camera x right, y down, z forward -> ego
_ELEVATIONS = np.deg2rad(np.linspace(-30.67, 10.67, 32))


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


def _rot_z(yaw: np.ndarray | float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def raycast_boxes(origin: np.ndarray, dirs: np.ndarray, boxes: np.ndarray,
                  max_range: float = 80.0) -> tuple[np.ndarray, np.ndarray]:
    """Cast rays against the ground plane ``z = 0`` and yaw-rotated boxes (all rays at once).

    Args:
        origin: ``(3,)`` ray origin.
        dirs: ``(R, 3)`` unit directions.
        boxes: ``(M, 7)`` ``x, y, z, l, w, h, yaw`` boxes in the same frame.
        max_range: hits farther than this are misses.

    Returns:
        ``(t, hit)``: ``(R,)`` distance to the nearest hit (``inf`` for none) and ``(R,)`` what was
        hit: the box index, ``-1`` for the ground, ``-2`` for nothing.
    """
    t = np.full(len(dirs), np.inf)
    hit = np.full(len(dirs), -2, dtype=np.int64)
    down = dirs[:, 2] < -1e-9
    tg = np.where(down, -origin[2] / np.where(down, dirs[:, 2], -1.0), np.inf)
    ground = (tg > 0) & (tg <= max_range)
    t[ground], hit[ground] = tg[ground], -1
    if len(boxes):
        c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
        o = origin[None, :] - boxes[:, :3]  # (M, 3)
        ol = np.stack([o[:, 0:1] * c + o[:, 1:2] * s, -o[:, 0:1] * s + o[:, 1:2] * c, o[:, 2:3]], -1)  # (M,1,3)
        dl = np.stack([dirs[None, :, 0] * c + dirs[None, :, 1] * s, -dirs[None, :, 0] * s + dirs[None, :, 1] * c,
                       np.broadcast_to(dirs[None, :, 2], (len(boxes), len(dirs)))], -1)  # (M, R, 3)
        half = boxes[:, None, 3:6] / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.where(np.abs(dl) < 1e-12, 1e-12, dl)
            t1, t2 = (-half - ol) * inv, (half - ol) * inv
        tmin = np.minimum(t1, t2).max(-1)
        tmax = np.maximum(t1, t2).min(-1)
        tb = np.where((tmax >= tmin) & (tmin > 0), tmin, np.inf)  # (M, R)
        best = tb.argmin(0)
        tbest = tb[best, np.arange(len(dirs))]
        closer = (tbest < t) & (tbest <= max_range)
        t[closer], hit[closer] = tbest[closer], best[closer]
    return t, hit


class NuScenesSceneSynthesizer:
    """Writes randomised synthetic scenes as a nuScenes-format dataset (registered ``driving.scenes``).

    Args:
        num_scenes: scenes to write.
        samples_per_scene: keyframes per scene, 0.5 s apart.
        version: the table folder name.
        lidar_channel: the LiDAR's channel name (a different rig can use another).
        camera_channel: a front camera's channel name, or ``None`` for no images.
        image_size: ``(width, height)`` of the camera images.
        randomization: the randomisation ranges.

    Example:
        >>> synth = NuScenesSceneSynthesizer(num_scenes=2, samples_per_scene=3)
        >>> dataset = synth(seed=0, root=tmp_path)  # doctest: +SKIP
        >>> len(dataset), synth.truth  # doctest: +SKIP
    """

    def __init__(self, num_scenes: int = 2, samples_per_scene: int = 3, *, version: str = "v1.0-mini",
                 lidar_channel: str = "LIDAR_TOP", camera_channel: str | None = "CAM_FRONT",
                 image_size: Sequence[int] = (320, 180), randomization: SceneRandomization | None = None) -> None:
        if not isinstance(num_scenes, int) or num_scenes < 1:
            raise ValueError(f"num_scenes must be an int >= 1, got {num_scenes!r}")
        if not isinstance(samples_per_scene, int) or samples_per_scene < 1:
            raise ValueError(f"samples_per_scene must be an int >= 1, got {samples_per_scene!r}")
        if len(image_size) != 2 or min(image_size) < 8:
            raise ValueError(f"image_size must be (width, height) >= 8 pixels, got {image_size!r}")
        self.num_scenes = num_scenes
        self.samples_per_scene = samples_per_scene
        self.version = version
        self.lidar_channel = lidar_channel
        self.camera_channel = camera_channel
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.randomization = randomization or SceneRandomization()
        #: sample token -> the boxes placed, in that sample's LiDAR frame (filled by :meth:`write`).
        self.truth: dict[str, Boxes3D] = {}

    def __call__(self, seed: int = 0, root: str | Path | None = None):
        """Write the dataset into ``root`` (see :meth:`write`) and open it with the nuScenes adapter.

        Args:
            seed: the random seed (same seed, same dataset).
            root: the output folder (created); ``None`` makes a new temporary folder, left for
                the caller to delete (``dataset.dataroot``).

        Returns:
            a :class:`vlsdk_driving.nuscenes_adapter.NuScenesDataset` over it.
        """
        import tempfile

        from vlsdk_driving.nuscenes_adapter import NuScenesDataset

        if root is None:
            root = tempfile.mkdtemp(prefix=f"vlsdk-driving-scenes-{seed}-")
        root = self.write(root, seed)
        cams = () if self.camera_channel is None else (self.camera_channel,)
        return NuScenesDataset(root, self.version, lidar_channel=self.lidar_channel, camera_channels=cams)

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
        from pyquaternion import Quaternion

        rng = np.random.default_rng(seed)
        root = Path(root)
        token = lambda: rng.bytes(16).hex()  # noqa: E731 - deterministic tokens
        r = self.randomization
        tables: dict[str, list[dict]] = {k: [] for k in (
            "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
            "scene", "sample", "sample_data", "sample_annotation", "map")}
        cat_tokens = {}
        for name in DETECTION_CLASSES:
            cat_tokens[name] = token()
            tables["category"].append({"token": cat_tokens[name], "name": FINE_CATEGORY[name],
                                       "description": f"synthetic {name}"})
        for i, level in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"), 1):
            tables["visibility"].append({"token": str(i), "level": level, "description": f"visibility {level}"})
        lidar_sensor, cam_sensor = token(), token()
        tables["sensor"].append({"token": lidar_sensor, "channel": self.lidar_channel, "modality": "lidar"})
        if self.camera_channel is not None:
            tables["sensor"].append({"token": cam_sensor, "channel": self.camera_channel, "modality": "camera"})
        w_img, h_img = self.image_size
        focal = w_img / 2 / np.tan(np.deg2rad(35))
        intrinsic = [[focal, 0.0, w_img / 2], [0.0, focal, h_img / 2], [0.0, 0.0, 1.0]]
        (root / "maps").mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.new("L", (1, 1)).save(root / "maps" / "synthetic_placeholder.png")
        lidar_dir = root / "samples" / self.lidar_channel
        lidar_dir.mkdir(parents=True, exist_ok=True)
        if self.camera_channel is not None:
            (root / "samples" / self.camera_channel).mkdir(parents=True, exist_ok=True)
        timestamp = 1_600_000_000_000_000 + int(rng.integers(0, 10**9))
        self.truth = {}
        for scene_i in range(self.num_scenes):
            log_token, scene_token = token(), token()
            tables["log"].append({"token": log_token, "logfile": f"synthetic-{seed}-{scene_i}", "vehicle": "synth",
                                  "date_captured": "2026-01-01", "location": "singapore-onenorth"})
            lidar_yaw = rng.uniform(*r.lidar_yaw)
            cs_lidar = {"token": token(), "sensor_token": lidar_sensor,
                        "translation": [_LIDAR_XY[0], _LIDAR_XY[1], _LIDAR_HEIGHT],
                        "rotation": list(Quaternion(axis=[0, 0, 1], angle=lidar_yaw).elements), "camera_intrinsic": []}
            tables["calibrated_sensor"].append(cs_lidar)
            cs_cam = {"token": token(), "sensor_token": cam_sensor, "translation": list(_CAMERA_POS),
                      "rotation": list(_CAMERA_ROT), "camera_intrinsic": intrinsic}
            if self.camera_channel is not None:
                tables["calibrated_sensor"].append(cs_cam)
            objects, labels, speeds = self._objects(rng)
            buildings = self._buildings(rng)
            ego_xy, ego_yaw = rng.uniform(-500, 500, 2), rng.uniform(-np.pi, np.pi)
            ego_speed = rng.uniform(*r.ego_speed)
            # objects in the global frame: relative to the first ego pose
            rot0 = _rot_z(ego_yaw)
            g_obj = objects.copy()
            g_obj[:, :2] = objects[:, :2] @ rot0[:2, :2].T + ego_xy
            g_obj[:, 6] = objects[:, 6] + ego_yaw
            g_bld = buildings.copy()
            g_bld[:, :2] = buildings[:, :2] @ rot0[:2, :2].T + ego_xy
            g_bld[:, 6] = buildings[:, 6] + ego_yaw
            vel = speeds[:, None] * np.stack([np.cos(g_obj[:, 6]), np.sin(g_obj[:, 6])], -1)
            instances = [token() for _ in range(len(objects))]
            ann_tokens = [[token() for _ in range(len(objects))] for _ in range(self.samples_per_scene)]
            sample_tokens = [token() for _ in range(self.samples_per_scene)]
            lidar_sd = [token() for _ in range(self.samples_per_scene)]
            cam_sd = [token() for _ in range(self.samples_per_scene)]
            for k in range(self.samples_per_scene):
                dt = 0.5 * k
                ts = timestamp + int(dt * 1e6)
                e_yaw = ego_yaw
                e_xy = ego_xy + ego_speed * dt * np.array([np.cos(e_yaw), np.sin(e_yaw)])
                pose = {"token": token(), "timestamp": ts, "translation": [float(e_xy[0]), float(e_xy[1]), 0.0],
                        "rotation": list(Quaternion(axis=[0, 0, 1], angle=e_yaw).elements)}
                tables["ego_pose"].append(pose)
                # boxes at this time, in the ego frame
                g_now = g_obj.copy()
                g_now[:, :2] += vel * dt
                inv = _rot_z(-e_yaw)
                ego_boxes = g_now.copy()
                ego_boxes[:, :2] = (g_now[:, :2] - e_xy) @ inv[:2, :2].T
                ego_boxes[:, 6] = g_now[:, 6] - e_yaw
                ego_bld = g_bld.copy()
                ego_bld[:, :2] = (g_bld[:, :2] - e_xy) @ inv[:2, :2].T
                ego_bld[:, 6] = g_bld[:, 6] - e_yaw
                all_boxes = np.concatenate([ego_boxes, ego_bld])
                # the LiDAR sweep
                n_az = int(rng.integers(r.azimuth_steps[0], r.azimuth_steps[1] + 1))
                az = np.linspace(-np.pi, np.pi, n_az, endpoint=False) + rng.uniform(0, 2 * np.pi / n_az)
                el, azg = np.meshgrid(_ELEVATIONS, az, indexing="ij")
                d_lidar = np.stack([np.cos(el) * np.cos(azg), np.cos(el) * np.sin(azg), np.sin(el)], -1).reshape(-1, 3)
                ring = np.repeat(np.arange(len(_ELEVATIONS)), n_az).astype(np.float32)
                rot_l = _rot_z(lidar_yaw)
                origin = np.array([_LIDAR_XY[0], _LIDAR_XY[1], _LIDAR_HEIGHT])
                t, hit = raycast_boxes(origin, d_lidar @ rot_l.T, all_boxes)
                keep = (hit > -2) & (rng.random(len(t)) >= rng.uniform(*r.dropout))
                t = t + rng.normal(0, rng.uniform(*r.range_noise), len(t))
                pts = d_lidar[keep] * t[keep, None]
                hit = hit[keep]
                obj_int = rng.uniform(20, 120, len(all_boxes))
                intensity = np.where(hit >= 0, obj_int[np.maximum(hit, 0)], rng.uniform(2, 15, len(hit)))
                cloud = np.concatenate([pts, intensity[:, None], ring[keep, None]], 1).astype(np.float32)
                fname = f"samples/{self.lidar_channel}/synthetic-{seed}-{scene_i}__{self.lidar_channel}__{ts}.pcd.bin"
                cloud.tofile(root / fname)
                num_pts = np.bincount(hit[hit >= 0], minlength=len(all_boxes))[: len(objects)]
                tables["sample"].append({"token": sample_tokens[k], "timestamp": ts,
                                         "prev": sample_tokens[k - 1] if k else "",
                                         "next": sample_tokens[k + 1] if k + 1 < self.samples_per_scene else "",
                                         "scene_token": scene_token})
                tables["sample_data"].append({
                    "token": lidar_sd[k], "sample_token": sample_tokens[k], "ego_pose_token": pose["token"],
                    "calibrated_sensor_token": cs_lidar["token"], "timestamp": ts, "fileformat": "pcd",
                    "is_key_frame": True, "height": 0, "width": 0, "filename": fname,
                    "prev": lidar_sd[k - 1] if k else "",
                    "next": lidar_sd[k + 1] if k + 1 < self.samples_per_scene else ""})
                if self.camera_channel is not None:
                    cname = f"samples/{self.camera_channel}/synthetic-{seed}-{scene_i}__{self.camera_channel}__{ts}.jpg"
                    self._render_camera(root / cname, all_boxes, labels, intrinsic, rng)
                    tables["sample_data"].append({
                        "token": cam_sd[k], "sample_token": sample_tokens[k], "ego_pose_token": pose["token"],
                        "calibrated_sensor_token": cs_cam["token"], "timestamp": ts, "fileformat": "jpg",
                        "is_key_frame": True, "height": h_img, "width": w_img, "filename": cname,
                        "prev": cam_sd[k - 1] if k else "",
                        "next": cam_sd[k + 1] if k + 1 < self.samples_per_scene else ""})
                for j in range(len(objects)):
                    w, length, h = g_now[j, 4], g_now[j, 3], g_now[j, 5]
                    tables["sample_annotation"].append({
                        "token": ann_tokens[k][j], "sample_token": sample_tokens[k], "instance_token": instances[j],
                        "visibility_token": "4", "attribute_tokens": [],
                        "translation": [float(g_now[j, 0]), float(g_now[j, 1]), float(g_now[j, 2])],
                        "size": [float(w), float(length), float(h)],
                        "rotation": list(Quaternion(axis=[0, 0, 1], angle=g_now[j, 6]).elements),
                        "prev": ann_tokens[k - 1][j] if k else "",
                        "next": ann_tokens[k + 1][j] if k + 1 < self.samples_per_scene else "",
                        "num_lidar_pts": int(num_pts[j]), "num_radar_pts": 0})
                # the known boxes in this sample's LiDAR frame
                lid = ego_boxes.copy()
                lid[:, :3] = (ego_boxes[:, :3] - origin) @ rot_l  # R^T (p - t)
                lid[:, 6] = np.arctan2(np.sin(ego_boxes[:, 6] - lidar_yaw), np.cos(ego_boxes[:, 6] - lidar_yaw))
                v_lidar = vel @ (_rot_z(e_yaw) @ rot_l)[:2, :2]
                self.truth[sample_tokens[k]] = Boxes3D(lid, labels, velocity=v_lidar, tokens=ann_tokens[k])
            for j in range(len(objects)):
                tables["instance"].append({"token": instances[j], "category_token": cat_tokens[
                    DETECTION_CLASSES[labels[j]]], "nbr_annotations": self.samples_per_scene,
                    "first_annotation_token": ann_tokens[0][j], "last_annotation_token": ann_tokens[-1][j]})
            tables["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": self.samples_per_scene,
                                    "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                                    "name": f"synthetic-{seed}-{scene_i}", "description": "vlsdk synthetic scene"})
            timestamp += int(self.samples_per_scene * 0.5e6) + 10_000_000
        tables["map"].append({"token": token(), "log_tokens": [log["token"] for log in tables["log"]],
                              "category": "semantic_prior", "filename": "maps/synthetic_placeholder.png"})
        table_dir = root / self.version
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, rows in tables.items():
            (table_dir / f"{name}.json").write_text(json.dumps(rows, indent=0))
        return root

    def _render_camera(self, path: Path, boxes: np.ndarray, labels: np.ndarray, intrinsic: list[list[float]],
                       rng: np.random.Generator) -> None:
        """Ray-cast the front camera: shaded ground, class-coloured boxes, grey buildings, sky."""
        from PIL import Image

        w, h = self.image_size
        k = np.array(intrinsic)
        u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        d_cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        d_cam /= np.linalg.norm(d_cam, axis=1, keepdims=True)
        from pyquaternion import Quaternion

        d_ego = d_cam @ Quaternion(_CAMERA_ROT).rotation_matrix.T
        origin = np.array(_CAMERA_POS)
        colours = np.concatenate([_CLASS_COLOURS[labels], np.full((len(boxes) - len(labels), 3), 150.0)])
        ahead = boxes[:, 0] + np.hypot(boxes[:, 3], boxes[:, 4]) / 2 > origin[0]  # only boxes the camera can see
        t, hit = raycast_boxes(origin, d_ego, boxes[ahead], max_range=120.0)
        hit = np.where(hit >= 0, np.flatnonzero(ahead)[np.maximum(hit, 0)], hit)
        p = origin + d_ego * np.where(np.isfinite(t), t, 0)[:, None]
        checker = ((np.floor(p[:, 0] / 2) + np.floor(p[:, 1] / 2)) % 2)[:, None]
        img = np.tile([[150.0, 190.0, 235.0]], (len(t), 1))  # sky
        ground = hit == -1
        img[ground] = (70 + 25 * checker[ground]) * np.ones(3)
        obj = hit >= 0
        shade = 1.0 - 0.6 * np.clip(t[obj] / 80.0, 0, 1)
        img[obj] = colours[hit[obj]] * shade[:, None]
        img += rng.normal(0, 3, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8).reshape(h, w, 3)).save(path, quality=90)

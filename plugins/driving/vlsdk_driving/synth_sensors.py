"""The synthetic sensor rig of :class:`~vlsdk_driving.synth.NuScenesSceneSynthesizer`.

A 32-beam spinning LiDAR on the roof and up to six cameras mounted like the nuScenes rig
(positions and headings of its ``calibrated_sensor`` records, rounded), each ray-cast against the
ground plane and the scene's boxes with :func:`raycast_boxes` (all rays at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CameraMount", "NUSCENES_CAMERAS", "LIDAR_ORIGIN", "ELEVATIONS", "raycast_boxes", "scan_lidar",
           "render_camera", "rot_z"]

#: The LiDAR's position on the car (ego frame), metres.
LIDAR_ORIGIN = np.array([0.94, 0.0, 1.84])
#: Elevation angles of the 32 beams, radians.
ELEVATIONS = np.deg2rad(np.linspace(-30.67, 10.67, 32))
#: Camera axes (x right, y down, z forward) to a forward-looking ego frame (x forward, y left, z up).
_CAMERA_AXES = (0.5, -0.5, 0.5, -0.5)


@dataclass(frozen=True)
class CameraMount:
    """Where a camera sits on the car and what it sees.

    Args:
        translation: ``(x, y, z)`` in the ego frame, metres.
        yaw: heading of the optical axis in the ego frame, degrees (0 ahead, 90 left).
        fov: horizontal field of view, degrees.
    """

    translation: tuple[float, float, float]
    yaw: float
    fov: float = 70.0

    def rotation(self) -> list[float]:
        """The camera-to-ego rotation as a ``(w, x, y, z)`` quaternion (nuScenes' convention)."""
        from pyquaternion import Quaternion

        q = Quaternion(axis=[0, 0, 1], angle=np.deg2rad(self.yaw)) * Quaternion(_CAMERA_AXES)
        return [float(x) for x in q.elements]

    def intrinsic(self, image_size: Sequence[int]) -> list[list[float]]:
        """The 3x3 pinhole matrix for a ``(width, height)`` image (square pixels, centred)."""
        w, h = image_size
        focal = w / 2 / np.tan(np.deg2rad(self.fov / 2))
        return [[focal, 0.0, w / 2], [0.0, focal, h / 2], [0.0, 0.0, 1.0]]


#: The six nuScenes cameras, in the order of the devkit's rendering.
NUSCENES_CAMERAS: dict[str, CameraMount] = {
    "CAM_FRONT": CameraMount((1.70, 0.0, 1.51), 0.0),
    "CAM_FRONT_RIGHT": CameraMount((1.55, -0.49, 1.50), -55.0),
    "CAM_BACK_RIGHT": CameraMount((1.02, -0.48, 1.56), -110.0),
    "CAM_BACK": CameraMount((0.03, 0.0, 1.58), 180.0, fov=90.0),
    "CAM_BACK_LEFT": CameraMount((1.04, 0.49, 1.59), 110.0),
    "CAM_FRONT_LEFT": CameraMount((1.52, 0.49, 1.51), 55.0),
}


def rot_z(yaw: np.ndarray | float) -> np.ndarray:
    """``(3, 3)`` rotation about ``z`` by ``yaw`` radians."""
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


def scan_lidar(rng: np.random.Generator, boxes: np.ndarray, lidar_yaw: float, azimuth_steps: tuple[int, int],
               dropout: tuple[float, float], range_noise: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """One LiDAR sweep of boxes given in the ego frame.

    Args:
        rng: the generator (azimuth resolution and offset, dropout, range noise, intensities).
        boxes: ``(M, 7)`` boxes in the ego frame (annotated objects first, then buildings).
        lidar_yaw: the LiDAR's mounting yaw on the car, radians.
        azimuth_steps: ``(low, high)`` rays per beam per turn.
        dropout: ``(low, high)`` of the fraction of returns dropped.
        range_noise: ``(low, high)`` of the range noise's standard deviation, metres.

    Returns:
        ``(cloud, hit)``: ``(N, 5)`` float32 ``x, y, z, intensity, ring`` in the LiDAR frame and
        ``(N,)`` the box index each point hit (``-1``: the ground).
    """
    n_az = int(rng.integers(azimuth_steps[0], azimuth_steps[1] + 1))
    az = np.linspace(-np.pi, np.pi, n_az, endpoint=False) + rng.uniform(0, 2 * np.pi / n_az)
    el, azg = np.meshgrid(ELEVATIONS, az, indexing="ij")
    d_lidar = np.stack([np.cos(el) * np.cos(azg), np.cos(el) * np.sin(azg), np.sin(el)], -1).reshape(-1, 3)
    ring = np.repeat(np.arange(len(ELEVATIONS)), n_az).astype(np.float32)
    t, hit = raycast_boxes(LIDAR_ORIGIN, d_lidar @ rot_z(lidar_yaw).T, boxes)
    keep = (hit > -2) & (rng.random(len(t)) >= rng.uniform(*dropout))
    t = t + rng.normal(0, rng.uniform(*range_noise), len(t))
    pts = d_lidar[keep] * t[keep, None]
    hit = hit[keep]
    obj_int = rng.uniform(20, 120, len(boxes))
    intensity = np.where(hit >= 0, obj_int[np.maximum(hit, 0)], rng.uniform(2, 15, len(hit)))
    return np.concatenate([pts, intensity[:, None], ring[keep, None]], 1).astype(np.float32), hit


def render_camera(path: Path, mount: CameraMount, image_size: Sequence[int], boxes: np.ndarray,
                  colours: np.ndarray, rng: np.random.Generator) -> None:
    """Ray-cast one camera into a JPEG: shaded ground, coloured boxes, sky, a little noise.

    Args:
        path: the JPEG to write.
        mount: the camera's mount.
        image_size: ``(width, height)``.
        boxes: ``(M, 7)`` boxes in the ego frame.
        colours: ``(M, 3)`` RGB per box.
        rng: the generator of the pixel noise.
    """
    from PIL import Image
    from pyquaternion import Quaternion

    w, h = image_size
    k = np.array(mount.intrinsic(image_size))
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d_cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    d_cam /= np.linalg.norm(d_cam, axis=1, keepdims=True)
    rot = Quaternion(mount.rotation()).rotation_matrix  # camera -> ego
    d_ego = d_cam @ rot.T
    origin = np.array(mount.translation)
    depth = (boxes[:, :3] - origin) @ rot[:, 2]  # along the optical axis
    ahead = depth + np.linalg.norm(boxes[:, 3:6], axis=1) / 2 > 0  # only boxes the camera can see
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

"""The sample type every driving adapter produces: a LiDAR sweep, 3D boxes and camera views.

Everything is expressed in the LiDAR sensor frame of the keyframe (x forward, y left, z up for
nuScenes' LIDAR_TOP after its mounting rotation; KITTI's Velodyne frame is the same convention).
Boxes are ``(x, y, z, l, w, h, yaw)`` with ``(x, y, z)`` the box centre, ``l`` the extent along
the heading, ``w`` across it, ``h`` vertical, and ``yaw`` the heading angle about ``+z`` from
``+x`` (radians), the mmdetection3d LiDAR-box convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DETECTION_CLASSES", "Boxes3D", "CameraView", "DrivingSample", "class_index"]

#: The 10 nuScenes detection classes, in the order used for class ids everywhere in the plugin.
DETECTION_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "trailer",
    "bus",
    "construction_vehicle",
    "bicycle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "barrier",
)


def class_index(name: str) -> int:
    """The id of a nuScenes detection class name.

    Args:
        name: one of :data:`DETECTION_CLASSES`.

    Raises:
        ValueError: unknown class name.

    Example:
        >>> class_index("pedestrian")
        7
    """
    try:
        return DETECTION_CLASSES.index(name)
    except ValueError:
        raise ValueError(f"unknown detection class {name!r}; classes: {DETECTION_CLASSES}") from None


@dataclass
class Boxes3D:
    """A set of ``n`` 3D boxes in the LiDAR frame (numpy, float64 geometry).

    Args:
        boxes: ``(n, 7)`` ``x, y, z, l, w, h, yaw`` (centre, size, heading).
        labels: ``(n,)`` int class ids into :data:`DETECTION_CLASSES`.
        scores: ``(n,)`` confidences for predictions; ``None`` for ground truth.
        velocity: ``(n, 2)`` ``vx, vy`` in m/s (LiDAR frame), ``nan`` where unknown; ``None``
            when not given.
        tokens: ``n`` annotation tokens (ground truth from a table), else empty.

    Example:
        >>> b = Boxes3D(np.array([[1.0, 2, 0, 4, 2, 1.5, 0]]), np.array([0]))
        >>> len(b), b.centers.shape
        (1, (1, 3))
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    velocity: np.ndarray | None = None
    tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 7)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.labels) != n:
            raise ValueError(f"expected {n} labels for {n} boxes, got {len(self.labels)}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(DETECTION_CLASSES)):
            raise ValueError(f"labels must be in [0, {len(DETECTION_CLASSES)}), got {self.labels}")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(self.scores) != n:
                raise ValueError(f"expected {n} scores, got {len(self.scores)}")
        if self.velocity is not None:
            self.velocity = np.asarray(self.velocity, dtype=np.float64).reshape(-1, 2)
            if len(self.velocity) != n:
                raise ValueError(f"expected {n} velocities, got {len(self.velocity)}")
        if self.tokens and len(self.tokens) != n:
            raise ValueError(f"expected {n} tokens, got {len(self.tokens)}")

    @classmethod
    def empty(cls) -> Boxes3D:
        """No boxes."""
        return cls(np.zeros((0, 7)), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def centers(self) -> np.ndarray:
        """``(n, 3)`` box centres."""
        return self.boxes[:, :3]

    @property
    def lwh(self) -> np.ndarray:
        """``(n, 3)`` length, width, height."""
        return self.boxes[:, 3:6]

    @property
    def yaw(self) -> np.ndarray:
        """``(n,)`` heading angles."""
        return self.boxes[:, 6]

    @property
    def names(self) -> list[str]:
        """Class names of the boxes."""
        return [DETECTION_CLASSES[i] for i in self.labels]

    def select(self, mask: np.ndarray) -> Boxes3D:
        """The boxes where the boolean or index array ``mask`` selects.

        Args:
            mask: boolean ``(n,)`` mask or integer indices.
        """
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, dtype=np.int64)
        return Boxes3D(
            self.boxes[idx],
            self.labels[idx],
            None if self.scores is None else self.scores[idx],
            None if self.velocity is None else self.velocity[idx],
            [self.tokens[i] for i in idx] if self.tokens else [],
        )

    def corners(self) -> np.ndarray:
        """``(n, 8, 3)`` corners: the 4 bottom corners counter-clockwise, then the 4 top ones."""
        x = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
        y = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
        z = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5
        local = np.stack([x, y, z], -1)[None] * self.lwh[:, None, :]
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        rx = local[..., 0] * c - local[..., 1] * s
        ry = local[..., 0] * s + local[..., 1] * c
        return np.stack([rx, ry, local[..., 2]], -1) + self.centers[:, None, :]

    def points_inside(self, points: np.ndarray) -> np.ndarray:
        """``(n, m)`` boolean: whether each of ``m`` points ``(m, >=3)`` lies inside each box."""
        pts = np.asarray(points)[:, :3]
        d = pts[None, :, :] - self.centers[:, None, :]
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        lx = d[..., 0] * c + d[..., 1] * s
        ly = -d[..., 0] * s + d[..., 1] * c
        half = self.lwh[:, None, :] / 2
        return (np.abs(lx) <= half[..., 0]) & (np.abs(ly) <= half[..., 1]) & (np.abs(d[..., 2]) <= half[..., 2])


@dataclass
class CameraView:
    """One camera of a sample, with the transforms to project LiDAR points into it.

    Args:
        channel: sensor channel, e.g. ``"CAM_FRONT"`` (``"image_2"`` for KITTI).
        image_path: the image file.
        intrinsic: ``(3, 3)`` camera matrix ``K``.
        lidar_to_camera: ``(4, 4)`` transform from the sample's LiDAR frame to this camera's frame
            (``z`` along the optical axis), so that ``K @ (T @ p)[:3]`` is the pixel times depth.
        image_size: ``(width, height)`` in pixels.
        token: the camera's sample_data token (nuScenes) or the frame id.
    """

    channel: str
    image_path: Path
    intrinsic: np.ndarray
    lidar_to_camera: np.ndarray
    image_size: tuple[int, int]
    token: str = ""

    def load_image(self) -> np.ndarray:
        """The image as ``(H, W, 3)`` uint8 RGB."""
        from PIL import Image

        with Image.open(self.image_path) as im:
            return np.array(im.convert("RGB"))


@dataclass
class DrivingSample:
    """One annotated moment of a drive: LiDAR points, 3D boxes and camera views.

    Args:
        token: the sample token (nuScenes) or frame id (KITTI).
        points: ``(N, C)`` float32 points in the LiDAR frame; columns named by ``point_fields``.
        boxes: the ground-truth boxes in the LiDAR frame.
        cameras: the camera views, by channel.
        point_fields: names of the point columns, starting with ``x, y, z``.
        lidar_path: the keyframe's point-cloud file.
        source: ``"nuscenes"``, ``"kitti"`` or ``"synthetic"``.
        timestamp: microseconds (nuScenes) or 0.
    """

    token: str
    points: np.ndarray
    boxes: Boxes3D
    cameras: dict[str, CameraView] = field(default_factory=dict)
    point_fields: tuple[str, ...] = ("x", "y", "z", "intensity")
    lidar_path: Path | None = None
    source: str = ""
    timestamp: int = 0

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32)
        if self.points.ndim != 2 or self.points.shape[1] != len(self.point_fields):
            raise ValueError(f"sample {self.token}: expected points of shape (N, {len(self.point_fields)}) for "
                             f"fields {self.point_fields}, got {self.points.shape}")

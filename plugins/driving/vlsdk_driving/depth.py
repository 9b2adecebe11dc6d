"""Camera depth from LiDAR: projection into images, sparse depth targets, AbsRel, RMSE and delta < 1.25.

LiDAR points projected into a camera give a sparse depth map (0 = no measurement), the target
format of the core :class:`vlsdk.heads.DepthHead`. Where several points fall on one pixel the
nearest wins (a scatter-min, no loop over points).
"""

from __future__ import annotations

import numpy as np
import torch

from vlsdk_driving.sample import CameraView

__all__ = ["project_points", "sparse_depth_map", "abs_rel", "rmse", "DepthMetrics"]


def project_points(points: np.ndarray | torch.Tensor, camera: CameraView,
                   min_depth: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project LiDAR-frame points into a camera image.

    Args:
        points: ``(N, >=3)`` points in the sample's LiDAR frame.
        camera: the camera view (intrinsic, LiDAR-to-camera transform, image size).
        min_depth: points closer than this along the optical axis are not visible.

    Returns:
        ``(uv, depth, visible)``: ``(N, 2)`` pixel coordinates ``(u, v)``, ``(N,)`` depth along the
        optical axis, and ``(N,)`` bool, true where ``depth >= min_depth`` and the pixel lies
        inside the image.

    Example:
        >>> uv, depth, visible = project_points(sample.points, sample.cameras["CAM_FRONT"])  # doctest: +SKIP
    """
    if min_depth <= 0:
        raise ValueError(f"min_depth must be > 0, got {min_depth}")
    pts = torch.as_tensor(points)
    if pts.dim() != 2 or pts.shape[1] < 3:
        raise ValueError(f"expected points of shape (N, >=3), got {tuple(pts.shape)}")
    xyz = pts[:, :3].double()
    t = torch.as_tensor(camera.lidar_to_camera, dtype=torch.float64)
    k = torch.as_tensor(camera.intrinsic, dtype=torch.float64)
    cam = xyz @ t[:3, :3].T + t[:3, 3]
    depth = cam[:, 2]
    pix = cam @ k.T
    uv = pix[:, :2] / depth.clamp(min=1e-6)[:, None]
    w, h = camera.image_size
    visible = (depth >= min_depth) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    return uv.float(), depth.float(), visible


def sparse_depth_map(points: np.ndarray | torch.Tensor, camera: CameraView, size: tuple[int, int] | None = None,
                     min_depth: float = 1.0) -> torch.Tensor:
    """A sparse ``(H, W)`` depth map from LiDAR points: nearest depth per pixel, 0 elsewhere.

    Args:
        points: ``(N, >=3)`` points in the LiDAR frame.
        camera: the camera to project into.
        size: ``(H, W)`` of the map; pixels are scaled from the camera's image size (default: the
            camera's own ``(height, width)``).
        min_depth: see :func:`project_points`.

    Example:
        >>> target = sparse_depth_map(sample.points, sample.cameras["CAM_FRONT"], (225, 400))  # doctest: +SKIP
    """
    w0, h0 = camera.image_size
    h, w = (h0, w0) if size is None else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive (H, W), got {size}")
    uv, depth, visible = project_points(points, camera, min_depth)
    uv, depth = uv[visible], depth[visible]
    col = (uv[:, 0] * (w / w0)).long().clamp_(0, w - 1)
    row = (uv[:, 1] * (h / h0)).long().clamp_(0, h - 1)
    flat = torch.full((h * w,), float("inf"))
    flat.scatter_reduce_(0, row * w + col, depth, reduce="amin")
    flat[torch.isinf(flat)] = 0.0
    return flat.view(h, w)


def _valid(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"expected pred and target of the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    mask = (target > 0) & torch.isfinite(target)
    return pred[mask].double(), target[mask].double()


def abs_rel(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean ``|pred - target| / target`` over pixels with a measurement (``target > 0``).

    Args:
        pred: predicted depth.
        target: sparse target depth of the same shape, 0 = no measurement.

    Example:
        >>> abs_rel(torch.tensor([2.0, 5.0]), torch.tensor([4.0, 0.0]))
        0.5
    """
    p, t = _valid(pred, target)
    return float(((p - t).abs() / t).mean()) if len(t) else float("nan")


def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Root mean squared depth error over pixels with a measurement (``target > 0``).

    Args:
        pred: predicted depth.
        target: sparse target depth of the same shape, 0 = no measurement.

    Example:
        >>> rmse(torch.tensor([2.0, 5.0]), torch.tensor([4.0, 0.0]))
        2.0
    """
    p, t = _valid(pred, target)
    return float(((p - t) ** 2).mean().sqrt()) if len(t) else float("nan")


class DepthMetrics:
    """AbsRel, RMSE and delta < 1.25 over every measured pixel of many images (registered ``driving.depth``).

    ``delta1`` is the share of measured pixels where ``max(pred / target, target / pred) < 1.25``.

    Example:
        >>> m = DepthMetrics()
        >>> m.update(torch.tensor([2.0, 5.0]), torch.tensor([4.0, 0.0]))
        >>> m.compute()
        {'abs_rel': 0.5, 'rmse': 2.0, 'delta1': 0.0, 'pixels': 1}
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._abs_rel = 0.0
        self._sq = 0.0
        self._within = 0
        self._n = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions and sparse targets (same shape, 0 = no measurement).

        Args:
            pred: predicted depth.
            target: sparse target depth.
        """
        p, t = _valid(pred.detach().cpu(), target.detach().cpu())
        self._abs_rel += float(((p - t).abs() / t).sum())
        self._sq += float(((p - t) ** 2).sum())
        self._within += int((torch.maximum(p / t, t / p) < 1.25).sum())
        self._n += len(t)

    def compute(self) -> dict[str, float]:
        """``{"abs_rel", "rmse", "delta1", "pixels"}`` over everything accumulated (``nan`` without pixels)."""
        if not self._n:
            return {"abs_rel": float("nan"), "rmse": float("nan"), "delta1": float("nan"), "pixels": 0}
        return {"abs_rel": self._abs_rel / self._n, "rmse": (self._sq / self._n) ** 0.5,
                "delta1": self._within / self._n, "pixels": self._n}

"""Pictures of driving predictions for people: BEV boxes over the LiDAR points, LiDAR depth over a camera image.

Drawing is kept apart from training and evaluation; matplotlib is imported only here, inside the
functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlsdk_driving.bev import BEVGrid
from vlsdk_driving.sample import Boxes3D, DrivingSample

if TYPE_CHECKING:
    import torch

__all__ = ["render_bev", "render_bev_panels", "render_camera_depth", "render_depth_panels"]


def _box_outline(boxes: Boxes3D) -> np.ndarray:
    corners = boxes.corners()[:, :4, :2]
    return np.concatenate([corners, corners[:, :1]], 1)


def render_bev(sample: DrivingSample, predictions: Boxes3D | None, path: str | Path,
               grid: BEVGrid | None = None, title: str = "") -> Path:
    """Write a BEV PNG of one sample (see :func:`render_bev_panels`).

    Args:
        sample: the sample.
        predictions: predicted boxes or ``None``.
        path: the PNG to write.
        grid: the extent to show (default: the points' extent).
        title: the figure title.
    """
    return render_bev_panels([sample], [predictions], path, grid, [title])


def render_bev_panels(samples: Sequence[DrivingSample], predictions: Sequence[Boxes3D | None], path: str | Path,
                      grid: BEVGrid | None = None, titles: Sequence[str] | None = None) -> Path:
    """Write a BEV PNG, one panel per sample: LiDAR points (by height), ground truth (green), predictions (red).

    Args:
        samples: the samples.
        predictions: predicted boxes (or ``None``) per sample.
        path: the PNG to write.
        grid: the extent to show (default: the points' extent).
        titles: a title per panel (default: the sample's source and token).

    Raises:
        ValueError: no samples, or not one prediction entry per sample.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not samples or len(predictions) != len(samples):
        raise ValueError(f"expected one prediction entry per sample, got {len(predictions)} for {len(samples)}")
    fig, axes = plt.subplots(1, len(samples), figsize=(8 * len(samples), 8), dpi=100, squeeze=False)
    for k, (ax, sample, pred) in enumerate(zip(axes[0], samples, predictions, strict=True)):
        pts = sample.points
        ax.scatter(pts[:, 0], pts[:, 1], s=0.3, c=pts[:, 2], cmap="viridis", vmin=-3, vmax=2, linewidths=0)
        for outline in _box_outline(sample.boxes):
            ax.plot(outline[:, 0], outline[:, 1], color="lime", lw=1.2)
        if pred is not None and len(pred):
            for outline, score in zip(_box_outline(pred), pred.scores, strict=True):
                ax.plot(outline[:, 0], outline[:, 1], color="red", lw=1.0, alpha=float(np.clip(score, 0.3, 1)))
        if grid is not None:
            ax.set_xlim(*grid.x_range)
            ax.set_ylim(*grid.y_range)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        title = titles[k] if titles is not None and k < len(titles) else ""
        ax.set_title(title or f"{sample.source} {sample.token[:12]}: ground truth (green), predictions (red)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def render_camera_depth(sample: DrivingSample, channel: str, path: str | Path) -> Path:
    """Write the camera image with the projected LiDAR points coloured by depth.

    Args:
        sample: the sample.
        channel: the camera channel.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlsdk_driving.depth import project_points

    if channel not in sample.cameras:
        raise ValueError(f"sample {sample.token} has no camera {channel!r}; cameras: {sorted(sample.cameras)}")
    cam = sample.cameras[channel]
    uv, depth, visible = project_points(sample.points, cam)
    w, h = cam.image_size
    fig, ax = plt.subplots(figsize=(10, 10 * h / w), dpi=100)
    ax.imshow(cam.load_image())
    sc = ax.scatter(uv[visible, 0], uv[visible, 1], c=depth[visible], s=2, cmap="turbo", vmin=0, vmax=60,
                    linewidths=0)
    fig.colorbar(sc, ax=ax, fraction=0.03, label="LiDAR depth (m)")
    ax.set_axis_off()
    ax.set_title(f"{channel}: {int(visible.sum())} projected LiDAR points")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def render_depth_panels(images: Sequence[torch.Tensor], depths: torch.Tensor, targets: Sequence[torch.Tensor],
                        path: str | Path, max_depth: float = 80.0) -> Path:
    """Write a PNG, one row per image: the camera image, the predicted depth, the sparse LiDAR depth.

    Args:
        images: ``(3, H, W)`` images in ``[0, 1]``.
        depths: ``(B, 1, H, W)`` predicted depth, metres.
        targets: ``(1, H, W)`` sparse LiDAR depth per image (0 = no measurement).
        path: the PNG to write.
        max_depth: the top of the colour scale, metres.

    Raises:
        ValueError: no images, or not one depth map and target per image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not len(images) or len(depths) != len(images) or len(targets) != len(images):
        raise ValueError(f"expected a depth map and a target per image, got {len(images)} images, "
                         f"{len(depths)} depth maps, {len(targets)} targets")
    fig, axes = plt.subplots(len(images), 3, figsize=(12, 2.6 * len(images)), dpi=100, squeeze=False)
    for row, image, depth, target in zip(axes, images, depths, targets, strict=True):
        row[0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        row[1].imshow(depth[0].numpy(), cmap="turbo", vmin=0, vmax=max_depth)
        sparse = np.ma.masked_equal(target[0].numpy(), 0.0)
        row[2].imshow(np.zeros(sparse.shape), cmap="gray", vmin=0, vmax=1)
        row[2].imshow(sparse, cmap="turbo", vmin=0, vmax=max_depth, interpolation="nearest")
        for ax, title in zip(row, ("camera", "predicted depth", "LiDAR depth (target)"), strict=True):
            ax.set_title(title)
            ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path

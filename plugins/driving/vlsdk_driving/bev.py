"""Point cloud to bird's-eye-view pseudo-image: pillar and height-slice (voxel) encoding in torch.

Each point is binned into a ``(row, col)`` cell of a :class:`BEVGrid` (``col`` along ``x``, ``row``
along ``y``) and, for the voxel channels, into a height slice. The occupied cells of the whole
batch are found with one ``unique`` over the flat cell index; per-cell statistics are computed with
``bincount`` / ``scatter_reduce`` over those cells only and written into the grid with one scatter:
no Python loop over points or over samples, and no pass over the empty cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["BEVGrid", "PillarEncoder", "PILLAR_FEATURES"]

#: Per-pillar statistics :class:`PillarEncoder` can produce.
PILLAR_FEATURES: tuple[str, ...] = ("occupancy", "max_z", "mean_z", "min_z", "mean_intensity", "mean_time_lag")


@dataclass(frozen=True)
class BEVGrid:
    """A metric bird's-eye-view grid in the LiDAR frame.

    Args:
        x_range: ``(min, max)`` metres along ``x`` (columns).
        y_range: ``(min, max)`` metres along ``y`` (rows).
        z_range: ``(min, max)`` metres of heights kept.
        resolution: cell size in metres (square cells).

    Example:
        >>> BEVGrid((-51.2, 51.2), (-51.2, 51.2), (-5.0, 3.0), 0.2).shape
        (512, 512)
    """

    x_range: tuple[float, float] = (-51.2, 51.2)
    y_range: tuple[float, float] = (-51.2, 51.2)
    z_range: tuple[float, float] = (-5.0, 3.0)
    resolution: float = 0.2

    def __post_init__(self) -> None:
        for name in ("x_range", "y_range", "z_range"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"{name} must be finite (min, max) with min < max, got {getattr(self, name)}")
            object.__setattr__(self, name, (float(lo), float(hi)))
        if not (self.resolution > 0 and math.isfinite(self.resolution)):
            raise ValueError(f"resolution must be a positive number of metres, got {self.resolution!r}")
        object.__setattr__(self, "resolution", float(self.resolution))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``: rows along ``y``, columns along ``x``."""
        h = round((self.y_range[1] - self.y_range[0]) / self.resolution)
        w = round((self.x_range[1] - self.x_range[0]) / self.resolution)
        return int(h), int(w)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (for head options and checkpoints)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def world_to_cell(self, xy: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Continuous ``(col, row)`` cell coordinates of metric ``(x, y)`` (cell centres at ``.5``)."""
        origin = [self.x_range[0], self.y_range[0]]
        if isinstance(xy, torch.Tensor):
            return (xy - xy.new_tensor(origin)) / self.resolution
        return (np.asarray(xy) - np.array(origin)) / self.resolution

    def cell_to_world(self, cr: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Metric ``(x, y)`` of continuous ``(col, row)`` cell coordinates."""
        origin = [self.x_range[0], self.y_range[0]]
        if isinstance(cr, torch.Tensor):
            return cr * self.resolution + cr.new_tensor(origin)
        return np.asarray(cr) * self.resolution + np.array(origin)


class PillarEncoder(nn.Module):
    """Vectorised pillar + height-slice BEV encoder: points -> ``(B, C, H, W)`` pseudo-image.

    Channels, in order: the chosen pillar ``features`` (occupancy ``log1p(count) / log1p(max_count)``;
    heights normalised to ``[0, 1]`` over ``z_range``; mean intensity divided by
    ``intensity_scale``; mean time lag), then ``z_bins`` height-slice occupancies (1 where a
    slice of the pillar holds a point). Empty cells are 0. Points outside the grid, or with a
    non-finite coordinate, are dropped.

    Args:
        grid: the BEV grid.
        features: pillar statistics from :data:`PILLAR_FEATURES`.
        z_bins: height slices for the voxel occupancy channels (0: none).
        point_fields: the names of the point columns (``x, y, z`` first); ``mean_intensity``
            needs ``"intensity"``, ``mean_time_lag`` needs ``"time_lag"``.
        intensity_scale: intensities are divided by this (nuScenes: 0-255).
        max_count: point count that maps to occupancy 1.

    Example:
        >>> enc = PillarEncoder(BEVGrid((-8, 8), (-8, 8), (-2, 2), 0.5), z_bins=2)
        >>> enc([torch.tensor([[1.0, 2.0, 0.5, 10.0]])]).shape
        torch.Size([1, 7, 32, 32])
    """

    def __init__(self, grid: BEVGrid | None = None,
                 features: Sequence[str] = ("occupancy", "max_z", "mean_z", "min_z", "mean_intensity"),
                 z_bins: int = 4, point_fields: Sequence[str] = ("x", "y", "z", "intensity"),
                 intensity_scale: float = 255.0, max_count: int = 32) -> None:
        grid = BEVGrid() if grid is None else grid
        if not isinstance(grid, BEVGrid):
            raise ValueError(f"grid must be a BEVGrid, got {type(grid).__name__}")
        unknown = [f for f in features if f not in PILLAR_FEATURES]
        if unknown or len(set(features)) != len(features):
            raise ValueError(f"features must be distinct names from {PILLAR_FEATURES}, got {list(features)}")
        if not isinstance(z_bins, int) or z_bins < 0:
            raise ValueError(f"z_bins must be an int >= 0, got {z_bins!r}")
        if not features and not z_bins:
            raise ValueError("the encoder needs at least one feature or z_bins >= 1")
        fields = tuple(point_fields)
        if fields[:3] != ("x", "y", "z"):
            raise ValueError(f"point_fields must start with x, y, z, got {fields}")
        for feat, col in (("mean_intensity", "intensity"), ("mean_time_lag", "time_lag")):
            if feat in features and col not in fields:
                raise ValueError(f"feature {feat!r} needs a {col!r} point column; point_fields: {fields}")
        if intensity_scale <= 0 or max_count < 1:
            raise ValueError(f"intensity_scale must be > 0 and max_count >= 1, got {intensity_scale}, {max_count}")
        super().__init__()
        self.grid = grid
        self.features = tuple(features)
        self.z_bins = z_bins
        self.point_fields = fields
        self.intensity_scale = float(intensity_scale)
        self.max_count = int(max_count)

    @property
    def out_channels(self) -> int:
        """Channels of the pseudo-image (``in_chans`` of the backbone)."""
        return len(self.features) + self.z_bins

    def forward(self, points: torch.Tensor | Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
        """Encode one ``(N, C)`` cloud or a list of clouds (one per sample) into ``(B, C, H, W)``.

        Args:
            points: a tensor ``(N, len(point_fields))`` (a batch of one) or a sequence of them.
        """
        clouds = [points] if isinstance(points, torch.Tensor) else list(points)
        if not clouds:
            raise ValueError("expected at least one point cloud")
        clouds = [torch.as_tensor(c) for c in clouds]
        ncol = len(self.point_fields)
        for i, c in enumerate(clouds):
            if c.dim() != 2 or c.shape[1] != ncol:
                raise ValueError(f"cloud {i}: expected shape (N, {ncol}) for fields {self.point_fields}, "
                                 f"got {tuple(c.shape)}")
        device = clouds[0].device
        pts = torch.cat([c.to(device=device, dtype=torch.float32) for c in clouds])
        batch = torch.repeat_interleave(torch.arange(len(clouds), device=device),
                                        torch.tensor([len(c) for c in clouds], device=device))
        g = self.grid
        h, w = g.shape
        z0, z1 = g.z_range
        col = torch.floor((pts[:, 0] - g.x_range[0]) / g.resolution)
        row = torch.floor((pts[:, 1] - g.y_range[0]) / g.resolution)
        z = pts[:, 2]
        keep = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (z >= z0) & (z < z1) & torch.isfinite(z)
        pts, batch, col, row = pts[keep], batch[keep], col[keep].long(), row[keep].long()
        zn = (pts[:, 2] - z0) / (z1 - z0)  # [0, 1)
        hw = h * w
        cell = (batch * h + row) * w + col
        # statistics over the occupied cells only (a few thousand), then one scatter into the grid
        occupied, inv = torch.unique(cell, sorted=True, return_inverse=True)
        n = len(occupied)
        count = torch.bincount(inv, minlength=n).to(torch.float32)
        channels: list[torch.Tensor] = []
        for feat in self.features:
            if feat == "occupancy":
                channels.append((torch.log1p(count) / math.log1p(self.max_count)).clamp(max=1.0))
            elif feat == "mean_z":
                channels.append(torch.bincount(inv, zn, minlength=n) / count)
            elif feat in ("max_z", "min_z"):
                red = "amax" if feat == "max_z" else "amin"
                channels.append(zn.new_zeros(n).scatter_reduce(0, inv, zn, reduce=red, include_self=False))
            elif feat == "mean_intensity":
                vals = pts[:, self.point_fields.index("intensity")] / self.intensity_scale
                channels.append(torch.bincount(inv, vals, minlength=n) / count)
            else:  # mean_time_lag
                vals = pts[:, self.point_fields.index("time_lag")]
                channels.append(torch.bincount(inv, vals, minlength=n) / count)
        out = torch.zeros(len(clouds), self.out_channels, hw, device=device)
        if channels:
            out[occupied // hw, :len(channels), occupied % hw] = torch.stack(channels, 1)
        if self.z_bins:
            zb = (zn * self.z_bins).long().clamp_(max=self.z_bins - 1)
            out[batch, len(channels) + zb, cell % hw] = 1.0
        return out.view(len(clouds), self.out_channels, h, w)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, features={self.features}, z_bins={self.z_bins}"

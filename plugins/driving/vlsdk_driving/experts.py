"""Autonomous-driving MoE experts (pure torch; no nuscenes-devkit needed to build or run them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.models.experts import resolve_hidden
from vlsdk.models.features import ExpertContext
from vlsdk.models.grid import (
    GridDepthwiseConv,
    gather_grid_neighbours,
    isolated_context,
)

__all__ = ["LidarExpert"]


class LidarExpert(nn.Module):
    """Expert for sparse LiDAR bird's-eye-view pseudo-images: occupancy-gated dilated conv + SwiGLU.

    Most BEV cells of a LiDAR sweep are empty, and objects span several cells. For each routed
    token the expert reads a ``3 x 3`` neighbourhood dilated by ``dilation`` (a
    ``(2 * dilation + 1)``-cell receptive field from 9 taps), scores every tap's occupancy with a
    learned ``sigmoid(w . token + b)`` and scales the tap by it before the depthwise convolution,
    so empty cells (and cells outside the grid, which score 0) contribute little. The result is
    added to the token, normalised, and passed through a SwiGLU FFN
    ``W2(silu(W1 h) * W3 h)``. Without a context only the token's own (gated) cell is seen.

    Args:
        dim: token width.
        hidden: SwiGLU hidden width (default ``8 * dim / 3`` rounded up to a multiple of 8, about
            the parameter count of a ``4 * dim`` GELU FFN).
        dilation: spacing of the 3 x 3 taps on the grid, >= 1.

    Example:
        >>> expert = LidarExpert(32, dilation=2)
        >>> expert(torch.randn(5, 32)).shape
        torch.Size([5, 32])
    """

    def __init__(self, dim: int, hidden: int | None = None, dilation: int = 2) -> None:
        super().__init__()
        hidden = resolve_hidden(dim, hidden, (8 * dim // 3 + 7) // 8 * 8)
        if not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
        self.dim, self.hidden, self.dilation = dim, hidden, dilation
        self.occupancy = nn.Linear(dim, 1)
        self.conv = GridDepthwiseConv(dim, kernel_size=3, dilation=dilation)
        self.norm = nn.LayerNorm(dim)
        self.w13 = nn.Linear(dim, 2 * hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, context: ExpertContext | None = None) -> torch.Tensor:
        """Map the ``(n, dim)`` routed tokens to ``(n, dim)``; ``context`` gives their neighbours."""
        context = isolated_context(x) if context is None else context
        if context.every_token:  # one conv over the occupancy-weighted map: the same values as the gather
            h = self.norm(x + self.conv.conv_map(x * torch.sigmoid(self.occupancy(x)), context.grid))
        else:
            neighbours, inside = gather_grid_neighbours(context, self.conv.offsets, return_mask=True)
            occupied = torch.sigmoid(self.occupancy(neighbours)) * inside.unsqueeze(-1).to(neighbours.dtype)
            h = self.norm(x + self.conv.combine(neighbours * occupied))
        gate, value = self.w13(h).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * value)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, dilation={self.dilation}"

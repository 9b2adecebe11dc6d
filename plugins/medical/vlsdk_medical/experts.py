"""Medical-imaging MoE experts (pure torch; no MONAI needed to build or run them)."""

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
    map_to_tokens,
    tokens_to_grid_map,
)

__all__ = ["LesionExpert"]


class LesionExpert(nn.Module):
    """Expert for small, low-contrast lesions: local contrast + depthwise conv, then a GELU FFN.

    For each routed token it reads its ``kernel_size x kernel_size`` neighbourhood on the token
    grid (one gather, see :func:`vlsdk.models.grid.gather_grid_neighbours`) and forms

    * the local contrast ``x - mean(neighbourhood)`` (mean over the taps inside the image), scaled
      by a learned per-channel gain, which lifts faint spots that differ from their surroundings;
    * a depthwise convolution over the same neighbourhood (:class:`GridDepthwiseConv`);

    adds both to the token, normalises, and applies a two-layer GELU FFN. Without a context every
    token is alone on the grid: the contrast is zero and the convolution sees only the centre tap.

    Args:
        dim: token width.
        hidden: FFN hidden width (default ``4 * dim``).
        kernel_size: odd neighbourhood size (>= 3) of the contrast and the depthwise conv.

    Example:
        >>> expert = LesionExpert(32, hidden=64)
        >>> expert(torch.randn(5, 32)).shape
        torch.Size([5, 32])
    """

    def __init__(self, dim: int, hidden: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = resolve_hidden(dim, hidden, 4 * dim)
        if not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 3, got {kernel_size!r}")
        self.dim, self.hidden, self.kernel_size = dim, hidden, kernel_size
        self.conv = GridDepthwiseConv(dim, kernel_size=kernel_size)
        self.contrast_gain = nn.Parameter(torch.ones(dim))
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, context: ExpertContext | None = None) -> torch.Tensor:
        """Map the ``(n, dim)`` routed tokens to ``(n, dim)``; ``context`` gives their neighbours."""
        context = isolated_context(x) if context is None else context
        if context.every_token:  # whole-map ops, the same values as the gather below
            k = self.kernel_size
            mean = map_to_tokens(F.avg_pool2d(tokens_to_grid_map(x, context.grid), k, 1, k // 2,
                                              count_include_pad=False))
            h = x + self.conv.conv_map(x, context.grid) + self.contrast_gain * (x - mean)
        else:
            neighbours, inside = gather_grid_neighbours(context, self.conv.offsets, return_mask=True)
            count = inside.sum(1, keepdim=True).clamp_min(1).to(neighbours.dtype)
            contrast = x - neighbours.sum(1) / count
            h = x + self.conv.combine(neighbours) + self.contrast_gain * contrast
        return self.fc2(F.gelu(self.fc1(self.norm(h))))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, kernel_size={self.kernel_size}"

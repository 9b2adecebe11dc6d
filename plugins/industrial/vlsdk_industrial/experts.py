"""Industrial-inspection MoE experts (pure torch; no albumentations needed to build or run them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.models.experts import resolve_hidden
from vlsdk.models.features import ExpertContext
from vlsdk.models.grid import GridDepthwiseConv, isolated_context

__all__ = ["PcbDefectExpert"]


class PcbDefectExpert(nn.Module):
    """Expert for thin traces and small defects on binarised boards: strip convs + GELU FFN.

    PCB traces run mostly horizontally and vertically and are one or two tokens wide; opens,
    shorts and spurs are breaks or bumps along them. Two anisotropic depthwise convolutions over
    the token grid, a ``1 x length`` and a ``length x 1`` strip (:class:`GridDepthwiseConv`),
    follow a trace for ``length`` tokens in each direction at the cost of ``2 * length`` taps. Their
    sum is added to the token, normalised, and passed through a two-layer GELU FFN. Without a
    context each strip sees only the centre tap.

    Args:
        dim: token width.
        hidden: FFN hidden width (default ``4 * dim``).
        length: odd strip length (>= 3), in tokens.

    Example:
        >>> expert = PcbDefectExpert(32, length=7)
        >>> expert(torch.randn(5, 32)).shape
        torch.Size([5, 32])
    """

    def __init__(self, dim: int, hidden: int | None = None, length: int = 7) -> None:
        super().__init__()
        hidden = resolve_hidden(dim, hidden, 4 * dim)
        if not isinstance(length, int) or length < 3 or length % 2 == 0:
            raise ValueError(f"length must be an odd int >= 3, got {length!r}")
        self.dim, self.hidden, self.length = dim, hidden, length
        self.horizontal = GridDepthwiseConv(dim, kernel_size=(1, length))
        self.vertical = GridDepthwiseConv(dim, kernel_size=(length, 1))
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, context: ExpertContext | None = None) -> torch.Tensor:
        """Map the ``(n, dim)`` routed tokens to ``(n, dim)``; ``context`` gives their neighbours."""
        context = isolated_context(x) if context is None else context
        h = x + self.horizontal(x, context) + self.vertical(x, context)
        return self.fc2(F.gelu(self.fc1(self.norm(h))))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, length={self.length}"

"""A custom MoE expert. The contract: ``factory(dim, **options)`` returns an ``nn.Module`` mapping
``(n, dim)`` tokens to ``(n, dim)``, for any ``n`` including 0.

To see the token grid as well, declare ``forward(self, x, context=None)``: the MoE layer then
passes a :class:`vlsdk.models.features.ExpertContext` (see :mod:`vlsdk.models.grid` for gathers
and a routed-token depthwise convolution) and ``None`` when there is no grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GatedMLPExpert"]


class GatedMLPExpert(nn.Module):
    """A gated MLP expert: ``fc2(gelu(fc1(x)) * sigmoid(gate(x)))``.

    Args:
        dim: token width (given by the model).
        hidden: hidden width (default ``2 * dim``).

    Example:
        >>> GatedMLPExpert(32)(torch.randn(5, 32)).shape
        torch.Size([5, 32])
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = 2 * dim if hidden is None else hidden
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        self.dim, self.hidden = dim, hidden
        self.fc1 = nn.Linear(dim, hidden)
        self.gate = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)) * torch.sigmoid(self.gate(x)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}"

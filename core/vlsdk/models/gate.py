"""Gated cross-attention from visual tokens to text tokens (Flamingo-style tanh gate)."""

from __future__ import annotations

import torch
from torch import nn

from vlsdk.models.vit import Attention

__all__ = ["CrossModalGate"]


class CrossModalGate(nn.Module):
    """``x + tanh(alpha) * CrossAttn(LN(x), text)``, with ``alpha`` initialised to 0 (closed).

    In eval mode a gate whose ``|tanh(alpha)|`` is below ``threshold`` skips the text path
    entirely (no attention is computed), so a model whose gates never opened costs nothing
    extra when given text. In training the path always runs, so the gate can learn to open.

    Args:
        dim: visual token width.
        text_dim: text token width.
        num_heads: attention heads.
        threshold: inference skip threshold on ``|tanh(alpha)|``.

    Example:
        >>> gate = CrossModalGate(64, 32, 2).eval()
        >>> x = torch.randn(1, 4, 64)
        >>> torch.equal(gate(x, torch.randn(1, 3, 32)), x)  # closed: text skipped
        True
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int, threshold: float = 1e-3) -> None:
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.norm = nn.LayerNorm(dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.attn = Attention(dim, num_heads, kv_dim=text_dim)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.threshold = threshold

    @property
    def value(self) -> float:
        """The current gate value ``tanh(alpha)``."""
        return float(torch.tanh(self.alpha.detach()))

    @property
    def is_open(self) -> bool:
        """Whether the text path runs at inference."""
        return abs(self.value) >= self.threshold

    def forward(self, x: torch.Tensor, text: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if text is None or (not self.training and not self.is_open):
            return x
        y = self.attn(self.norm(x), self.text_norm(text), mask)
        return x + torch.tanh(self.alpha).to(x.dtype) * y

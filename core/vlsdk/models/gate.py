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

    Eager calls read ``alpha`` every time. Code traced by ``torch.compile`` cannot read a tensor's
    value without a host sync and a graph break, so it uses :attr:`open_at_eval`, a plain bool
    that ``torch.compile`` guards on (a change recompiles): it is refreshed by every eager call,
    by ``eval()``/``train()``, by ``load_state_dict`` and by :meth:`refresh`. After editing
    ``alpha`` in place between compiled calls, call :meth:`refresh` (or run the model once eagerly).

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
        #: whether the text path runs at inference, as last read from ``alpha`` (see the class doc)
        self.open_at_eval = False
        self._read_at: tuple[int, int] | None = None  # alpha's (storage, version) when last read

    @property
    def value(self) -> float:
        """The current gate value ``tanh(alpha)``."""
        return float(torch.tanh(self.alpha.detach()))

    @property
    def is_open(self) -> bool:
        """Whether the text path runs at inference."""
        return abs(self.value) >= self.threshold

    def refresh(self) -> bool:
        """Re-read ``alpha`` into :attr:`open_at_eval` (a host read); returns it."""
        self.open_at_eval = self.is_open
        return self.open_at_eval

    def _refresh_if_changed(self) -> bool:
        """:meth:`refresh` only when ``alpha`` may have changed since the last read: every in-place
        write (optimizer step, ``load_state_dict``, ``fill_``) bumps its version and ``.to()`` moves
        its storage, so an unchanged gate costs no host read per eager forward. (A write through
        ``alpha.data`` bumps neither: call :meth:`refresh` after one.)"""
        key = (self.alpha.data_ptr(), self.alpha._version)
        if key != self._read_at:
            self.refresh()
            self._read_at = key
        return self.open_at_eval

    def train(self, mode: bool = True) -> CrossModalGate:
        super().train(mode)
        self.refresh()
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh()

    def forward(self, x: torch.Tensor, text: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if text is None:
            return x
        if not self.training:
            is_open = self.open_at_eval if torch.compiler.is_compiling() else self._refresh_if_changed()
            if not is_open:
                return x
        y = self.attn(self.norm(x), self.text_norm(text), mask)
        return x + torch.tanh(self.alpha).to(x.dtype) * y

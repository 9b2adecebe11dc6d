"""A small built-in text encoder over UTF-8 bytes: English, Chinese, any script, no vocabulary file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vlsdk.models.config import TextConfig
from vlsdk.models.vit import Block

__all__ = ["ByteTokenizer", "TextFeatures", "ByteTextEncoder"]


class ByteTokenizer:
    """Byte-level tokenizer: id = byte + 3, with ``PAD=0``, ``BOS=1``, ``EOS=2`` (vocabulary 259).

    Example:
        >>> ids, mask = ByteTokenizer(max_len=16)(["CT 肺结节", "PCB"])
        >>> ids.shape, int(mask[1].sum())
        (torch.Size([2, 14]), 5)
    """

    PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
    vocab_size = 256 + OFFSET

    def __init__(self, max_len: int = 128) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = max_len

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode texts to ``(B, L)`` ids and a ``(B, L)`` bool mask of real tokens."""
        if isinstance(texts, str):
            raise ValueError("expected a sequence of strings, got one string; wrap it in a list")
        rows = [[self.BOS, *(b + self.OFFSET for b in t.encode("utf-8")[: self.max_len]), self.EOS] for t in texts]
        length = max(map(len, rows), default=2)
        ids = torch.full((len(rows), length), self.PAD, dtype=torch.long)
        for i, row in enumerate(rows):  # one loop over texts (not tokens) to pack ragged rows
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != self.PAD

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Invert :meth:`__call__` (special tokens dropped)."""
        return [bytes(int(i) - self.OFFSET for i in row if int(i) >= self.OFFSET).decode("utf-8", "replace")
                for row in ids]


@dataclass
class TextFeatures:
    """Encoded texts.

    Attributes:
        tokens: ``(B, L, text_dim)`` token features.
        mask: ``(B, L)`` bool, True on real tokens.
        pooled: ``(B, text_dim)`` one vector per text (masked mean), e.g. for contrastive losses.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class ByteTextEncoder(nn.Module):
    """Byte embeddings, learned positions and a few pre-norm transformer blocks.

    Args:
        config: width, depth, heads and maximum length.

    Example:
        >>> enc = ByteTextEncoder(TextConfig(dim=32, depth=1, heads=2))
        >>> enc.encode(["a lesion", "病灶"]).tokens.shape[-1]
        32
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.tokenizer = ByteTokenizer(config.max_len)
        self.embed = nn.Embedding(ByteTokenizer.vocab_size, config.dim, padding_idx=ByteTokenizer.PAD)
        self.pos = nn.Parameter(torch.zeros(1, config.max_len + 2, config.dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TextFeatures:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        for block in self.blocks:
            x, _ = block(x, mask=mask)
        x = self.norm(x)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return TextFeatures(x, mask, pooled)

    def encode(self, texts: Sequence[str]) -> TextFeatures:
        """Tokenise and encode a batch of strings on the module's device."""
        ids, mask = self.tokenizer(texts)
        device = self.pos.device
        return self(ids.to(device), mask.to(device))

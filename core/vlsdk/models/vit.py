"""ViT building blocks: attention, pre-norm blocks (dense or MoE), patch embedding and merging."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.models.config import MoEConfig
from vlsdk.models.experts import ExpertMLP
from vlsdk.models.features import RouterStats
from vlsdk.models.moe import DynamicMoE

__all__ = ["Attention", "Block", "PatchEmbed", "PatchMerge", "DropPath", "sincos_pos_embed", "tokens_to_map"]


class Attention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention``.

    With ``kv_dim`` it is cross-attention: queries from ``x``, keys and values from ``context``.
    ``mask`` is a ``(B, L)`` bool tensor of the keys to attend to.
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.cross = kv_dim is not None
        if self.cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(kv_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        if self.cross:
            q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
            k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = None if mask is None else mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block whose feed-forward is a dense MLP or a :class:`DynamicMoE`.

    ``forward`` returns the tokens and the layer's :class:`RouterStats` (``None`` when dense).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, moe: MoEConfig | None = None,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn: nn.Module = DynamicMoE(dim, moe) if moe is not None else ExpertMLP(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    @property
    def is_moe(self) -> bool:
        return isinstance(self.ffn, DynamicMoE)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, RouterStats | None]:
        x = x + self.drop_path(self.attn(self.norm1(x), mask=mask))
        stats = None
        if self.is_moe:
            y, stats = self.ffn(self.norm2(x), grid)
        else:
            y = self.ffn(self.norm2(x))
        return x + self.drop_path(y), stats


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution over a feature map (zero-padded to fit)."""

    def __init__(self, in_ch: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_ch, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.patch
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])


class PatchMerge(nn.Module):
    """Swin-style 2x2 token merge: concatenate neighbours, normalise, project back to ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        b, _, d = x.shape
        h, w = grid
        x = x.view(b, h, w, d)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        grid = (x.shape[1], x.shape[2])
        return self.reduce(self.norm(x.flatten(1, 2))), grid


def sincos_pos_embed(dim: int, grid: tuple[int, int], device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding ``(1, h*w, dim)`` for any grid size (MAE style)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float32) / (dim // 4))
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None, None] * omega
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :, None] * omega
    ys, xs = ys.expand(h, w, -1), xs.expand(h, w, -1)
    emb = torch.cat([xs.sin(), xs.cos(), ys.sin(), ys.cos()], dim=-1)
    return emb.reshape(1, h * w, dim).to(dtype)


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, h*w, d)`` tokens to a ``(B, d, h, w)`` feature map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)

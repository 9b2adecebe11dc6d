"""Spatial operations for domain experts that see only the tokens routed to them.

A MoE layer hands a domain expert the ``(n, d)`` tokens it won plus an
:class:`~vlsdk.models.features.ExpertContext` (every token of the layer and the grid row of each
routed token). The helpers here look up each routed token's neighbours on the ``(B, H, W)`` token
grid with one vectorised gather, so a spatial expert costs ``O(n * K * d)`` for ``K`` kernel taps,
whatever the size of the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.models.features import ExpertContext

__all__ = ["GridDepthwiseConv", "gather_grid_neighbours", "isolated_context", "kernel_offsets", "map_to_tokens",
           "tokens_to_grid_map"]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair[0], pair[1]


def kernel_offsets(kernel_size: int | Sequence[int] = 3, dilation: int | Sequence[int] = 1) -> list[tuple[int, int]]:
    """``(dy, dx)`` of every tap of a centred ``kernel_size`` kernel, in the kernel's row-major order.

    Tap ``(i, j)`` of a ``(kh, kw)`` kernel sits at ``((i - kh // 2) * dil_y, (j - kw // 2) * dil_x)``,
    which is what ``torch.nn.functional.conv2d`` with ``padding="same"`` computes for odd kernels.

    Args:
        kernel_size: ``k`` or ``(kh, kw)``; odd and >= 1.
        dilation: ``d`` or ``(dil_y, dil_x)``; >= 1.

    Example:
        >>> kernel_offsets((1, 3), dilation=2)
        [(0, -2), (0, 0), (0, 2)]
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    dy, dx = _pair(dilation, "dilation")
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1 (a centred kernel), got {(kh, kw)}")
    if dy < 1 or dx < 1:
        raise ValueError(f"dilation must be >= 1, got {(dy, dx)}")
    return [((i - kh // 2) * dy, (j - kw // 2) * dx) for i in range(kh) for j in range(kw)]


def tokens_to_grid_map(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """``(B * H * W, d)`` tokens, row-major over ``grid = (B, H, W)``, as a ``(B, d, H, W)`` map (a view)."""
    batch, height, width = grid
    return tokens.view(batch, height, width, tokens.shape[-1]).permute(0, 3, 1, 2)


def map_to_tokens(grid_map: torch.Tensor) -> torch.Tensor:
    """A ``(B, d, H, W)`` map back to ``(B * H * W, d)`` tokens (inverse of :func:`tokens_to_grid_map`)."""
    return grid_map.permute(0, 2, 3, 1).reshape(-1, grid_map.shape[1])


def isolated_context(x: torch.Tensor) -> ExpertContext:
    """A context in which every row of ``x`` sits alone on its own ``1 x 1`` grid.

    Spatial experts use it when they are called without a context (the plain ``(n, d) -> (n, d)``
    contract): every neighbour is then outside the grid, i.e. zero, and only the centre tap counts.

    Example:
        >>> isolated_context(torch.zeros(4, 8)).grid
        (4, 1, 1)
    """
    if x.dim() != 2:
        raise ValueError(f"expected (n, d) tokens, got shape {tuple(x.shape)}")
    index = torch.arange(x.shape[0], device=x.device)
    return ExpertContext(tokens=x, index=index, grid=(int(x.shape[0]), 1, 1))


def gather_grid_neighbours(
    context: ExpertContext,
    offsets: Sequence[tuple[int, int]] | torch.Tensor,
    *,
    return_mask: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The tokens at ``(dy, dx)`` offsets around each routed token, zeros outside the grid.

    One vectorised gather: no loop over tokens, cost ``O(n * K * d)`` independent of the grid.

    Args:
        context: the layer's tokens ``(B * H * W, d)``, the routed rows ``(n,)`` and the grid.
        offsets: ``K`` pairs ``(dy, dx)`` (rows down, columns right), or a ``(K, 2)`` integer tensor.
        return_mask: also return the ``(n, K)`` boolean mask of taps that lie inside the grid.

    Returns:
        ``(n, K, d)`` neighbours (``[:, k]`` is the token at offset ``k``; zero where the offset
        leaves the image the token belongs to), and the mask when ``return_mask`` is set.

    Example:
        >>> ctx = ExpertContext(tokens=torch.arange(6.0).view(6, 1), index=torch.tensor([0, 4]), grid=(1, 2, 3))
        >>> gather_grid_neighbours(ctx, [(0, 1), (1, 0)]).squeeze(-1)
        tensor([[1., 3.],
                [5., 0.]])
    """
    tokens, index = context.tokens, context.index
    batch, height, width = context.grid
    if tokens.dim() != 2 or tokens.shape[0] != batch * height * width:
        raise ValueError(f"context.tokens must be (B*H*W, d) = ({batch * height * width}, d) for grid "
                         f"{tuple(context.grid)}, got {tuple(tokens.shape)}")
    if index.dim() != 1:
        raise ValueError(f"context.index must be (n,), got shape {tuple(index.shape)}")
    if isinstance(offsets, torch.Tensor):
        off = offsets.to(device=index.device, dtype=torch.long)
    else:
        off = torch.as_tensor(list(offsets), dtype=torch.long, device=index.device)
    if off.dim() != 2 or off.shape[1] != 2:
        raise ValueError(f"offsets must be K pairs (dy, dx), got shape {tuple(off.shape)}")
    index = index.long()
    plane = height * width
    image, pos = index // plane, index % plane
    ys = (pos // width).unsqueeze(1) + off[:, 0]                       # (n, K)
    xs = (pos % width).unsqueeze(1) + off[:, 1]
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    rows = image.unsqueeze(1) * plane + ys.clamp(0, height - 1) * width + xs.clamp(0, width - 1)
    found = tokens.index_select(0, rows.reshape(-1)).view(*rows.shape, tokens.shape[1])
    found = found.masked_fill(~inside.unsqueeze(-1), 0)
    return (found, inside) if return_mask else found


class GridDepthwiseConv(nn.Module):
    """A depthwise 2D convolution over the token grid, evaluated only at the routed tokens.

    Equals ``F.conv2d(grid_map, weight, bias, padding="same", dilation=dilation, groups=dim)`` on
    the full ``(B, dim, H, W)`` map, read at the routed positions, but costs ``O(n * K * dim)``
    for ``n`` routed tokens and ``K = kh * kw`` taps instead of ``O(B * H * W * K * dim)``.
    ``weight`` has ``nn.Conv2d``'s depthwise layout ``(dim, 1, kh, kw)``, so weights load both ways.

    Args:
        dim: token width (= number of channels, one filter each).
        kernel_size: ``k`` or ``(kh, kw)``, odd (a centred kernel), e.g. ``(1, 7)`` for a strip.
        dilation: ``d`` or ``(dil_y, dil_x)``, >= 1.
        bias: learn a per-channel bias.

    Example:
        >>> conv = GridDepthwiseConv(8, kernel_size=3)
        >>> ctx = ExpertContext(tokens=torch.randn(2 * 4 * 5, 8), index=torch.tensor([0, 7, 39]), grid=(2, 4, 5))
        >>> conv(ctx.tokens[ctx.index], context=ctx).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int | Sequence[int] = (3, 3),
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        offsets = kernel_offsets(kernel_size, dilation)
        self.dim = dim
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.dilation = _pair(dilation, "dilation")
        self.weight = nn.Parameter(torch.empty(dim, 1, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(dim)) if bias else None
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s default initialisation for the same shapes."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.kernel_size[0] * self.kernel_size[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def combine(self, neighbours: torch.Tensor) -> torch.Tensor:
        """Apply the kernel to ``(n, K, dim)`` neighbours gathered at :attr:`offsets`; ``(n, dim)``."""
        out = torch.einsum("nkd,dk->nd", neighbours, self.weight.flatten(1).to(neighbours.dtype))
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def forward(self, x: torch.Tensor, context: ExpertContext | None = None) -> torch.Tensor:
        """Convolve at the routed tokens.

        Args:
            x: ``(n, dim)`` routed tokens; read only when ``context`` is None (each token is then
                alone on the grid, so only the centre tap sees a non-zero input).
            context: the layer's tokens and where ``x`` sits among them.
        """
        context = isolated_context(x) if context is None else context
        if context.every_token:  # one depthwise conv2d over the map, not a (n, K, dim) gather
            return self.conv_map(context.tokens, context.grid)
        return self.combine(gather_grid_neighbours(context, self.offsets))

    def conv_map(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The convolution at every token at once: ``F.conv2d`` over the ``(B, dim, H, W)`` map.

        Args:
            tokens: ``(B * H * W, dim)``, row-major over ``grid``.
            grid: ``(B, H, W)``.

        Returns:
            ``(B * H * W, dim)``, what :meth:`forward` gives with every token routed.
        """
        return map_to_tokens(F.conv2d(
            tokens_to_grid_map(tokens, grid), self.weight.to(tokens.dtype),
            None if self.bias is None else self.bias.to(tokens.dtype),
            padding=(self.kernel_size[0] // 2 * self.dilation[0], self.kernel_size[1] // 2 * self.dilation[1]),
            dilation=self.dilation, groups=self.dim))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"bias={self.bias is not None}")

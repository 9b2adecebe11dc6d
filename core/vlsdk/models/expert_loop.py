"""The loop path's generic experts as one autograd function over the stacked weights.

The loop path (the CPU default, and wherever the grouped GEMM does not serve) runs each generic
expert's two GEMMs on the rows routed to it. Written with autograd on per-expert views of the
stacks, its backward stacks the experts' weight gradients once more (``unbind``'s backward) and
fills a zero tensor of all the rows for each expert's input gradient (slicing's backward) before
summing them: about 8 % of the layer's forward + backward on the CPU (BENCHMARKS.md). Here the
backward writes each expert's gradients straight into its slice of stack-shaped buffers and its
rows of one input gradient, with the same GEMMs autograd runs (``addmm`` forward; ``g @ W``,
``g.T @ x`` and ``g.sum(0)`` backward), so the values are the same.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["generic_loop"]


class _GenericLoop(torch.autograd.Function):
    """``ys[rows of i] = fc2_i(gelu(fc1_i(xs[rows of i])))``, the rows sorted by expert."""

    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, sizes: list[int], w1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        pre = xs.new_empty(xs.shape[0], w1.shape[1])   # fc1 outputs (what GELU's backward reads)
        act = torch.empty_like(pre)                     # GELU outputs (what fc2's weight gradient reads)
        ys = torch.empty_like(xs)
        start = 0
        for i, n in enumerate(sizes):                   # loop over experts, not tokens
            if n:
                rows = slice(start, start + n)
                torch.addmm(b1[i], xs[rows], w1[i].t(), out=pre[rows])
                torch.ops.aten.gelu.out(pre[rows], out=act[rows])
                torch.addmm(b2[i], act[rows], w2[i].t(), out=ys[rows])
            start += n
        ctx.sizes = sizes
        ctx.save_for_backward(xs, pre, act, w1, w2)
        return ys

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xs, pre, act, w1, w2 = ctx.saved_tensors
        need_x, _, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        grad = grad.contiguous()
        gx = torch.empty_like(xs) if need_x else None
        gw1 = torch.empty_like(w1) if need_w1 else None
        gb1 = w1.new_empty(w1.shape[:2]) if need_b1 else None
        gw2 = torch.empty_like(w2) if need_w2 else None
        gb2 = w2.new_empty(w2.shape[:2]) if need_b2 else None
        start = 0
        for i, n in enumerate(ctx.sizes):               # loop over experts, not tokens
            if not n:  # an expert without rows: zero gradients, as its slice of a stack would get
                for g in (gw1, gb1, gw2, gb2):
                    if g is not None:
                        g[i].zero_()
                continue
            rows = slice(start, start + n)
            g = grad[rows]
            if gw2 is not None:
                torch.mm(g.t(), act[rows], out=gw2[i])
            if gb2 is not None:
                torch.sum(g, 0, out=gb2[i])
            g_pre = torch.ops.aten.gelu_backward(g.mm(w2[i]), pre[rows])
            if gw1 is not None:
                torch.mm(g_pre.t(), xs[rows], out=gw1[i])
            if gb1 is not None:
                torch.sum(g_pre, 0, out=gb1[i])
            if gx is not None:
                torch.mm(g_pre, w1[i], out=gx[rows])
            start += n
        return gx, None, gw1, gb1, gw2, gb2


def generic_loop(xs: torch.Tensor, sizes: list[int], w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                 b2: torch.Tensor) -> torch.Tensor:
    """Each generic expert on its rows of ``xs``, differentiable in ``xs`` and the four stacks.

    Args:
        xs: ``(n, d)`` rows sorted by expert: the first ``sizes[0]`` belong to expert 0, and so on.
        sizes: rows per generic expert (a list: the loop reads it on the host).
        w1, b1, w2, b2: the stacks ``(E, h, d)``, ``(E, h)``, ``(E, d, h)``, ``(E, d)``
            (:meth:`~vlsdk.models.generic_experts.GenericExperts.stacks`).

    Returns:
        ``(n, d)``: each row through its expert's GELU MLP.

    Example:
        >>> w1, b1, w2, b2 = torch.randn(2, 8, 4), torch.zeros(2, 8), torch.randn(2, 4, 8), torch.zeros(2, 4)
        >>> generic_loop(torch.randn(5, 4), [3, 2], w1, b1, w2, b2).shape
        torch.Size([5, 4])
    """
    if len(sizes) != w1.shape[0] or sum(sizes) != xs.shape[0]:
        raise ValueError(f"sizes {sizes} do not split {xs.shape[0]} rows among {w1.shape[0]} experts")
    return _GenericLoop.apply(xs, sizes, w1, b1, w2, b2)


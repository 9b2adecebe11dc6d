"""The loop path's generic experts as one autograd function over the stacked weights.

The loop path (the CPU default, and wherever the grouped GEMM does not serve) runs each generic
expert's two GEMMs on the rows routed to it. Written with autograd on per-expert views of the
stacks, its backward stacks the experts' weight gradients once more (``unbind``'s backward) and
fills a zero tensor of all the rows for each expert's input gradient (slicing's backward) before
summing them: 3-9.5 % of the layer's forward + backward on the CPU (BENCHMARKS.md). Here the
backward writes each expert's gradients straight into its slice of stack-shaped buffers and its
rows of one input gradient, with the same GEMMs autograd runs (``addmm`` forward; ``g @ W``,
``g.T @ x`` and ``g.sum(0)`` backward), so the values are the same.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["generic_loop"]


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out = a @ b``, written in place; under autocast computed in ``a``'s dtype, then cast, as
    autograd casts a gradient back to its parameter's dtype."""
    if out.dtype == a.dtype:
        torch.mm(a, b, out=out)
    else:
        out.copy_(a.mm(b))


def _sum_into(out: torch.Tensor, a: torch.Tensor) -> None:
    if out.dtype == a.dtype:
        torch.sum(a, 0, out=out)
    else:
        out.copy_(a.sum(0))


class _GenericLoop(torch.autograd.Function):
    """``ys[i] = fc2_i(gelu(fc1_i(xs[rows of i])))`` for each generic expert ``i``, the rows sorted by expert.

    Each expert's activations are tensors of their own, as autograd would keep them: one buffer
    for all rows is a fresh allocation of the size of all of them on each call, which the CPU's
    allocator maps anew (page faults) where per-expert ones are reused.
    """

    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, sizes: list[int], w1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor, b2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pre, act, ys = [], [], []
        start = 0
        for i, n in enumerate(sizes):                   # loop over experts, not tokens
            x = xs[start:start + n]
            pre.append(torch.addmm(b1[i], x, w1[i].t()))  # what GELU's backward reads
            act.append(torch.nn.functional.gelu(pre[-1]))   # what fc2's weight gradient reads
            ys.append(torch.addmm(b2[i], act[-1], w2[i].t()))
            start += n
        ctx.sizes = sizes
        ctx.save_for_backward(xs, w1, w2, *pre, *act)
        return tuple(ys)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xs, w1, w2, *saved = ctx.saved_tensors
        experts = len(ctx.sizes)
        pre, act = saved[:experts], saved[experts:]
        need_x, _, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        gx = torch.empty_like(xs) if need_x else None
        gw1 = torch.empty_like(w1) if need_w1 else None
        gb1 = w1.new_empty(w1.shape[:2]) if need_b1 else None
        gw2 = torch.empty_like(w2) if need_w2 else None
        gb2 = w2.new_empty(w2.shape[:2]) if need_b2 else None
        start = 0
        for i, n in enumerate(ctx.sizes):               # loop over experts, not tokens
            g = grads[i]
            if not n or g is None:  # no rows, or an output unused: zero gradients, as a stack's slice gets
                for buffer in (gw1, gb1, gw2, gb2):
                    if buffer is not None:
                        buffer[i].zero_()
                if gx is not None:
                    gx[start:start + n].zero_()
                start += n
                continue
            rows = slice(start, start + n)
            w1_i, w2_i = w1[i].to(g.dtype), w2[i].to(g.dtype)  # (autocast ran the GEMMs in g's dtype)
            if gw2 is not None:
                _mm_into(gw2[i], g.t(), act[i])
            if gb2 is not None:
                _sum_into(gb2[i], g)
            g_pre = torch.ops.aten.gelu_backward(g.mm(w2_i), pre[i])
            if gw1 is not None:
                _mm_into(gw1[i], g_pre.t(), xs[rows].to(g.dtype))
            if gb1 is not None:
                _sum_into(gb1[i], g_pre)
            if gx is not None:
                _mm_into(gx[rows], g_pre, w1_i)
            start += n
        return gx, None, gw1, gb1, gw2, gb2


def generic_loop(xs: torch.Tensor, sizes: list[int], w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                 b2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each generic expert on its rows of ``xs``, differentiable in ``xs`` and the four stacks.

    Args:
        xs: ``(n, d)`` rows sorted by expert: the first ``sizes[0]`` belong to expert 0, and so on.
        sizes: rows per generic expert (a list: the loop reads it on the host).
        w1, b1, w2, b2: the stacks ``(E, h, d)``, ``(E, h)``, ``(E, d, h)``, ``(E, d)``
            (:meth:`~vlsdk.models.generic_experts.GenericExperts.stacks`).

    Returns:
        One ``(sizes[i], d)`` tensor per expert: its rows through its GELU MLP.

    Example:
        >>> w1, b1, w2, b2 = torch.randn(2, 8, 4), torch.zeros(2, 8), torch.randn(2, 4, 8), torch.zeros(2, 4)
        >>> [y.shape for y in generic_loop(torch.randn(5, 4), [3, 2], w1, b1, w2, b2)]
        [torch.Size([3, 4]), torch.Size([2, 4])]
    """
    if len(sizes) != w1.shape[0] or sum(sizes) != xs.shape[0]:
        raise ValueError(f"sizes {sizes} do not split {xs.shape[0]} rows among {w1.shape[0]} experts")
    return _GenericLoop.apply(xs, sizes, w1, b1, w2, b2)


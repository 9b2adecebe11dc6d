"""Moving tokens to their experts and back with row gathers only: no scatter-add, no atomics.

A top-k MoE sorts its ``T * k`` (token, expert) slots by expert (``order``), runs each expert on
its contiguous block and brings the outputs back. Written with indexing, the way there is
``x[order // k]``, whose gradient is an accumulating scatter over repeated rows, and the way back
an ``index_add_`` (atomics). Both have cheaper exact forms because ``order`` is a permutation:

- :func:`gather_slots`: forward ``x[order // k]``; backward un-permutes the gradient with the
  inverse permutation (a gather) and sums each token's ``k`` rows (a reshape and a reduction).
- :func:`unsort_slots`: forward ``y[inverse]`` (slot order again, ``(T, k, d)`` after a view);
  backward ``grad[order]``.

Both compile (``torch.compile``) and run in any dtype. Without gradients the inverse permutation is
not needed: :func:`unsort_rows` writes the rows back through ``order`` (one ``index_copy_``).
"""

from __future__ import annotations

import torch

__all__ = ["gather_slots", "inverse_permutation", "unsort_rows", "unsort_slots"]


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """``inverse`` with ``inverse[order[i]] == i`` (one scatter, no second sort)."""
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))


class _GatherSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x.index_select(0, torch.div(order, k, rounding_mode="floor"))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        per_slot = grad.index_select(0, inverse)
        return per_slot.view(-1, ctx.k, grad.shape[-1]).sum(1), None, None, None


class _UnsortSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(order)
        return y.index_select(0, inverse)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (order,) = ctx.saved_tensors
        return grad.index_select(0, order), None, None


def gather_slots(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
    """Rows of ``x`` ``(T, d)`` for the expert-sorted slots: ``x[order // k]``, ``(T * k, d)``.

    Args:
        x: one row per token.
        order: a permutation of the ``T * k`` slots (slot ``s`` is token ``s // k``'s ``s % k``-th choice).
        inverse: ``inverse_permutation(order)``.
        k: experts per token.

    Example:
        >>> x = torch.arange(3.0)[:, None]
        >>> order = torch.tensor([5, 0, 2, 1, 3, 4])
        >>> gather_slots(x, order, inverse_permutation(order), 2).flatten().tolist()
        [2.0, 0.0, 1.0, 0.0, 1.0, 2.0]
    """
    return _GatherSlots.apply(x, order, inverse, k)


def unsort_slots(y: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Expert-sorted rows ``y`` back in slot order: ``y[inverse]`` (``out[order] == y``)."""
    return _UnsortSlots.apply(y, order, inverse)


def unsort_rows(y: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Expert-sorted rows ``y`` back in slot order (``out[order] == y``), for inference: no inverse
    permutation, no autograd (use :func:`unsort_slots` where gradients flow).

    Example:
        >>> order = torch.tensor([2, 0, 1])
        >>> unsort_rows(torch.tensor([[20.0], [0.0], [10.0]]), order).flatten().tolist()
        [0.0, 10.0, 20.0]
    """
    return torch.empty_like(y).index_copy_(0, order, y)

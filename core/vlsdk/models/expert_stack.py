"""The generic experts' weights laid out once: one stacked ``(E, ...)`` tensor per projection.

Each generic :class:`~vlsdk.models.experts.ExpertMLP` keeps its ``nn.Linear`` parameters, so
parameter names, checkpoints, peft LoRA, int8 quantisation and the export's per-expert weights
are unchanged, but the storage of parameter ``i`` is slice ``i`` of four stacked tensors:
``fc1.weight`` ``(E, h, d)``, ``fc1.bias`` ``(E, h)``, ``fc2.weight`` ``(E, d, h)`` and
``fc2.bias`` ``(E, d)``. The per-expert loop and the export path read the modules, the grouped
GEMM reads the stacks (:func:`stacked_with_grad` carries the gradients back to the per-expert
parameters): none of them copies a weight to get its layout.

A conversion (``.to()``, ``.half()``) or ``load_state_dict(assign=True)`` gives parameters storage
of their own; :meth:`ExpertStack.tie` lays them out again (the MoE layer calls it after those)
and :meth:`ExpertStack.get` answers ``None`` until then, so a caller falls back to stacking.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ExpertStack", "stacked_with_grad"]


class ExpertStack:
    """Four stacked tensors whose slices are the generic experts' parameters.

    Example:
        >>> from vlsdk.models.experts import ExpertMLP
        >>> experts = [ExpertMLP(4, 8), ExpertMLP(4, 8)]
        >>> params = [p for e in experts for p in (e.fc1.weight, e.fc1.bias, e.fc2.weight, e.fc2.bias)]
        >>> stack = ExpertStack()
        >>> stack.tie(params)
        True
        >>> fc1_w = stack.get(params)[0]
        >>> fc1_w.shape, fc1_w[1].data_ptr() == experts[1].fc1.weight.data_ptr()
        (torch.Size([2, 8, 4]), True)
    """

    def __init__(self) -> None:
        self._stacks: tuple[torch.Tensor, ...] | None = None
        self._ptrs: tuple[int, ...] = ()
        self._ids: tuple[int, ...] = ()

    def tie(self, params: Sequence[torch.Tensor]) -> bool:
        """Stack ``params`` (``fc1.w, fc1.b, fc2.w, fc2.b`` per expert) and point each at its slice.

        Values are kept; the parameter objects stay the same (optimizers keep them). Returns
        ``False`` (and leaves them alone) when they cannot share a stack: mixed devices, dtypes or
        shapes, or the ``meta`` device.
        """
        self._stacks, self._ptrs, self._ids = None, (), ()
        if len(params) < 4 or len(params) % 4:
            return False
        kinds = [params[i::4] for i in range(4)]
        first = params[0]
        if first.device.type == "meta" or any(p.device != first.device or p.dtype != first.dtype for p in params):
            return False
        if any(p.shape != ps[0].shape for ps in kinds for p in ps):
            return False
        with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable in training
            stacks = tuple(torch.stack([p.detach() for p in ps]) for ps in kinds)
            for stack, ps in zip(stacks, kinds, strict=True):
                for i, p in enumerate(ps):
                    p.data = stack[i]
        self._stacks = stacks
        self._ids = tuple(map(id, params))
        self._ptrs = tuple(p.data_ptr() for p in params)
        return True

    def get(self, params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...] | None:
        """``(fc1_w, fc1_b, fc2_w, fc2_b)`` stacked, if ``params`` are still their slices; else ``None``."""
        if self._stacks is None or tuple(map(id, params)) != self._ids:
            return None
        if any(p.data_ptr() != q for p, q in zip(params, self._ptrs, strict=True)):
            return None
        return self._stacks

    def clear(self) -> None:
        """Forget the stacks (the parameters keep their values and storage)."""
        self._stacks, self._ptrs, self._ids = None, (), ()


class _StackedWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, stacks: tuple[torch.Tensor, ...], *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.n = len(params) // 4
        return tuple(s.view_as(s) for s in stacks)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        per_kind = [g.unbind(0) if g is not None else (None,) * ctx.n for g in grads]
        return (None, *(per_kind[k][e] for e in range(ctx.n) for k in range(4)))


def stacked_with_grad(stacks: tuple[torch.Tensor, ...], params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The stacks as tensors of the autograd graph: their gradients reach the per-expert ``params``.

    Args:
        stacks: what :meth:`ExpertStack.get` returned for ``params``.
        params: ``fc1.w, fc1.b, fc2.w, fc2.b`` per expert (slices of ``stacks``).

    Returns:
        The four stacks (aliases, no copy); the gradient of stack ``k`` is unbound into expert
        ``e``'s parameter ``4 * e + k``, exactly what ``torch.stack`` of the parameters would give.
    """
    if not torch.is_grad_enabled() or not any(p.requires_grad for p in params):
        return stacks
    return _StackedWithGrad.apply(stacks, *params)

"""Grouped GEMM for the MoE layer: a compile-safe ``torch._grouped_mm`` and a cache of stacked weights.

``torch._grouped_mm`` runs in fp32 on the CPU in eager mode, but its fake (meta) kernel only accepts
bf16, so ``torch.compile`` cannot trace an fp32 call. :func:`grouped_mm` calls the aten op directly
for bf16 (where inductor has its own kernels) and otherwise goes through the custom op
``vlsdk::grouped_mm``, whose fake kernel accepts any floating dtype and whose backward is the same
op. The two layouts the MoE needs are supported: ``(M, K) x (E, K, N) -> (M, N)`` (rows grouped by
``offs``) and ``(K, M) x (M, N) -> (E, K, N)`` (the weight gradient).

:class:`StackedWeights` keeps the generic experts' weights stacked for the grouped GEMM while
gradients are off, keyed on every source parameter's identity, storage, dtype and version counter,
so an optimizer step, ``load_state_dict``, ``.to()`` or an in-place edit under ``no_grad``
invalidates it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["StackedWeights", "grouped_mm"]


@torch.library.custom_op("vlsdk::grouped_mm", mutates_args=())
def _grouped_mm_op(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return torch._grouped_mm(a, b, offs=offs)


@_grouped_mm_op.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if b.dim() == 3:  # (M, K) x (E, K, N)
        return a.new_empty(a.shape[0], b.shape[2])
    return a.new_empty(offs.shape[0], a.shape[0], b.shape[1])  # (K, M) x (M, N) -> (E, K, N)


def _setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: torch.Tensor) -> None:
    a, b, offs = inputs
    ctx.save_for_backward(a, b, offs)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:
    a, b, offs = ctx.saved_tensors
    if b.dim() != 3:
        raise NotImplementedError("vlsdk::grouped_mm: double backward is not supported")
    grad_a = _grouped_mm_op(grad, b.transpose(1, 2), offs) if ctx.needs_input_grad[0] else None
    grad_b = _grouped_mm_op(a.t(), grad, offs) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b, None


_grouped_mm_op.register_autograd(_backward, setup_context=_setup)


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``torch._grouped_mm(a, b, offs=offs)`` that ``torch.compile`` can trace in any float dtype.

    Args:
        a: ``(M, K)`` rows sorted by group.
        b: ``(E, K, N)`` one matrix per group.
        offs: ``(E,)`` int32 cumulative row counts (end of each group's rows in ``a``).

    Example:
        >>> a, b = torch.randn(5, 8), torch.randn(2, 8, 4)  # row strides a multiple of 16 bytes
        >>> y = grouped_mm(a, b, torch.tensor([2, 5], dtype=torch.int32))
        >>> torch.allclose(y[:2], a[:2] @ b[0]) and torch.allclose(y[2:], a[2:] @ b[1])
        True
    """
    if a.dtype == torch.bfloat16 or not torch.compiler.is_compiling():
        return torch._grouped_mm(a, b, offs=offs)
    return _grouped_mm_op(a, b, offs)


_watching = False


def _bump_fused_versions(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    """A fused optimizer step (``AdamW(fused=True)``) writes parameters in one kernel without bumping
    their ``_version``; bump them, so that caches keyed on versions see the step."""
    for group in optimizer.param_groups:
        if group.get("fused"):
            torch.autograd.graph.increment_version(group["params"])


def _watch_fused_optimizers() -> None:
    """Register :func:`_bump_fused_versions` as a global ``torch.optim`` post-step hook, once."""
    global _watching
    if not _watching:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_bump_fused_versions)
        _watching = True


class StackedWeights:
    """A value computed from parameters, recomputed only when one of them changed.

    The key is each parameter's ``id``, ``data_ptr``, dtype and ``_version`` (bumped by every
    in-place write: optimizer steps, ``copy_`` in ``load_state_dict``, ``fill_`` under ``no_grad``;
    a fused optimizer's kernel does not bump it, so a global post-step hook does that for fused
    ``torch.optim`` optimizers). Only use it while gradients are off: the cached tensors carry no
    autograd graph.

    Args:
        build: computes the value from the parameters (and the extra arguments given to :meth:`get`).
    """

    def __init__(self, build: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        _watch_fused_optimizers()
        self.build = build
        self._key: tuple | None = None
        self._value: tuple[torch.Tensor, ...] | None = None

    @staticmethod
    def key(params: Sequence[torch.Tensor]) -> tuple:
        return tuple((id(p), p.data_ptr(), p.dtype, p._version) for p in params)

    def get(self, params: Sequence[torch.Tensor], *args: object) -> tuple[torch.Tensor, ...]:
        """The cached value of ``build(params, *args)``, rebuilt (without autograd) if any parameter
        changed or ``args`` differ from the last call's."""
        key = (self.key(params), args)
        if self._value is None or key != self._key:
            with torch.no_grad():
                self._value = self.build(params, *args)
            self._key = key
        return self._value

    def clear(self) -> None:
        """Drop the cached value (e.g. when the set of experts changes)."""
        self._key = self._value = None

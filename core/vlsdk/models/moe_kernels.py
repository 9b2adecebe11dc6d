"""Triton kernels for the MoE layer's inference path on the GPU: routing, slot gather, combine.

An eager MoE forward spends most of its host time on small aten ops around the two grouped GEMMs
(``benchmarks/host_work.py``): the top-k and its renormalisation, the expert-id cast, the padded
gather, the un-permutation, the gate-weighted sum, the fc2 biases and the shared expert's add.
Three kernels do that work in three launches:

- :func:`route`: top-k of the router logits, the gate weights renormalised over the chosen
  experts (softmax or sigmoid scores), and the 1-byte sort keys, from one read of the logits.
- :func:`gather_rows`: the expert-sorted slots' token rows, each with the constant ``1`` column
  the fc1 bias rides on (no ``cat``), cast to the GEMM dtype on the way, plus (optionally) one row
  per token for the shared expert after the routed slots, and the inverse permutation.
- :func:`combine`: each token's ``k`` expert rows read back through the inverse permutation,
  biased and weighted in float32, plus the shared expert's row: one write of the output.

The routing is the same as :class:`~vlsdk.models.router.Router`'s (top-k of the same fp32
logits; a tie goes to the lower expert index); weights and sums are computed in float32 and rounded
once, so outputs differ from the aten path only by that rounding. Inference only (no autograd): the
layer uses them on CUDA while gradients are off and nothing is being compiled or traced
(:func:`available`). They run on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``,
set before this module builds its kernels), which the tests use where there is no GPU.

Every launch adds one to :data:`~vlsdk.ops.triton_launch.LAUNCHES` (``benchmarks/host_work.py``
counts them with the aten ops).
"""

from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import torch

from vlsdk.ops.triton_launch import KernelError, interpreted, launch, triton_importable

__all__ = ["available", "check", "combine", "gather_rows", "route", "self_check"]

_disabled: dict[torch.device, str] = {}


def _launch(name: str, kernel: object, grid: tuple[int, ...], *args: object, **meta: object) -> None:
    """:func:`~vlsdk.ops.triton_launch.launch`; a failure also turns the kernels off on that device."""
    try:
        launch(name, kernel, grid, *args, **meta)
    except KernelError as err:
        _disable(args[0].device, str(err))  # type: ignore[attr-defined]
        raise


def _disable(device: torch.device, reason: str) -> str:
    """Stop using the kernels on ``device`` (one warning); returns ``reason``."""
    if device not in _disabled:
        _disabled[device] = reason
        warnings.warn(f"vlsdk: the MoE layer's Triton kernels failed on {device} ({reason[:300]}); the MoE "
                      "layers use the aten path there (slower in eager mode, same results)", stacklevel=4)
    return reason


def available(x: torch.Tensor) -> bool:
    """Whether the fused inference kernels can serve ``x``: Triton importable, CUDA (or the
    interpreter), no gradient, not compiling or tracing, and the kernels passed their check on
    ``x``'s device (:func:`self_check`, once per device)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if x.device.type == "cpu":
        return interpreted() and triton_importable() and x.device not in _disabled
    if not x.is_cuda or x.device in _disabled or not triton_importable():
        return False
    if x.device not in _checked and torch.cuda.is_current_stream_capturing():
        return False  # the check copies to the device: not while a CUDA graph is being captured
    return self_check(x.device) is None


_checked: set[torch.device] = set()


def self_check(device: torch.device) -> str | None:
    """:func:`check`, once per device."""
    if device not in _checked:
        _checked.add(device)
        reason = check(device)
        if reason is not None:
            _disable(device, reason)
    return _disabled.get(device)


def check(device: torch.device) -> str | None:
    """Build and run the three kernels once on ``device`` against torch on small inputs.

    Returns ``None`` when they compile and agree; otherwise the reason. :func:`self_check` then
    warns once and the MoE layers keep the aten path on that device (a Triton or driver that cannot
    build these kernels costs speed, never a wrong result or a failed forward; a later build that
    fails, for another shape, raises :class:`KernelError`, which the layer answers the same way).
    """
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            logits = torch.randn(37, 9, generator=gen).to(device)
            idx, key, weight = route(logits, 3)
            top, ref_idx = logits.softmax(-1).topk(3, dim=-1)
            if not torch.equal(idx, ref_idx) or not torch.equal(key.long(), ref_idx.reshape(-1)):
                return "route chose other experts than torch.topk"
            if not torch.allclose(weight, top / top.sum(-1, keepdim=True), rtol=1e-5, atol=1e-6):
                return "route's gate weights differ from torch's"
            x = torch.randn(37, 24, generator=gen).to(device)
            order = torch.argsort(key, stable=True)
            rows, inverse = gather_rows(x, order, 3, 16, torch.float32, shared=True)
            if not torch.equal(rows[:, :24], torch.cat([x[order // 3], x])) or not (rows[:, 24] == 1).all():
                return "gather_rows copied other rows than torch's indexing"
            bias = torch.randn(10, 24, generator=gen).to(device)
            out = combine(rows[:, :24].contiguous(), inverse, idx, weight, bias, 9, torch.float32, shared=True)
            slots = rows[:, :24][inverse].view(37, 3, 24) + bias[idx]
            expect = (weight[..., None] * slots).sum(1) + x + bias[9]
            if not torch.allclose(out, expect, rtol=1e-4, atol=1e-4):
                return "combine's sums differ from torch's"
    except Exception as err:  # noqa: BLE001 - any build or launch failure means: use the aten path
        return f"{type(err).__name__}: {err}"
    return None


@functools.cache
def _kernels() -> SimpleNamespace:
    """The jitted kernels, built on first use (so ``TRITON_INTERPRET`` is read then)."""
    import triton
    import triton.language as tl

    @triton.jit
    def route_kernel(logits_ptr, idx_ptr, key_ptr, weight_ptr, n_tok, n_exp, stride,
                     K: tl.constexpr, SIGMOID: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
        rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)  # offsets past 2**31
        cols = tl.arange(0, BLOCK_E)
        rmask = rows < n_tok
        mask = rmask[:, None] & (cols[None, :] < n_exp)
        x = tl.load(logits_ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=float("-inf"))
        top = tl.max(x, axis=1)
        left = x
        chosen = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int1)
        for j in tl.static_range(K):  # k argmaxes; tl.max breaks ties towards the lower index
            _, i = tl.max(left, axis=1, return_indices=True)
            tl.store(idx_ptr + rows * K + j, i.to(tl.int64), mask=rmask)
            tl.store(key_ptr + rows * K + j, i.to(key_ptr.dtype.element_ty), mask=rmask)
            hit = cols[None, :] == i[:, None]
            chosen = chosen | hit
            left = tl.where(hit, float("-inf"), left)
        if SIGMOID:
            score = tl.where(chosen, 1.0 / (1.0 + tl.exp(-x)), 0.0)
        else:
            score = tl.where(chosen, tl.exp(x - top[:, None]), 0.0)
        w = score / tl.sum(score, axis=1)[:, None]
        left = x
        for j in tl.static_range(K):  # the same order again, to store each choice's weight
            _, i = tl.max(left, axis=1, return_indices=True)
            hit = cols[None, :] == i[:, None]
            tl.store(weight_ptr + rows * K + j, tl.sum(tl.where(hit, w, 0.0), axis=1), mask=rmask)
            left = tl.where(hit, float("-inf"), left)

    @triton.jit
    def gather_kernel(x_ptr, order_ptr, out_ptr, inverse_ptr, n_slots, n_rows, dim, width, stride_x,
                      K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
        rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # offsets past 2**31
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        routed = rows < n_slots
        slot = tl.load(order_ptr + rows, mask=routed, other=0)
        src = tl.where(routed, slot // K, rows - n_slots)  # rows past the slots: one per token (shared)
        rmask = rows < n_rows
        x = tl.load(x_ptr + src[:, None] * stride_x + cols[None, :],
                    mask=rmask[:, None] & (cols[None, :] < dim), other=0.0).to(tl.float32)
        x = tl.where(cols[None, :] == dim, 1.0, x)  # the fc1 bias column
        tl.store(out_ptr + rows[:, None] * width + cols[None, :], x.to(out_ptr.dtype.element_ty),
                 mask=rmask[:, None] & (cols[None, :] < width))
        if tl.program_id(1) == 0:
            tl.store(inverse_ptr + slot, rows, mask=routed)

    @triton.jit
    def combine_kernel(ys_ptr, inverse_ptr, idx_ptr, weight_ptr, bias_ptr, out_ptr, n_tok, dim, n_generic,
                       shared_row0, K: tl.constexpr, SHARED: tl.constexpr, BLOCK_T: tl.constexpr,
                       BLOCK_D: tl.constexpr):
        rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)  # offsets past 2**31
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        rmask = rows < n_tok
        mask = rmask[:, None] & (cols[None, :] < dim)
        acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(K):
            pos = tl.load(inverse_ptr + rows * K + j, mask=rmask, other=0)
            e = tl.load(idx_ptr + rows * K + j, mask=rmask, other=0)
            w = tl.load(weight_ptr + rows * K + j, mask=rmask, other=0.0).to(tl.float32)
            generic = e < n_generic  # a domain expert's slot rode in the last group: mixed in later
            w = tl.where(generic, w, 0.0)
            e = tl.where(generic, e, 0)
            y = tl.load(ys_ptr + pos[:, None] * dim + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            b = tl.load(bias_ptr + e[:, None] * dim + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += w[:, None] * (y + b)
        if SHARED:
            y = tl.load(ys_ptr + (shared_row0 + rows)[:, None] * dim + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)
            b = tl.load(bias_ptr + n_generic * dim + cols, mask=cols < dim, other=0.0).to(tl.float32)
            acc += y + b[None, :]
        tl.store(out_ptr + rows[:, None] * dim + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)

    return SimpleNamespace(route=route_kernel, gather=gather_kernel, combine=combine_kernel, cdiv=triton.cdiv,
                           next_power_of_2=triton.next_power_of_2)


def route(logits: torch.Tensor, k: int, score: str = "softmax",
          key_dtype: torch.dtype = torch.uint8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` experts of ``(T, E)`` fp32 router logits and their renormalised gate weights.

    Args:
        logits: ``(T, E)`` float32, rows contiguous.
        k: experts per token.
        score: ``"softmax"`` (weights: softmax over the chosen logits) or ``"sigmoid"`` (the chosen
            sigmoids divided by their sum), what :class:`~vlsdk.models.router.Router` computes.
        key_dtype: dtype of the flat sort keys (``uint8`` for up to 255 experts).

    Returns:
        ``idx`` ``(T, k)`` int64 in descending score order, ``key`` ``(T * k,)`` the same ids in
        ``key_dtype``, ``weight`` ``(T, k)`` float32.
    """
    logits = logits.contiguous()  # (a no-op for the router's addmm output)
    n_tok, n_exp = logits.shape
    idx = torch.empty(n_tok, k, dtype=torch.int64, device=logits.device)
    key = torch.empty(n_tok * k, dtype=key_dtype, device=logits.device)
    weight = torch.empty(n_tok, k, dtype=torch.float32, device=logits.device)
    if n_tok:
        kern = _kernels()
        block_e = max(16, kern.next_power_of_2(n_exp))
        block_t = max(1, min(128, 4096 // block_e))
        _launch("route", kern.route, (kern.cdiv(n_tok, block_t),), logits, idx, key, weight, n_tok, n_exp,
                logits.stride(0), K=k, SIGMOID=score == "sigmoid", BLOCK_T=block_t, BLOCK_E=block_e)
    return idx, key, weight


def gather_rows(x: torch.Tensor, order: torch.Tensor, k: int, pad: int, dtype: torch.dtype,
                shared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert-sorted slots' token rows with the fc1 bias column, and the inverse permutation.

    Args:
        x: ``(T, d)`` tokens (any float dtype; cast to ``dtype`` on the way).
        order: ``(T * k,)`` int64 permutation of the slots sorted by expert (slot ``s`` is token ``s // k``).
        k: experts per token.
        pad: extra columns; column ``d`` is 1, the rest 0 (the layer's ``_PAD``).
        dtype: dtype of the rows (the GEMM's).
        shared: also append one row per token (rows ``T * k + t``), for the shared expert.

    Returns:
        ``rows`` ``(T * k [+ T], d + pad)`` and ``inverse`` ``(T * k,)`` with ``inverse[order[i]] == i``.
    """
    x = x if x.stride(-1) == 1 else x.contiguous()
    order = order.contiguous()
    n_tok, dim = x.shape
    n_slots = order.numel()
    n_rows = n_slots + (n_tok if shared else 0)
    width = dim + pad
    out = torch.empty(n_rows, width, dtype=dtype, device=x.device)
    inverse = torch.empty_like(order)
    if n_rows:
        kern = _kernels()
        block_d = min(128, kern.next_power_of_2(width))
        grid = (kern.cdiv(n_rows, 32), kern.cdiv(width, block_d))
        _launch("gather", kern.gather, grid, x, order, out, inverse, n_slots, n_rows, dim, width, x.stride(0),
                K=k, BLOCK_M=32, BLOCK_D=block_d)
    return out, inverse


def combine(ys: torch.Tensor, inverse: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            n_generic: int, out_dtype: torch.dtype, shared: bool = False) -> torch.Tensor:
    """``out[t] = sum_j w_tj * (ys[inverse[t*k + j]] + bias[i_tj])`` (+ the shared row), in float32.

    Args:
        ys: ``(T * k [+ T], d)`` expert outputs in expert-sorted order (then the shared rows).
        inverse: ``(T * k,)`` sorted position of each slot.
        idx: ``(T, k)`` experts; slots of experts ``>= n_generic`` (domain experts) get weight 0.
        weight: ``(T, k)`` gate weights.
        bias: ``(n_generic [+ 1], d)`` fc2 biases (the shared expert's last).
        n_generic: generic experts (rows of ``bias`` before the shared one).
        out_dtype: dtype of the ``(T, d)`` output.
        shared: add row ``T * k + t`` of ``ys`` and the shared bias to token ``t``.
    """
    ys, inverse, idx, weight, bias = (t.contiguous() for t in (ys, inverse, idx, weight, bias))
    n_tok, k = idx.shape
    dim = ys.shape[1]
    out = torch.empty(n_tok, dim, dtype=out_dtype, device=ys.device)
    if n_tok:
        kern = _kernels()
        block_d = min(128, kern.next_power_of_2(dim))
        grid = (kern.cdiv(n_tok, 32), kern.cdiv(dim, block_d))
        _launch("combine", kern.combine, grid, ys, inverse, idx, weight, bias, out, n_tok, dim, n_generic,
                n_tok * k, K=k, SHARED=shared, BLOCK_T=32, BLOCK_D=block_d)
    return out

"""A weight-only int8 GEMM in Triton: ``y = (x @ qweight.T) * scale + bias`` with the int8 weight
converted to the input's dtype tile by tile, in registers.

The dequantising path of :class:`~vlsdk.quant.Int8Linear` writes the whole float weight to memory
on every call, and its int8 path quantises the activations with a dozen small kernels around
``torch._int_mm``; on an H100 both ran slower than a bf16 ``nn.Linear`` (BENCHMARKS.md, "Int8 that
computes in int8"). This kernel reads one byte per weight and does the rest in its epilogue, one
launch per call. torchao's and gpt-fast's weight-only int8 layers get the same fusion from
``torch.compile``; this one needs no compile.

Inference only (no autograd). CUDA, or the CPU under Triton's interpreter (``TRITON_INTERPRET=1``
set before Triton is imported; the tests run it that way). A kernel that fails to build raises
:class:`~vlsdk.ops.triton_launch.KernelError`.
"""

from __future__ import annotations

import functools

import torch

from vlsdk.ops.triton_launch import launch

__all__ = ["w8a16_linear"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def _kernel():  # noqa: ANN202 - a Triton JITFunction
    import triton
    import triton.language as tl

    @triton.jit
    def w8_matmul(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                  HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        grid_m = tl.cdiv(M, BLOCK_M)
        grid_n = tl.cdiv(N, BLOCK_N)
        group = pid // (GROUP_M * grid_n)  # grouped launch order: neighbouring programs share weight tiles
        first_m = group * GROUP_M
        size_m = tl.minimum(grid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * grid_n)) % size_m
        pid_n = (pid % (GROUP_M * grid_n)) // size_m
        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            a = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :],
                        mask=(offs_m[:, None] < M) & (k[None, :] < K), other=0.0)
            w = tl.load(w_ptr + offs_n[None, :] * stride_wn + k[:, None],
                        mask=(offs_n[None, :] < N) & (k[:, None] < K), other=0)
            if DOT_F32:  # float32 input, or Triton's CPU interpreter (which multiplies bf16 tiles wrongly):
                # full float32 products ("ieee"; the GPU default, tf32, rounds inputs to 10 mantissa bits)
                acc += tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
            else:  # int8 values are exact in fp16, bf16 and fp32: the tensor cores take the input's dtype
                acc += tl.dot(a, w.to(a.dtype))
        nmask = offs_n < N
        acc = acc * tl.load(scale_ptr + offs_n, mask=nmask, other=0.0)[None, :]
        if HAS_BIAS:
            acc = acc + tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & nmask[None, :])

    return w8_matmul, triton.cdiv


def _blocks(m: int, n: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """Tile sizes: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps); small inputs get short tiles (memory-bound)."""
    block_k = 32 if dtype == torch.float32 else 64
    if m <= 16:
        return 16, 64, block_k, 4
    if m <= 64:
        return 64, 64, block_k, 4
    return 128, 128, block_k, 8


def w8a16_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """``(x @ qweight.T) * scale + bias`` in one kernel, in ``x``'s dtype (float32 accumulation).

    Args:
        x: ``(..., K)`` float16, bfloat16 or float32.
        qweight: ``(N, K)`` int8, rows contiguous.
        scale: ``(N,)`` float32 per-output-channel scales.
        bias: ``(N,)`` or ``None``.

    Example (on a GPU, or with ``TRITON_INTERPRET=1``):
        >>> q = torch.randint(-127, 128, (8, 16), dtype=torch.int8)  # doctest: +SKIP
        >>> w8a16_linear(torch.randn(3, 16), q, torch.ones(8)).shape  # doctest: +SKIP
        torch.Size([3, 8])
    """
    if x.dtype not in _DTYPES:
        raise ValueError(f"w8a16_linear takes {', '.join(map(str, _DTYPES))} inputs, got {x.dtype}")
    n, k = qweight.shape
    if x.shape[-1] != k:
        raise ValueError(f"expected inputs of width {k}, got {tuple(x.shape)}")
    rows = x.reshape(-1, k)
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    qweight = qweight if qweight.stride(-1) == 1 else qweight.contiguous()
    m = rows.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m:
        kernel, cdiv = _kernel()
        block_m, block_n, block_k, warps = _blocks(m, n, x.dtype)
        grid = (cdiv(m, block_m) * cdiv(n, block_n),)
        args = (rows, qweight, scale.float().contiguous(), bias if bias is not None else scale, y, m, n, k,
                rows.stride(0), qweight.stride(0), y.stride(0))
        dot_f32 = not x.is_cuda or x.dtype == torch.float32
        launch("w8a16_linear", kernel, grid, *args, HAS_BIAS=bias is not None, DOT_F32=dot_f32,
               BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, num_warps=warps)
    return y.reshape(*x.shape[:-1], n)


"""Launching vlsdk's Triton kernels: whether Triton is there, its CPU interpreter, one launch.

Shared by the MoE layer's kernels (:mod:`vlsdk.models.moe_kernels`) and the weight-only int8 GEMM
(:mod:`vlsdk.quant.triton_w8`). :func:`launch` counts every launch in :data:`LAUNCHES`
(``benchmarks/host_work.py`` adds them to the aten ops), runs it under the tensors' CUDA device
(Triton launches on the current one), and turns a build or launch failure into :class:`KernelError`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import Counter

import torch

__all__ = ["LAUNCHES", "KernelError", "interpreted", "launch", "launching", "triton_importable"]

#: kernel launches so far, by kernel name (the host work the aten op count does not see)
LAUNCHES: Counter[str] = Counter()
_launching = 0


class KernelError(RuntimeError):
    """A Triton kernel failed to build or launch (the reason names the kernel and the error)."""


@functools.cache
def triton_importable() -> bool:
    """Whether ``triton`` imports (CUDA builds of torch ship it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def launching() -> bool:
    """Whether a launch is in progress (the interpreter's own tensor ops are not the caller's)."""
    return _launching > 0


def launch(name: str, kernel: object, grid: tuple[int, ...], *args: object, **meta: object) -> None:
    """``kernel[grid](*args, **meta)`` under the CUDA device of ``args[0]``, counted in :data:`LAUNCHES`.

    Raises:
        KernelError: the kernel failed to build or launch.
    """
    global _launching
    LAUNCHES[name] += 1
    _launching += 1
    device = args[0].device  # type: ignore[attr-defined]
    other_gpu = device.type == "cuda" and device.index != torch.cuda.current_device()
    try:
        with torch.cuda.device(device) if other_gpu else contextlib.nullcontext():
            kernel[grid](*args, **meta)  # type: ignore[index]
    except Exception as err:  # noqa: BLE001 - a build (e.g. a new specialisation) or launch failure
        raise KernelError(f"{name}: {type(err).__name__}: {err}") from err
    finally:
        _launching -= 1

"""Where the accelerator's time goes: kernel time of a callable by kind (GEMM, conv, attention, ...).

A compiled graph's fused kernels have lost their module names, so time is grouped by kernel-name
fragments instead (:data:`KERNEL_KINDS`, first match wins), which holds for eager, compiled and
CUDA-graph runs alike.

Example:
    >>> import torch
    >>> from vlsdk.inspect.kernels import kernel_breakdown
    >>> x = torch.randn(64, 64)
    >>> report = kernel_breakdown(lambda: x @ x, iters=2, device="cpu")
    >>> report.total_ms > 0 and "gemm" in report.by_kind
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["KERNEL_KINDS", "KernelBreakdown", "kernel_breakdown"]

#: Kernel-name fragments (lower case) of each kind; the first kind with a matching fragment wins.
KERNEL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("grouped gemm", ("grouped_mm", "group_gemm", "gemmuniversal")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("conv", ("conv", "fprop", "implicit", "nchw", "nhwc", "winograd", "dgrad", "wgrad")),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "sm90", "sm80", "mm", "linear", "matmul")),
    ("norm/pool", ("norm", "pool")),
    ("sort/topk", ("sort", "topk")),
    ("triton fused", ("triton",)),
    ("copy/elementwise", ("elementwise", "copy", "cat", "index", "gather", "scatter", "reduce", "fill")),
)


def kind_of(kernel_name: str) -> str:
    """The :data:`KERNEL_KINDS` kind of a kernel (``"other"`` when no fragment matches)."""
    low = kernel_name.lower()
    return next((kind for kind, frags in KERNEL_KINDS if any(f in low for f in frags)), "other")


@dataclass
class KernelBreakdown:
    """Kernel time per call of the profiled callable, in milliseconds.

    Attributes:
        total_ms: all kernels.
        by_kind: kind -> milliseconds, largest first.
        top: the slowest kernels, ``(name, milliseconds)``, slowest first.
    """

    total_ms: float
    by_kind: dict[str, float] = field(default_factory=dict)
    top: list[tuple[str, float]] = field(default_factory=list)

    def __str__(self) -> str:
        total = self.total_ms or 1.0
        lines = [f"kernel time per call: {self.total_ms:.2f} ms; "
                 + ", ".join(f"{k} {v / total:.0%}" for k, v in self.by_kind.items())]
        lines += [f"  {ms:7.3f} ms  {name[:110]}" for name, ms in self.top]
        return "\n".join(lines)


def kernel_breakdown(fn: Callable[[], object], iters: int = 5, top: int = 12,
                     device: str | torch.device = "cuda") -> KernelBreakdown:
    """Profile ``iters`` calls of ``fn`` (after one untimed call) and sum kernel time by kind.

    Args:
        fn: the work, e.g. ``lambda: model(x)`` (run it under ``inference_mode`` yourself).
        iters: profiled calls; figures are per call.
        top: how many of the slowest kernels to keep.
        device: ``"cuda"`` profiles GPU kernels, ``"cpu"`` the CPU ops (for a machine without one).
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
        sync()
    kernel_type = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    times = []
    for event in prof.key_averages():
        us = event.device_time_total if cuda else event.self_cpu_time_total
        if us > 0 and (not cuda or event.device_type == kernel_type):
            times.append((event.key, us / iters / 1e3))
    by_kind: dict[str, float] = {}
    for name, ms in times:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + ms
    return KernelBreakdown(
        total_ms=sum(by_kind.values()),
        by_kind=dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        top=sorted(times, key=lambda kv: -kv[1])[:top],
    )

"""Inference throughput of a PCB detector (boards per second), for ``vlsdk pcb --benchmark``.

Times forward + decoding (score threshold, top-k, NMS) of full batches after warm-up, with device
synchronisation around each timed batch. The issue's target is 620 boards/s at 640 x 640 in bf16
on one H100; this module measures, ``BENCHMARKS.md`` records.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlsdk import VLModel

__all__ = ["ThroughputResult", "measure_throughput"]


@dataclass
class ThroughputResult:
    """Boards per second (median over the timed batches) and the settings it was measured with.

    ``forward_boards_per_s`` times the forward pass alone (no decoding), in the same run.
    """

    boards_per_s: float
    batch_size: int
    image_size: int
    in_chans: int
    device: str
    amp: str
    batches: int
    compiled: bool
    dense_moe: bool
    channels_last: bool = False
    forward_boards_per_s: float = float("nan")
    bf16_weights: bool = False
    kernels_ms: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def measure_throughput(model: VLModel, *, head: str = "pcb", batch_size: int = 64, image_size: int = 640,
                       device: str = "cuda", amp: str = "bf16", warmup: int = 5, batches: int = 20,
                       compile: bool = False, dense_moe: bool = False,
                       channels_last: bool = False, bf16_weights: bool = False,
                       profile: bool = False) -> ThroughputResult:
    """Measure detection throughput on random boards.

    Args:
        model: a VLModel with the detection head ``head``.
        head: the detection head's name.
        batch_size: boards per forward pass.
        image_size: square board side.
        device: torch device.
        amp: ``"none"`` or ``"bf16"`` autocast.
        warmup: untimed batches first (compilation, cuDNN autotuning).
        batches: timed batches.
        compile: wrap the model in ``torch.compile``.
        dense_moe: run the MoE layers on their static all-experts path (see ``set_dense_moe``).
        channels_last: model and boards in ``torch.channels_last`` (NHWC convolutions on GPU).
        bf16_weights: cast the model and boards to bf16 instead of autocasting fp32 weights each call
            (the router keeps fp32 arithmetic either way).
        profile: also record the forward's kernel time by kind (CUDA; printed, and kept in
            ``kernels_ms``).
    """
    import torch

    from vlsdk.tasks.detection import float_output

    if batch_size < 1 or image_size < 32 or warmup < 0 or batches < 1:
        raise ValueError(f"expected batch_size >= 1, image_size >= 32, warmup >= 0, batches >= 1, got "
                         f"{batch_size}, {image_size}, {warmup}, {batches}")
    if amp not in ("none", "bf16"):
        raise ValueError(f"amp must be 'none' or 'bf16', got {amp!r}")
    if bf16_weights and amp != "bf16":
        raise ValueError(f"bf16_weights needs amp='bf16', got amp={amp!r}")
    dev = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dtype = torch.bfloat16 if bf16_weights else torch.float32
    autocast = amp == "bf16" and not bf16_weights
    if bf16_weights:
        model = copy.deepcopy(model)  # the caller's fp32 weights stay as they are
    model = model.to(dev, dtype, memory_format=fmt).eval()
    model.set_dense_moe(dense_moe)
    det_head = model.heads[head]
    run = torch.compile(model) if compile else model
    images = torch.rand(batch_size, model.config.in_chans, image_size, image_size, device=dev, dtype=dtype).contiguous(
        memory_format=fmt)

    def forward() -> object:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            return run(images, heads=[head])[head]

    def step() -> None:
        det_head.decode(float_output(forward()))

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def median_seconds(fn: object) -> float:
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(batches):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    total = median_seconds(step)
    forward_only = median_seconds(forward)
    kernels = None
    if profile:
        from vlsdk.inspect.kernels import kernel_breakdown

        report = kernel_breakdown(forward, device=dev)
        print(report)
        kernels = report.by_kind | {"total": report.total_ms}
    model.set_dense_moe(False)
    return ThroughputResult(batch_size / total, batch_size, image_size, model.config.in_chans,
                            str(dev), amp, batches, compile, dense_moe, channels_last, batch_size / forward_only,
                            bf16_weights, kernels)

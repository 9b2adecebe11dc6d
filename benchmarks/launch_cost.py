"""Host cost of one launch: aten ops against the MoE layer's Triton kernels, on tiny inputs (CUDA).

An eager forward that is host-bound pays for every launch on the CPU: the dispatcher for an aten
op, Triton's launcher (argument binding, specialisation key, cache lookup) for a Triton kernel.
``benchmarks/host_work.py`` counts launches; this measures what one costs. Each case is called
``--calls`` times on inputs small enough that the GPU is never the bottleneck, and the thread's
CPU time per call is reported (median of ``--repeats`` interleaved blocks), beside the aten ops a
fused MoE layer no longer dispatches (``index_select``, ``index_copy_``, ``mul``, ``sum``, ``cat``).

    python benchmarks/launch_cost.py [--calls 2000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vlsdk.models import moe_kernels


def cases(device: torch.device) -> dict[str, Callable[[], object]]:
    """The calls to time, each on tiny tensors of ``device``."""
    t, k, d, e = 64, 4, 64, 16
    x = torch.randn(t, d, device=device)
    logits = torch.randn(t, e, device=device)
    idx, key, weight = moe_kernels.route(logits, k)
    order = torch.argsort(key, stable=True)
    rows, inverse = moe_kernels.gather_rows(x, order, k, 16, torch.float32, shared=True)
    ys = rows[:, :d].contiguous()
    bias = torch.randn(e + 1, d, device=device)
    slots = torch.randn(t, k, d, device=device)
    return {
        "aten add": lambda: x + x,
        "aten index_select": lambda: x.index_select(0, order // k),
        "aten index_copy_": lambda: torch.empty_like(ys[: t * k]).index_copy_(0, order, ys[: t * k]),
        "aten mul + sum": lambda: (slots * weight[..., None]).sum(1),
        "aten cat": lambda: torch.cat([x, x], dim=1),
        "aten softmax + topk": lambda: logits.softmax(-1).topk(k, dim=-1),
        "triton route": lambda: moe_kernels.route(logits, k),
        "triton gather_rows": lambda: moe_kernels.gather_rows(x, order, k, 16, torch.float32, shared=True),
        "triton combine": lambda: moe_kernels.combine(ys, inverse, idx, weight, bias, e, torch.float32, shared=True),
    }


def measure(fns: dict[str, Callable[[], object]], calls: int, repeats: int) -> dict[str, float]:
    """Median host CPU microseconds per call of each case, blocks interleaved across cases."""
    for fn in fns.values():  # warm-up: Triton compiles, the caching allocator fills
        for _ in range(20):
            fn()
    torch.cuda.synchronize()
    blocks: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0 = time.thread_time()
            for _ in range(calls):
                fn()
            blocks[name].append((time.thread_time() - c0) / calls * 1e6)
            torch.cuda.synchronize()
    return {name: statistics.median(v) for name, v in blocks.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="calls per timed block")
    p.add_argument("--repeats", type=int, default=7, help="timed blocks per case (median counts)")
    p.add_argument("--out", type=Path, default=Path("runs/launch_cost"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("launch_cost.py measures CUDA launches: no GPU here")
    device = torch.device("cuda")
    if moe_kernels.self_check(device) is not None:
        raise SystemExit(f"the MoE kernels failed their check on {device}: {moe_kernels.self_check(device)}")
    with torch.inference_mode():
        us = measure(cases(device), args.calls, args.repeats)
    for name, v in us.items():
        print(f"{name:22s} {v:7.2f} us host CPU per call")
    print(f"setting: {torch.cuda.get_device_name()}, torch {torch.__version__}, median of {args.repeats} blocks "
          f"x {args.calls} calls")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "launch_cost.json").write_text(json.dumps({"us_per_call": us, "setting": vars(args) | {
        "out": str(args.out)}}, indent=1))
    return us


if __name__ == "__main__":
    main()

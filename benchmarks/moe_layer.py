"""MoE layer vs one dense FFN vs all experts, measured side by side in one run.

The dense FFN has one expert's size, so a top-k MoE ideally costs ``k`` times the FFN; the
"all experts" row is what a naive implementation computes (every expert on every token).
"grouped" is the ``torch._grouped_mm`` path as it is (stacked weights cached while gradients are
off, fc1 bias folded into the GEMM, gather-only dispatch: tokens go to their experts and back by
row gathers with the inverse permutation, no scatter-add); "grouped-index-add" the same GEMMs with
the earlier dispatch (``flat[tokens]``, whose backward is an accumulating scatter, and
``index_add_`` back), kept as the reference the dispatch is measured against; "loop-autograd" the
loop path ("moe") with its generic experts written as autograd on ``unbind`` views of the stacks,
as before :mod:`vlsdk.models.expert_loop` (whose backward writes into stack-shaped gradients).
``--compile`` adds
"grouped-compiled" (``torch.compile`` of the layer, fullgraph); ``--profile`` prints the slowest
kernels of one forward+backward of each MoE case (``torch.profiler``).

    python benchmarks/moe_layer.py                       # CPU, fp32 (the issue's setting)
    python benchmarks/moe_layer.py --device cuda --dtype bfloat16 --tokens 65536
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vlsdk.models.moe as moe_module
from vlsdk.models.config import MoEConfig
from vlsdk.models.expert_loop import generic_loop
from vlsdk.models.experts import ExpertMLP
from vlsdk.models.grouped_mm import grouped_mm
from vlsdk.models.moe import _PAD, DynamicMoE, _count


def timeit(fn, device: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def grouped_index_add(moe: DynamicMoE, x: torch.Tensor) -> torch.Tensor:
    """The grouped path before the gather-only dispatch: ``flat[tokens]`` in (an accumulating scatter
    in backward) and ``index_add_`` back (atomics), kept as the reference the new one is measured against."""
    flat = x.reshape(-1, x.shape[-1])
    routing = moe.router(flat)
    idx, weight = routing.topk_idx, routing.topk_weight.to(x.dtype)
    k = idx.shape[1]
    assignment = idx.reshape(-1)
    order = torch.argsort(assignment, stable=True)
    counts = _count(assignment, len(moe.expert_names))
    tokens = order // k
    gates = weight.reshape(-1, 1)[order]
    w1, w2, b2 = moe._grouped_weights(flat.dtype)
    ones = torch.zeros(flat.shape[0], _PAD, dtype=flat.dtype, device=flat.device)
    ones[:, 0] = 1.0
    xs = torch.cat([flat, ones], dim=1)[tokens]
    offs = torch.cumsum(counts, 0).to(torch.int32)
    ys = grouped_mm(torch.nn.functional.gelu(grouped_mm(xs, w1, offs)), w2, offs)
    routed = torch.zeros_like(flat).index_add_(0, tokens, ys * gates)
    combine = torch.zeros(flat.shape[0], len(moe.expert_names), dtype=weight.dtype, device=flat.device)
    return routed.addmm_(combine.scatter_(1, idx, weight), b2).reshape(x.shape)


def loop_autograd(xs: torch.Tensor, sizes: list[int], *stacks: torch.Tensor) -> list[torch.Tensor]:
    """The loop path's generic experts before :func:`~vlsdk.models.expert_loop.generic_loop`: autograd
    on ``unbind`` views (its backward stacks the experts' weight gradients and fills a zero tensor of
    all rows per expert's input gradient)."""
    out, start = [], 0
    for (w1, b1, w2, b2), n in zip(zip(*(s.unbind(0) for s in stacks)), sizes):
        out.append(torch.nn.functional.linear(torch.nn.functional.gelu(
            torch.nn.functional.linear(xs[start:start + n], w1, b1)), w2, b2))
        start += n
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--compile", action="store_true", help="add the torch.compile'd grouped layer")
    p.add_argument("--profile", action="store_true", help="print the top kernels of each MoE case")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    dev = args.device
    cfg = MoEConfig(num_experts=args.experts, top_k=args.top_k, expert_hidden=args.hidden, num_shared=0)
    moe = DynamicMoE(args.dim, cfg).to(dev, dtype)
    ffn = ExpertMLP(args.dim, args.hidden).to(dev, dtype)
    x = torch.randn(1, args.tokens, args.dim, device=dev, dtype=dtype)
    # near-uniform routing, as a trained, load-balanced router gives
    with torch.no_grad():
        moe.router.weight.mul_(0.01)
    compiled = torch.compile(lambda t: moe(t)[0], fullgraph=True) if args.compile else None

    def run(name: str, xin: torch.Tensor) -> torch.Tensor:
        if name == "ffn":
            return ffn(xin)
        moe.dense = name == "all"  # the static every-expert-on-every-token path
        moe.grouped = name.startswith("grouped")  # one grouped GEMM per projection, no loop over experts
        try:
            if name == "grouped-index-add":
                return grouped_index_add(moe, xin)
            if name == "grouped-compiled":
                return compiled(xin)
            if name == "loop-autograd":
                moe_module.generic_loop = loop_autograd
            return moe(xin)[0]
        finally:
            moe.dense, moe.grouped = False, None
            moe_module.generic_loop = generic_loop

    def case(name: str, mode: str):
        if mode == "forward":
            return torch.no_grad()(lambda: run(name, x))
        return lambda: run(name, x.detach().requires_grad_(True)).float().sum().backward()

    cases = ("ffn", "moe", "loop-autograd", "grouped", "grouped-index-add",
             *(("grouped-compiled",) if compiled else ()), "all")
    grouped = [c for c in cases if c.startswith("grouped")]
    results: dict[str, float] = {}
    for mode in ("forward", "forward+backward"):
        runs: dict[str, list[float]] = {name: [] for name in cases}
        for name in cases:  # warm up (twice: the compiled case traces on its first call)
            case(name, mode)()
            case(name, mode)()
        for _ in range(args.repeats):  # interleave so drift hits every case alike
            for name in cases:
                runs[name] += timeit(case(name, mode), dev, 1)
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratio = med["moe"] / med["ffn"]
        results[f"{mode}/moe_over_ffn"] = ratio
        results[f"{mode}/ratio_to_ideal"] = ratio / args.top_k
        results[f"{mode}/all_over_moe"] = med["all"] / med["moe"]
        results[f"{mode}/loop_autograd_to_ideal"] = med["loop-autograd"] / med["ffn"] / args.top_k
        for g in grouped:
            results[f"{mode}/{g.replace('-', '_')}_over_ffn"] = med[g] / med["ffn"]
            results[f"{mode}/{g.replace('-', '_')}_to_ideal"] = med[g] / med["ffn"] / args.top_k
        print(f"{mode:17s} " + " | ".join(f"{n} {med[n] * 1e3:.2f} ms" for n in cases))
        print(f"{'':17s} moe/ffn {ratio:.2f}x (ideal {args.top_k:.1f}x -> {ratio / args.top_k:.3f}x of ideal) | "
              + " | ".join(f"{g}/ideal {med[g] / med['ffn'] / args.top_k:.3f}x" for g in grouped)
              + f" | loop-autograd/ideal {med['loop-autograd'] / med['ffn'] / args.top_k:.3f}x"
              + f" | grouped-index-add/grouped {med['grouped-index-add'] / med['grouped']:.2f}x"
              + f" | all/moe {med['all'] / med['moe']:.2f}x")
    print(f"setting: T={args.tokens} d={args.dim} hidden={args.hidden} E={args.experts} top-{args.top_k} "
          f"{args.dtype} on {dev} ({torch.get_num_threads()} threads), median of {args.repeats}")
    if args.profile:
        profile(("ffn", *[c for c in cases if c != "ffn"]), lambda name: case(name, "forward+backward"), dev)
    return results


def profile(cases, make, device: str, rows: int = 12) -> None:
    """Print the ``rows`` costliest kernels (device time) of one call of each case."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    for name in cases:
        fn = make(name)
        fn()
        with torch_profile(activities=activities) as prof:
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
        print(f"--- profile: {name} (forward+backward, one call)")
        print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))


if __name__ == "__main__":
    main()

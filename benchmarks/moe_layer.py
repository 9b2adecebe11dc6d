"""MoE layer vs one dense FFN vs all experts, measured side by side in one run.

The dense FFN has one expert's size, so a top-k MoE ideally costs ``k`` times the FFN; the
"all experts" row is what a naive implementation computes (every expert on every token).

    python benchmarks/moe_layer.py                       # CPU, fp32 (the issue's setting)
    python benchmarks/moe_layer.py --device cuda --dtype bfloat16 --tokens 65536
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlsdk.models.config import MoEConfig
from vlsdk.models.experts import ExpertMLP
from vlsdk.models.moe import DynamicMoE


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

    def run(name: str, xin: torch.Tensor) -> torch.Tensor:
        if name == "ffn":
            return ffn(xin)
        moe.dense = name == "all"  # the static every-expert-on-every-token path
        moe.grouped = name == "grouped"  # one grouped GEMM per projection instead of a loop over experts
        try:
            return moe(xin)[0]
        finally:
            moe.dense, moe.grouped = False, None

    def case(name: str, mode: str):
        if mode == "forward":
            return torch.no_grad()(lambda: run(name, x))
        return lambda: run(name, x.detach().requires_grad_(True)).float().sum().backward()

    cases = ("ffn", "moe", "grouped", "all")
    results: dict[str, float] = {}
    for mode in ("forward", "forward+backward"):
        runs: dict[str, list[float]] = {name: [] for name in cases}
        for name in cases:  # warm up
            case(name, mode)()
        for _ in range(args.repeats):  # interleave so drift hits every case alike
            for name in cases:
                runs[name] += timeit(case(name, mode), dev, 1)
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratio = med["moe"] / med["ffn"]
        results[f"{mode}/moe_over_ffn"] = ratio
        results[f"{mode}/ratio_to_ideal"] = ratio / args.top_k
        results[f"{mode}/all_over_moe"] = med["all"] / med["moe"]
        results[f"{mode}/grouped_over_ffn"] = med["grouped"] / med["ffn"]
        print(f"{mode:17s} ffn {med['ffn'] * 1e3:8.2f} ms | moe {med['moe'] * 1e3:8.2f} ms | grouped "
              f"{med['grouped'] * 1e3:8.2f} ms | all-experts {med['all'] * 1e3:8.2f} ms | moe/ffn {ratio:.2f}x "
              f"(ideal {args.top_k:.1f}x -> {ratio / args.top_k:.3f}x of ideal) | grouped/ffn "
              f"{med['grouped'] / med['ffn']:.2f}x | all/moe {med['all'] / med['moe']:.2f}x")
    print(f"setting: T={args.tokens} d={args.dim} hidden={args.hidden} E={args.experts} top-{args.top_k} "
          f"{args.dtype} on {dev} ({torch.get_num_threads()} threads), median of {args.repeats}")
    return results


if __name__ == "__main__":
    main()

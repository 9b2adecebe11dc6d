"""MoE layer vs one dense FFN vs all experts, measured side by side in one run.

The dense FFN has one expert's size, so a top-k MoE ideally costs ``k`` times the FFN; the
"all experts" row is what a naive implementation computes (every expert on every token).
"grouped" is the ``torch._grouped_mm`` path as it is (stacked weights cached while gradients are
off, fc1 bias folded into the GEMM, fc2 bias as one (T, E) x (E, d) product); "grouped-nocache"
the same with the cache dropped before every call; "grouped-v0" the earlier grouped path (weights
re-stacked on every call, per-row biases gathered into (T*k, hidden) and (T*k, d) tensors), kept
here as the reference those two changes are measured against.

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
from vlsdk.models.moe import DynamicMoE, _count


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


def grouped_v0(moe: DynamicMoE, x: torch.Tensor) -> torch.Tensor:
    """The grouped path before the weight cache and the bias folding (dropless, generic experts only)."""
    flat = x.reshape(-1, x.shape[-1])
    routing = moe.router(flat)
    idx, weight = routing.topk_idx, routing.topk_weight.to(x.dtype)
    k = idx.shape[1]
    assignment = idx.reshape(-1)
    order = torch.argsort(assignment, stable=True)
    counts = _count(assignment, len(moe.expert_names))
    tokens = order // k
    gates = weight.reshape(-1, 1)[order]
    xs = flat[tokens]
    experts = moe._modules_in_order()
    w1 = torch.stack([e.fc1.weight for e in experts]).transpose(1, 2)
    w2 = torch.stack([e.fc2.weight for e in experts]).transpose(1, 2)
    b1 = torch.stack([e.fc1.bias for e in experts])
    b2 = torch.stack([e.fc2.bias for e in experts])
    offs = torch.cumsum(counts, 0).to(torch.int32)
    expert_of_row = torch.repeat_interleave(torch.arange(len(experts), device=xs.device), counts,
                                            output_size=xs.shape[0])
    hidden = torch.nn.functional.gelu(torch._grouped_mm(xs, w1, offs=offs) + b1[expert_of_row])
    y = torch._grouped_mm(hidden, w2, offs=offs) + b2[expert_of_row]
    return torch.zeros_like(flat).index_add_(0, tokens, y * gates).reshape(x.shape)


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
        if name == "grouped-v0":
            return grouped_v0(moe, xin)
        if name == "grouped-nocache":
            moe._stacked.clear()
        moe.dense = name == "all"  # the static every-expert-on-every-token path
        moe.grouped = name.startswith("grouped")  # one grouped GEMM per projection, no loop over experts
        try:
            return moe(xin)[0]
        finally:
            moe.dense, moe.grouped = False, None

    def case(name: str, mode: str):
        if mode == "forward":
            return torch.no_grad()(lambda: run(name, x))
        return lambda: run(name, x.detach().requires_grad_(True)).float().sum().backward()

    cases = ("ffn", "moe", "grouped", "grouped-nocache", "grouped-v0", "all")
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
        for g in ("grouped", "grouped-nocache", "grouped-v0"):
            results[f"{mode}/{g.replace('-', '_')}_over_ffn"] = med[g] / med["ffn"]
            results[f"{mode}/{g.replace('-', '_')}_to_ideal"] = med[g] / med["ffn"] / args.top_k
        print(f"{mode:17s} " + " | ".join(f"{n} {med[n] * 1e3:.2f} ms" for n in cases))
        print(f"{'':17s} moe/ffn {ratio:.2f}x (ideal {args.top_k:.1f}x -> {ratio / args.top_k:.3f}x of ideal) | "
              + " | ".join(f"{g}/ideal {med[g] / med['ffn'] / args.top_k:.3f}x"
                           for g in ("grouped", "grouped-nocache", "grouped-v0"))
              + f" | grouped-v0/grouped {med['grouped-v0'] / med['grouped']:.2f}x"
              + f" | all/moe {med['all'] / med['moe']:.2f}x")
    print(f"setting: T={args.tokens} d={args.dim} hidden={args.hidden} E={args.experts} top-{args.top_k} "
          f"{args.dtype} on {dev} ({torch.get_num_threads()} threads), median of {args.repeats}")
    return results


if __name__ == "__main__":
    main()

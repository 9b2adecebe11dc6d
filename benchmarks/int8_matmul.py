"""Int8 matmul: float ``nn.Linear`` vs :class:`~vlsdk.quant.Int8Linear` dequantising vs int8 compute.

Part 1, speed: at the linear shapes of the ``base`` config (d=768: the dense FFN 768->3072->768,
the attention projections qkv 768->2304 and proj 768->768) and ``--tokens`` rows, the three
layers run side by side: each repeat calls every variant once, in turn (interleaved, so a change
in the machine's load hits all three alike), and the table shows the median wall milliseconds,
the speed-up of the int8 path over float and over the dequantising path, and the bytes of weight
each layer holds. On the CPU this runs once per ``--threads`` value (``torch.set_num_threads``).

Part 2, accuracy: a ``--config`` VLModel (random weights, seeded) with a segmentation head
runs on drawn images (:func:`vlsdk.testing.square_lesions`); a hook on every linear layer that
:func:`~vlsdk.quant.quantize_linear_layers` would replace feeds its real input to the float
layer, the dequantising int8 layer and the int8-compute layer; the relative error
``||a - b|| / ||b||`` per layer (max and mean over layers) and of the segmentation logits of the
whole quantised model are printed.

    OMP_NUM_THREADS=1 python benchmarks/int8_matmul.py                       # CPU, 1 and 2 threads
    python benchmarks/int8_matmul.py --threads 1 --tokens 64 256 --repeats 5
    python benchmarks/int8_matmul.py --device cuda --dtype bfloat16          # a GPU run
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlsdk import VLModel
from vlsdk.quant import Int8Linear, quantize_linear_layers, weight_bytes
from vlsdk.testing import square_lesions

__all__ = ["main", "SHAPES", "timer"]

#: (name, in_features, out_features) of the base config's linear layers
SHAPES: tuple[tuple[str, int, int], ...] = (
    ("ffn.fc1", 768, 3072), ("ffn.fc2", 3072, 768), ("attn.qkv", 768, 2304), ("attn.proj", 768, 768))
VARIANTS = ("float", "dequant", "int8")


def timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function that times one call of ``fn`` in ms (CUDA events on a GPU, wall time on the CPU)."""

    def run(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t0)
    return run


@torch.no_grad()
def speed(device: torch.device, dtype: torch.dtype, tokens: list[int], repeats: int) -> list[dict[str, Any]]:
    """Median ms of the three variants per (shape, tokens), interleaved repeats."""
    time_it = timer(device)
    rows = []
    for name, d_in, d_out in SHAPES:
        torch.manual_seed(0)
        lin = nn.Linear(d_in, d_out, device=device, dtype=dtype)
        layers = {"float": lin, "dequant": Int8Linear.from_linear(lin, compute="dequant"),
                  "int8": Int8Linear.from_linear(lin, compute="int8")}
        variants = VARIANTS + (("triton",) if device.type == "cuda" else ())  # the fused weight-only kernel
        if "triton" in variants:
            layers["triton"] = Int8Linear.from_linear(lin, compute="triton")
        for n in tokens:
            x = torch.randn(n, d_in, device=device, dtype=dtype)
            for layer in layers.values():  # warm-up (and the int8 path refuses loudly here, not mid-table)
                layer(x)
            times: dict[str, list[float]] = {v: [] for v in variants}
            for r in range(repeats):
                for v in variants[r % len(variants):] + variants[:r % len(variants)]:  # rotate who goes first
                    times[v].append(time_it(lambda layer=layers[v]: layer(x)))
            ms = {v: statistics.median(t) for v, t in times.items()}
            rows.append({"shape": name, "in": d_in, "out": d_out, "tokens": n, **{f"{v}_ms": ms[v] for v in variants},
                         "float_bytes": weight_bytes(lin), "int8_bytes": weight_bytes(layers["int8"])})
    return rows


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def accuracy(config: str, size: int, batch: int) -> dict[str, Any]:
    """Relative errors of the int8 and dequantising layers on a model's real activations."""
    torch.manual_seed(0)
    model = VLModel(config, in_chans=1).eval()
    model.add_head("seg", task="segmentation", num_classes=2)
    model.eval()
    images = square_lesions(batch, size=size).tensors[0]
    names = quantize_linear_layers(copy.deepcopy(model))
    errors: dict[str, list[float]] = {"int8_vs_float": [], "dequant_vs_float": [], "int8_vs_dequant": []}

    def hook(module: nn.Linear, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x = args[0]
        q = Int8Linear.from_linear(module)
        q.compute = "dequant"
        deq = q(x)
        q.compute = "int8"
        i8 = q(x)
        errors["int8_vs_float"].append(_rel(i8, out))
        errors["dequant_vs_float"].append(_rel(deq, out))
        errors["int8_vs_dequant"].append(_rel(i8, deq))

    handles = [model.get_submodule(n).register_forward_hook(hook) for n in names]
    ref = model(images, heads=["seg"])["seg"].logits
    for h in handles:
        h.remove()
    logits = {}
    for mode in ("int8", "dequant"):
        quantized = copy.deepcopy(model)
        quantize_linear_layers(quantized, compute=mode)
        logits[mode] = quantized(images, heads=["seg"])["seg"].logits
    return {"config": config, "layers": len(names), "calls": len(errors["int8_vs_float"]),
            **{f"{k}_max": max(v) for k, v in errors.items()},
            **{f"{k}_mean": statistics.fmean(v) for k, v in errors.items()},
            "logits_int8_vs_float": _rel(logits["int8"], ref), "logits_dequant_vs_float": _rel(logits["dequant"], ref),
            "logits_int8_vs_dequant": _rel(logits["int8"], logits["dequant"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both parts and print their tables; returns the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads (one table each)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--config", default="edge", help="VLModel config of the accuracy part ('' to skip it)")
    p.add_argument("--size", type=int, default=128, help="image size of the accuracy part")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results: dict[str, Any] = {"device": str(device), "dtype": args.dtype, "speed": {}}
    for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{threads} CPU thread(s)"
        print(f"\n{where}, {args.dtype}, median of {args.repeats} interleaved repeats, load average {load:.1f}")
        print(f"{'layer':10s} {'in->out':>10s} {'tokens':>6s} {'float ms':>9s} {'dequant ms':>10s} {'int8 ms':>8s} "
              f"{'int8/float':>10s} {'int8/deq':>8s} {'float MB':>8s} {'int8 MB':>7s}")
        rows = speed(device, dtype, args.tokens, args.repeats)
        for r in rows:
            print(f"{r['shape']:10s} {str(r['in']) + '->' + str(r['out']):>10s} {r['tokens']:6d} {r['float_ms']:9.3f} "
                  f"{r['dequant_ms']:10.3f} {r['int8_ms']:8.3f} {r['float_ms'] / r['int8_ms']:9.2f}x "
                  f"{r['dequant_ms'] / r['int8_ms']:7.2f}x {r['float_bytes'] / 1e6:8.2f} {r['int8_bytes'] / 1e6:7.2f}"
                  + (f"  triton {r['triton_ms']:.3f} ms ({r['float_ms'] / r['triton_ms']:.2f}x float)"
                     if "triton_ms" in r else ""))
        results["speed"][threads] = {"load_average": load, "rows": rows}
    if args.config:
        acc = accuracy(args.config, args.size, args.batch)
        results["accuracy"] = acc
        print(f"\naccuracy on {acc['config']} activations ({acc['layers']} quantised linears, {acc['calls']} calls), "
              "relative error ||a - b|| / ||b||:")
        for k in ("int8_vs_float", "dequant_vs_float", "int8_vs_dequant"):
            print(f"  per layer {k:17s} max {acc[k + '_max']:.4f}  mean {acc[k + '_mean']:.4f}")
        for k in ("int8_vs_float", "dequant_vs_float", "int8_vs_dequant"):
            print(f"  segmentation logits {k:17s} {acc['logits_' + k]:.4f}")
    return results


if __name__ == "__main__":
    main()

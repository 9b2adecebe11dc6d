"""The 4-bit base: weight bytes against bfloat16 and int8, the forward's speed, and its error.

Part 1, bytes (deterministic): each ``--configs`` model is cast to bfloat16, then its frozen
linear layers (all but routers and heads, :func:`~vlsdk.quant.quantize_linear_layers`) become
int8 (:class:`~vlsdk.quant.Int8Linear`) or 4-bit (:class:`~vlsdk.quant.Int4Linear`, groups of
``--group-size``); every other tensor stays bfloat16. The table gives the bytes of the whole
model's parameters and buffers (:func:`~vlsdk.quant.weight_bytes`) and the ratio to bfloat16.

Part 2, speed: at the linear shapes of ``base`` and ``--tokens`` rows, side by side in
interleaved repeats (median ms): ``F.linear`` in the input dtype, and :class:`Int4Linear`
(dequantise, then ``F.linear``). On the CPU also torch's own int4 kernel
``_weight_int4pack_mm_for_cpu`` (same values, its packed layout) with bfloat16 and with the
input dtype's inputs, the reason :class:`Int4Linear` does not use it on the CPU.

Part 3, error: the relative error ``||a - b|| / ||b||`` of a seeded ``--config`` model's
segmentation logits with 4-bit and with int8 linears against the float model, on drawn images.

    OMP_NUM_THREADS=2 python benchmarks/int4_base.py
    python benchmarks/int4_base.py --device cuda --dtype bfloat16 --configs base
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from int8_matmul import SHAPES, timer  # (this folder: run as a script)
from vlsdk import VLModel
from vlsdk.quant import Int4Linear, quantize_linear_layers, weight_bytes
from vlsdk.testing import square_lesions

__all__ = ["main"]

def model_bytes(config: str, group_size: int) -> dict[str, Any]:
    """Bytes of ``config`` in bfloat16, with an int8 base and with a 4-bit base."""
    row: dict[str, Any] = {"config": config}
    for label, bits in (("bf16", None), ("int8", 8), ("int4", 4)):
        model = VLModel(config).eval().to(torch.bfloat16)
        if bits is not None:
            quantize_linear_layers(model, bits=bits, group_size=group_size)
        row[label] = weight_bytes(model)
    return row


def _cpu_kernel(layer: Int4Linear, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch's CPU int4 matmul on ``layer``'s values (its own packed layout) plus the bias, inputs cast to ``dtype``."""
    q = torch.stack((layer.qweight & 15, layer.qweight >> 4), dim=-1).flatten(1).int()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scale_zero = layer.scale_zero.transpose(0, 1).contiguous().to(dtype)  # (groups, out, 2)
    bias = layer.bias.to(dtype) if layer.bias is not None else None

    def run(x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(dtype), packed, layer.group_size, scale_zero)
        return out if bias is None else out.add_(bias)
    return run


@torch.no_grad()
def speed(device: torch.device, dtype: torch.dtype, tokens: list[int], repeats: int,
          group_size: int) -> list[dict[str, Any]]:
    """Median ms per (shape, tokens) of each variant, in interleaved repeats."""
    time_it = timer(device)
    rows = []
    for name, d_in, d_out in SHAPES:
        torch.manual_seed(0)
        lin = nn.Linear(d_in, d_out, device=device, dtype=dtype)
        int4 = Int4Linear.from_linear(lin, group_size=group_size)
        variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"float": lin, "int4": int4}
        if device.type == "cpu":
            variants["cpu_kernel_bf16"] = _cpu_kernel(int4, torch.bfloat16)
            if dtype != torch.bfloat16:
                variants["cpu_kernel_" + str(dtype).removeprefix("torch.")] = _cpu_kernel(int4, dtype)
        for n in tokens:
            x = torch.randn(n, d_in, device=device, dtype=dtype)
            ref = lin(x).float()
            err = {k: float((f(x).float() - ref).norm() / ref.norm()) for k, f in variants.items()}  # also a warm-up
            names = list(variants)
            times: dict[str, list[float]] = {k: [] for k in names}
            for r in range(repeats):
                for k in names[r % len(names):] + names[:r % len(names)]:
                    times[k].append(time_it(lambda f=variants[k]: f(x)))
            rows.append({"shape": name, "in": d_in, "out": d_out, "tokens": n,
                         **{f"{k}_ms": statistics.median(t) for k, t in times.items()},
                         **{f"{k}_rel_err": e for k, e in err.items()}})
    return rows


@torch.no_grad()
def logits_error(config: str, size: int, batch: int, group_size: int) -> dict[str, float]:
    """Relative error of the segmentation logits with 4-bit and int8 linears against float."""
    torch.manual_seed(0)
    model = VLModel(config, in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.eval()
    images = square_lesions(batch, size=size).tensors[0]
    ref = model(images, heads=["seg"])["seg"].logits
    out = {}
    for label, bits in (("int8", 8), ("int4", 4)):
        quantized = copy.deepcopy(model)
        quantize_linear_layers(quantized, bits=bits, group_size=group_size)
        out[label] = float((quantized(images, heads=["seg"])["seg"].logits - ref).norm() / ref.norm())
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the three parts and print their tables; returns the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--configs", nargs="+", default=["edge", "small", "base"], help="models of the bytes table")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--config", default="edge", help="model of the error part ('' to skip it)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results: dict[str, Any] = {"device": str(device), "dtype": args.dtype}

    mib = 2.0 ** 20
    print(f"weights (parameters and buffers), every other tensor bfloat16, 4-bit groups of {args.group_size}:")
    print(f"{'config':8s} {'bf16 MiB':>9s} {'int8 MiB':>9s} {'int8/bf16':>9s} {'int4 MiB':>9s} {'int4/bf16':>9s}")
    results["bytes"] = [model_bytes(c, args.group_size) for c in args.configs]
    for r in results["bytes"]:
        print(f"{r['config']:8s} {r['bf16'] / mib:9.1f} {r['int8'] / mib:9.1f} {r['int8'] / r['bf16']:9.3f} "
              f"{r['int4'] / mib:9.1f} {r['int4'] / r['bf16']:9.3f}")

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU thread(s)"
    print(f"\n{where}, {args.dtype} inputs, median ms of {args.repeats} interleaved repeats (relative error vs float):")
    results["speed"] = speed(device, dtype, args.tokens, args.repeats, args.group_size)
    for r in results["speed"]:
        cells = "  ".join(f"{k.removesuffix('_ms')} {v:.2f}" + (f" ({r['float_ms'] / v:.2f}x float, err "
                                                                 f"{r[k.removesuffix('_ms') + '_rel_err']:.3f})"
                                                                 if k != "float_ms" else "")
                          for k, v in r.items() if k.endswith("_ms"))
        print(f"{r['shape']:10s} {r['in']:5d}->{r['out']:<5d} {r['tokens']:5d} tokens: {cells}")

    if args.config:
        results["logits_error"] = logits_error(args.config, args.size, args.batch, args.group_size)
        print(f"\n{args.config} segmentation logits, relative error against float: "
              + ", ".join(f"{k} {v:.4f}" for k, v in results["logits_error"].items()))
    return results


if __name__ == "__main__":
    main()

"""ONNX export and INT8 cost: parity, output drift and onnxruntime CPU latency of FP32 vs INT8.

Builds a model (random weights, seeded) with detection + segmentation + depth heads, exports it
with :func:`vlsdk.export.to_onnx` (static all-experts MoE path), then quantises it three ways:
dynamic INT8 with the routers and shared experts kept float (the default), dynamic INT8 of every
MatMul/Gemm, and static QDQ INT8 calibrated on a few batches. Drift is measured against the FP32
graph on held-out batches; latency is batch 1, median of ``--repeats`` runs, as wall time and as
process CPU time (the latter barely moves with the load of a shared machine; at ``--threads 1``
it is the single-core cost).

    python benchmarks/export_int8.py                         # edge config, 224x224
    python benchmarks/export_int8.py --config tiny --size 64 --repeats 5

Random weights say nothing about a task metric; the drift figures bound how far INT8 moves the
raw outputs (``rel_rms`` = rms(int8 - fp32) / rms(fp32), segmentation label agreement).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsdk import VLModel
from vlsdk.export import check_parity, int8_drift, quantize_onnx, to_onnx
from vlsdk.export.parity import session


def latency_ms(sess: Any, images: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median wall ms and median process CPU ms of ``repeats`` runs of a session (after one warm-up).

    The CPU time counts every thread of this process, so on a machine shared with other work it
    stays near the unloaded cost where the wall time does not (with more than one onnxruntime
    thread it also counts the workers' spin-waiting).
    """
    sess.run(None, {"images": images})  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        sess.run(None, {"images": images})
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns the figures (per variant: MiB, ms per image, drift)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="edge")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--expert", default="industrial.pcb_defect", help="domain expert to insert ('' for none)")
    p.add_argument("--out", default=None, help="folder for the .onnx files (default: a temporary one)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = VLModel(args.config).eval()
    model.add_head("det", task="detection", num_classes=6)
    model.add_head("seg", task="segmentation", num_classes=4)
    model.add_head("depth", task="depth")
    if args.expert:
        model.add_expert(args.expert, init_bias=0.0)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    shape = (model.config.in_chans, args.size, args.size)
    calib = [torch.randn(4, *shape, generator=gen) for _ in range(4)]
    held_out = [torch.randn(4, *shape, generator=gen) for _ in range(2)]
    one = torch.randn(1, *shape, generator=gen).numpy()
    folder = Path(args.out or tempfile.mkdtemp(prefix="vlsdk_int8_"))
    t0 = time.perf_counter()
    fp32 = to_onnx(model, folder / "fp32.onnx", image_size=(args.size, args.size))
    export_s = time.perf_counter() - t0
    parity = check_parity(model, fp32, held_out[0])
    variants = {
        "int8 dynamic (router+shared fp32)": quantize_onnx(fp32, folder / "dyn.onnx"),
        "int8 dynamic (all)": quantize_onnx(fp32, folder / "dyn_all.onnx", keep_float=()),
        "int8 static QDQ (router+shared fp32)": quantize_onnx(fp32, folder / "static.onnx", mode="static",
                                                             calibration=calib),
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"config {args.config}, {args.size}x{args.size}, experts {model.moe_layers[0].expert_names}, "
          f"{args.threads} threads, load average {load:.1f}")
    print(f"export {export_s:.1f} s; fp32 parity (max abs error, sparse PyTorch vs onnxruntime): "
          + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))
    with torch.no_grad():
        x = torch.from_numpy(one)
        model(x)
        t = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model(x)
            t.append(time.perf_counter() - t0)
    header = f"{'model':40s} {'MiB':>6s} {'ms/img':>7s} {'cpu ms':>7s} {'seg rel_rms':>11s} {'seg agree':>9s} " \
             f"{'det rel_rms':>11s} {'depth rel_rms':>13s}"
    print(header)
    print(f"{'pytorch eager (sparse MoE)':40s} {'':>6s} {1000 * statistics.median(t):7.1f}")
    results: dict[str, Any] = {"config": args.config, "size": args.size, "batch": 1, "threads": args.threads,
                               "load_average": load, "export_seconds": export_s,
                               "parity_max_abs": max(parity.values(), default=0.0),
                               "pytorch_ms": 1000 * statistics.median(t), "variants": {}}
    rows = {"onnx fp32 (dense MoE)": fp32, **variants}
    for name, path in rows.items():
        ms, cpu_ms = latency_ms(session(path, args.threads), one, args.repeats)
        size = path.stat().st_size / 2**20
        results["variants"][name] = {"mib": size, "ms_per_image": ms, "cpu_ms_per_image": cpu_ms}
        if path == fp32:
            print(f"{name:40s} {size:6.1f} {ms:7.1f} {cpu_ms:7.1f}")
            continue
        d = int8_drift(fp32, path, held_out)
        results["variants"][name].update({f"{k.split('.')[0]}_rel_rms": v["rel_rms"] for k, v in d.items()
                                          if k in ("seg.logits", "det.cls_logits", "depth.depth")})
        results["variants"][name]["seg_label_agreement"] = d["seg.logits"]["label_agreement"]
        print(f"{name:40s} {size:6.1f} {ms:7.1f} {cpu_ms:7.1f} {d['seg.logits']['rel_rms']:11.2e} "
              f"{d['seg.logits']['label_agreement']:9.4f} {d['det.cls_logits']['rel_rms']:11.2e} "
              f"{d['depth.depth']['rel_rms']:13.2e}")
    results["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return results


if __name__ == "__main__":
    main()

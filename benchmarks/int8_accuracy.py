"""INT8 task-metric drop on a trained domain model: BraTS whole-tumour Dice, FP32 vs INT8, one run.

Trains (or loads with ``--model DIR``) the medical pipeline's lesion segmenter
(:func:`~vlsdk_medical.task.lesion_train_set`, :func:`~vlsdk_medical.task.lesion_loss`,
the core Trainer; the ``lesion`` head and the ``medical.lesion`` expert), exports it with
:func:`vlsdk.export.to_onnx` at the sliding-window size (static all-experts MoE path, dynamic
batch), quantises it four ways with :func:`vlsdk.export.quantize_onnx` (dynamic / static QDQ
calibrated on training slices; routers + shared experts kept float / everything int8), and scores
every variant with the task's own :func:`~vlsdk_medical.evaluation.evaluate_held_out` on the
held-out patient: the ONNX files run through :class:`vlsdk.export.OnnxModel`, which is called
like a ``VLModel``, so the sliding-window evaluation code is the same for all rows.

Per variant: Dice, the drop in Dice points against FP32 PyTorch (target <= 1 point), the file
size, and the CPU latency of one full held-out slice (sliding window, ``--threads`` threads,
median of ``--repeats``).

    python benchmarks/int8_accuracy.py                    # edge config, 300 steps, a few minutes on 2 cores
    python benchmarks/int8_accuracy.py --quick            # tiny config, seconds (the test)
    python benchmarks/int8_accuracy.py --model runs/medical_lesion/model --roi-size 128

Writes ``<out>/int8_accuracy.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_vs_full import add_common_arguments, build_model, fill_defaults, lesion_config, train_arm  # noqa: E402

#: the INT8 variants: name -> quantize_onnx options (calibration is added for "static")
VARIANTS: dict[str, dict[str, Any]] = {
    "int8 dynamic (router+shared fp32)": {"mode": "dynamic"},
    "int8 dynamic (all)": {"mode": "dynamic", "keep_float": ()},
    "int8 static QDQ (router+shared fp32)": {"mode": "static"},
    "int8 static QDQ (all)": {"mode": "static", "keep_float": ()},
}
TARGET_DROP_POINTS = 1.0


def calibration_batches(train_set: Any, batches: int, batch_size: int) -> list[torch.Tensor]:
    """``batches`` batches of augmented training crops, spread evenly over the training slices.

    Args:
        train_set: the pipeline's training :class:`~vlsdk_medical.dataset.LesionSliceDataset`.
        batches: number of batches.
        batch_size: crops per batch.
    """
    from vlsdk_medical.dataset import collate_samples

    n = len(train_set.index)
    picks = [round(i * n / (batches * batch_size)) % n for i in range(batches * batch_size)]
    return [collate_samples([train_set[i] for i in picks[b * batch_size:(b + 1) * batch_size]])["image"]
            for b in range(batches)]


def slice_latency_ms(predictor: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, roi: int,
                     repeats: int) -> float:
    """Median ms of a sliding-window pass over one full ``(1, C, H, W)`` slice."""
    from vlsdk_medical.inference import predict_slices

    predict_slices(predictor, image, roi, sw_batch_size=32)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_slices(predictor, image, roi, sw_batch_size=32)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns (and writes) the results dict."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="a save_pretrained() lesion segmenter to load instead of training one")
    p.add_argument("--config", default=None, help="backbone config to train (default: tiny with --quick, else edge)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--calib-batches", type=int, default=None, help="static calibration batches of training crops")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads")
    p.add_argument("--repeats", type=int, default=None, help="latency repeats (median)")
    args = p.parse_args(argv)
    fill_defaults(args,
                  quick={"config": "tiny", "steps": 30, "batch_size": 4, "roi_size": 64, "max_slices_per_case": 12,
                         "eval_slices": 6, "calib_batches": 2, "repeats": 3},
                  gpu={"config": "edge", "steps": 300, "batch_size": 8, "roi_size": 96, "calib_batches": 8,
                       "repeats": 10})
    args.out = Path(args.out or "runs/int8_accuracy")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    import vlsdk
    from vlsdk.export import OnnxModel, check_parity, quantize_onnx, to_onnx
    from vlsdk_medical.inference import model_predictor
    from vlsdk_medical.evaluation import evaluate_held_out
    from vlsdk_medical.task import held_out_set, lesion_loss, lesion_train_set

    start = time.perf_counter()
    cfg = lesion_config(args, args.config)
    train_set = lesion_train_set(cfg)
    train_set.repeats = max(1, math.ceil(args.steps * args.batch_size / len(train_set.index)))
    train_s = 0.0
    if args.model is not None:
        model = vlsdk.VLModel.from_pretrained(args.model)
        if "lesion" not in model.heads or model.config.in_chans != train_set.num_channels:
            raise SystemExit(f"error: {args.model} needs a 'lesion' segmentation head and {train_set.num_channels} "
                             f"input channels (FLAIR + T1c); it has heads {sorted(model.heads)} and "
                             f"{model.config.in_chans} channels")
        args.config = f"{model.config.name} (loaded from {args.model})"
    else:
        trainer, train_s = train_arm(build_model(args.config, train_set.num_channels, args.seed), lesion_loss,
                                     train_set, steps=args.steps, lr=args.lr, args=args, out_dir=args.out,
                                     desc="train")
        model = trainer.model
        model.save_pretrained(args.out / "model")
    model = model.float().cpu().eval()
    roi = cfg.roi_size

    fp32 = to_onnx(model, args.out / "fp32.onnx", heads=["lesion"], image_size=(roi, roi))
    calib = calibration_batches(train_set, args.calib_batches, args.batch_size)
    parity = max(check_parity(model, fp32, calib[0]).values())
    files = {"onnx fp32 (dense MoE)": fp32}
    for i, (name, options) in enumerate(VARIANTS.items()):
        extra = {"calibration": calib} if options["mode"] == "static" else {}
        files[name] = quantize_onnx(fp32, args.out / f"int8_{i}.onnx", **options, **extra)

    one_slice = _one_held_out_slice(cfg)
    rows: dict[str, dict[str, Any]] = {}
    torch_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    candidates: dict[str, Any] = {"pytorch fp32 (sparse MoE)": model, **files}
    for name, source in candidates.items():
        runner = source if isinstance(source, torch.nn.Module) else OnnxModel(source, threads=args.threads)
        t0 = time.perf_counter()
        dice = evaluate_held_out(runner, held_out_set(cfg), cfg)["dice_mean"]
        eval_s = time.perf_counter() - t0
        ms = slice_latency_ms(model_predictor(runner, "lesion"), one_slice, roi, args.repeats)
        mib = (torch_bytes if isinstance(source, torch.nn.Module) else source.stat().st_size) / 2**20
        rows[name] = {"dice": dice, "mib": mib, "ms_per_slice": ms, "eval_seconds": eval_s}
        print(f"  {name}: Dice {dice:.4f} ({eval_s:.1f} s)", flush=True)
    ref, ref_onnx = rows["pytorch fp32 (sparse MoE)"]["dice"], rows["onnx fp32 (dense MoE)"]["dice"]
    for row in rows.values():
        row["drop_points"] = 100 * (ref - row["dice"])
        row["drop_points_vs_onnx_fp32"] = 100 * (ref_onnx - row["dice"])
    met = {name: bool(row["drop_points"] <= TARGET_DROP_POINTS) for name, row in rows.items() if "int8" in name}
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    results = {"task": "BraTS whole-tumour Dice on the held-out patient(s)", "config": args.config, "steps": args.steps,
               "roi_size": roi, "eval_slices": cfg.eval_slices, "threads": args.threads, "train_seconds": train_s,
               "fp32_parity_max_abs": parity, "variants": rows, "target_drop_points": TARGET_DROP_POINTS,
               "met": met, "load_average": list(load), "seconds": time.perf_counter() - start,
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    path = args.out / "int8_accuracy.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    _print_table(results, one_slice.shape[-2:])
    print(f"results: {path}")
    return results


def _one_held_out_slice(cfg: Any) -> torch.Tensor:
    """The held-out patient's middle brain slice as ``(1, C, H, W)`` (for the latency figure)."""
    from vlsdk_medical.dataset import LesionSliceDataset
    from vlsdk_medical.task import held_out_cases

    cases = held_out_cases(cfg)
    ds = LesionSliceDataset(cases[:1], transform=None, slices="foreground", seed=cfg.seed)
    return ds[len(ds) // 2]["image"][None].float()


def _print_table(results: dict[str, Any], slice_hw: Any) -> None:
    rows = results["variants"]
    print(f"\nBraTS held-out whole-tumour Dice, {results['config']} model, {results['steps']} steps, "
          f"ONNX at {results['roi_size']}x{results['roi_size']} windows, {results['threads']} threads, "
          f"load average {results['load_average'][0]:.1f}; FP32 ONNX parity {results['fp32_parity_max_abs']:.1e}")
    print(f"{'variant':38s} {'Dice':>7s} {'drop pts':>9s} {'vs onnx':>8s} {'MiB':>6s} "
          f"{'ms/slice':>9s}  target drop <= {results['target_drop_points']:g}")
    for name, r in rows.items():
        verdict = "" if name not in results["met"] else ("pass" if results["met"][name] else "FAIL")
        print(f"{name:38s} {r['dice']:7.4f} {r['drop_points']:9.2f} {r['drop_points_vs_onnx_fp32']:8.2f} "
              f"{r['mib']:6.2f} {r['ms_per_slice']:9.1f}  {verdict}")
    print(f"(ms/slice: one full {tuple(int(s) for s in slice_hw)} slice, sliding window)")


if __name__ == "__main__":
    main()

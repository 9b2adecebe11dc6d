"""One entry point for the performance suite: run the benchmarks, one table, one ``benchmarks.json``.

Each benchmark script keeps its own command line; this one imports its ``main(argv)``, calls it
with the arguments of the chosen mode, and turns the returned figures into rows
``(benchmark, case, figure, target, pass/fail)``. A benchmark that raises (or exits, e.g. for
missing data) becomes an ``error`` row and the others still run; the exit status is 1 then.

Modes (the argument lists are in :data:`SUITE`):

- default (CPU): the CPU-meaningful benchmarks: MoE layer ratios, encoder FLOPs, aten ops and host
  syncs per eager forward, ONNX FP32/INT8 latency of the edge config at 224x224 batch 1 (target
  <= 15 ms), BEV encoding, INT8 Dice drop on a trained BraTS segmenter. ``throughput``,
  ``lora_vs_full``, ``distill_lightweight`` and ``pipelines`` (end-to-end latency/throughput of
  the three domain pipelines, eager vs ``torch.compile`` vs onnxruntime) run with ``--only``.
- ``--device cuda``: the GPU variants (MoE bf16 forward+backward at T=16384 d=768 16 experts
  top-4, encoder throughput at 224 and 512, BEV encoding on the GPU, and the rest as on the CPU).
- ``--quick``: a smoke run of the default set at the tiniest settings (seconds each; the test).
  Targets are shown in parentheses and not judged: they hold for the full settings.

Latencies on a shared machine depend on its load: the table prints the 1-minute load average
beside every latency figure.

    python benchmarks/run_all.py                       # CPU suite, ~20 min on 2 cores
    python benchmarks/run_all.py --only export_int8 moe_layer
    python benchmarks/run_all.py --device cuda --out runs/run_all_h100
    python benchmarks/run_all.py --quick               # smoke run
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass
class Row:
    """One line of the table: a measured figure and, where the issue set one, its target."""

    benchmark: str
    case: str
    figure: float
    unit: str = ""
    target: str = "-"
    passed: bool | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        """``pass`` / ``FAIL`` / ``-`` (no target) / ``error``."""
        if self.note.startswith("error"):
            return "error"
        return "-" if self.passed is None else ("pass" if self.passed else "FAIL")


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _check(value: float, op: str, limit: float) -> bool:
    return bool(math.isfinite(value) and (value <= limit if op == "<=" else value >= limit))


# -- figures -> rows, one function per benchmark ---------------------------------------------------

def moe_rows(r: dict[str, Any], mode: str) -> list[Row]:
    """MoE / FFN against the ideal top-k cost, and all-experts / MoE (moe_layer.py)."""
    limits = {"forward": 1.05, "forward+backward": 1.2}
    rows = []
    for pass_, limit in limits.items():
        v = r[f"{pass_}/ratio_to_ideal"]
        rows.append(Row("moe_layer", f"{pass_}: MoE/FFN of ideal", v, "x", f"<= {limit}", _check(v, "<=", limit)))
        a = r[f"{pass_}/all_over_moe"]
        rows.append(Row("moe_layer", f"{pass_}: all experts/MoE", a, "x", ">= 3.5", _check(a, ">=", 3.5)))
        g = r[f"{pass_}/grouped_over_ffn"]
        rows.append(Row("moe_layer", f"{pass_}: grouped/FFN", g, "x"))
    return rows


def flops_rows(r: dict[str, Any], mode: str) -> list[Row]:
    """Encoder FLOPs of the named configs over plain ViTs (encoder_flops.py); target base@224 <= 0.47x."""
    rows = []
    for key, v in r.items():
        if math.isnan(v):
            continue
        target = key == "base@224"
        rows.append(Row("encoder_flops", f"{key} FLOPs / plain ViT", v, "x", "<= 0.47" if target else "-",
                        _check(v, "<=", 0.47) if target else None))
    return rows


def export_rows(r: dict[str, Any], mode: str) -> list[Row]:
    """ONNX latency per image, batch 1 (export_int8.py); target <= 15 ms for edge at 224x224."""
    setting = f"{r['config']} {r['size']}px b1 {r['threads']}thr"
    target = r["config"] == "edge" and r["size"] == 224
    rows = [Row("export_int8", f"{setting} pytorch eager ms", r["pytorch_ms"], "ms",
                note=f"load {r['load_average']:.1f}")]
    for name, v in r["variants"].items():
        ms = v["ms_per_image"]
        rows.append(Row("export_int8", f"{setting} {name} ms", ms, "ms", "<= 15" if target else "-",
                        _check(ms, "<=", 15.0) if target else None,
                        note=f"load {r['load_average']:.1f}-{r['load_average_end']:.1f}; "
                             f"cpu {v['cpu_ms_per_image']:.1f} ms; {v['mib']:.1f} MiB"))
    return rows


def bev_rows(r: dict[str, Any], mode: str) -> list[Row]:
    """BEV encoding sweeps/s (driving_bev.py); >= 20 on the CPU, >= 1000 on a GPU."""
    limit = 1000.0 if r["device"].startswith("cuda") else 20.0
    v = r["sweeps_per_s"]
    return [Row("driving_bev", f"{r['device']} {r['points']} points -> {r['grid']} grid, sweeps/s", v, "/s",
                f">= {limit:g}", _check(v, ">=", limit), note=f"{r['threads']} threads, load {_load():.1f}")]


def int8_accuracy_rows(r: dict[str, Any], mode: str) -> list[Row]:
    """Held-out Dice drop of each INT8 variant in Dice points (int8_accuracy.py); target <= 1 point."""
    rows = []
    for name, v in r["variants"].items():
        limit = r["target_drop_points"]
        rows.append(Row("int8_accuracy", f"{r['config']} {name}: Dice drop (pts)", v["drop_points"], "pts",
                        f"<= {limit:g}" if "int8" in name else "-",
                        _check(v["drop_points"], "<=", limit) if "int8" in name else None,
                        note=f"Dice {v['dice']:.4f}; {v['mib']:.2f} MiB; {v['ms_per_slice']:.0f} ms/slice"))
    return rows


def throughput_rows(r: dict[str, Any], mode: str) -> list[Row]:
    """Encoder images/s per case and the base / ViT-B ratios (throughput.py); no target set."""
    rows = [Row("throughput", f"{c['model']} {c['size']}px b{c['batch']} images/s", c["images_per_s"], "/s")
            for c in r["cases"]]
    rows += [Row("throughput", f"{k} images/s ratio", v, "x") for k, v in r.items() if "_over_" in k]
    return rows


def host_work_rows(r: dict[str, Any], mode: str) -> list[Row]:
    """Aten ops and host syncs per eager forward, per model and MoE path (host_work.py); no target set."""
    return [Row("host_work", f"{c['model']} {c['path']} {k}", c[k], "", note=f"{c['cpu_ms']:.1f} ms CPU")
            for c in r["op_count"] for k in ("ops", "host_syncs")]


def pipelines_rows(r: dict[str, Any], mode: str) -> list[Row]:
    """Per domain pipeline and backend: batch-1 ms and large-batch items/s (pipelines.py); no target set."""
    rows = []
    load = f"load {r['load_average']:.1f}-{r.get('load_average_end', float('nan')):.1f}"
    for name, p in r["pipelines"].items():
        for c in p["cases"]:
            parity = p["parity_max_abs"].get(c["backend"])
            note = f"{c['speedup_over_eager']:.2f}x eager; {load}" + (
                "" if parity is None else f"; parity {parity:.1e}")
            if c["batch"] == 1:
                rows.append(Row("pipelines", f"{name} {c['backend']} b1 latency", c["ms_per_batch"], "ms",
                                note=note))
            else:
                rows.append(Row("pipelines", f"{name} {c['backend']} b{c['batch']} items/s", c["items_per_s"], "/s",
                                note=note))
    return rows


def ratio_rows(name: str) -> Callable[[dict[str, Any], str], list[Row]]:
    """Rows of a script that returns ``ratios``, ``targets`` (minimums) and ``met`` (lora, distill)."""
    def rows(r: dict[str, Any], mode: str) -> list[Row]:
        return [Row(name, key, v, "x", f">= {r['targets'][key]:g}" if key in r["targets"] else "-",
                    r["met"].get(key)) for key, v in r["ratios"].items()]
    return rows


@dataclass
class Benchmark:
    """A script of the suite: its module, its argument list per mode, and its rows."""

    module: str
    rows: Callable[[dict[str, Any], str], list[Row]]
    argv: dict[str, list[str]] = field(default_factory=dict)  # "cpu" / "cuda" / "quick"
    default: bool = True  # in the suite when --only is not given


#: ``{out}`` in an argument becomes the benchmark's output folder.
SUITE: dict[str, Benchmark] = {
    "moe_layer": Benchmark("moe_layer", moe_rows, {
        "cpu": ["--repeats", "15"],
        "cuda": ["--device", "cuda", "--dtype", "bfloat16", "--tokens", "16384", "--dim", "768", "--hidden",
                 "3072", "--experts", "16", "--top-k", "4", "--repeats", "30"],
        "quick": ["--tokens", "256", "--dim", "64", "--hidden", "128", "--repeats", "2"]}),
    "encoder_flops": Benchmark("encoder_flops", flops_rows, {
        "cpu": ["--size", "224", "--size", "512"], "cuda": ["--size", "224", "--size", "512"],
        "quick": ["--size", "64", "--configs", "small"]}),
    "export_int8": Benchmark("export_int8", export_rows, {
        "cpu": ["--config", "edge", "--size", "224", "--repeats", "50", "--threads", "2", "--out", "{out}"],
        "cuda": ["--config", "edge", "--size", "224", "--repeats", "50", "--threads", "2", "--out", "{out}"],
        "quick": ["--config", "tiny", "--size", "64", "--repeats", "3", "--threads", "1", "--expert", "",
                  "--out", "{out}"]}),
    "driving_bev": Benchmark("driving_bev", bev_rows, {
        "cpu": ["--threads", "1"], "cuda": ["--device", "cuda", "--repeats", "2000"],
        "quick": ["--repeats", "10", "--blocks", "2"]}),
    "int8_accuracy": Benchmark("int8_accuracy", int8_accuracy_rows, {
        "cpu": ["--no-progress", "--out", "{out}"], "cuda": ["--device", "cuda", "--no-progress", "--out", "{out}"],
        "quick": ["--quick", "--no-progress", "--threads", "1", "--steps", "4", "--eval-slices", "3",
                  "--repeats", "1", "--out", "{out}"]}),
    "throughput": Benchmark("throughput", throughput_rows, {
        "cpu": ["--models", "edge", "base", "vit_b16", "--size", "224", "--repeats", "3", "--out", "{out}"],
        "cuda": ["--device", "cuda", "--dtype", "bfloat16", "--size", "224", "--size", "512", "--out", "{out}"],
        "quick": ["--models", "edge", "--size", "64", "--repeats", "1", "--out", "{out}"]}, default=False),
    "host_work": Benchmark("host_work", host_work_rows, {
        "cpu": ["--out", "{out}"], "cuda": ["--out", "{out}"],
        "quick": ["--models", "tiny", "--size", "32", "--out", "{out}"]}),
    "lora_vs_full": Benchmark("lora_vs_full", ratio_rows("lora_vs_full"), {
        "cpu": ["--quick", "--no-progress", "--out", "{out}"],
        "cuda": ["--device", "cuda", "--amp", "bf16", "--no-progress", "--out", "{out}"],
        "quick": ["--quick", "--no-progress", "--steps", "2", "--pretrain-steps", "2", "--out", "{out}"]},
        default=False),
    "distill_lightweight": Benchmark("distill_lightweight", ratio_rows("distill_lightweight"), {
        "cpu": ["--quick", "--no-progress", "--out", "{out}"],
        "cuda": ["--device", "cuda", "--amp", "bf16", "--no-progress", "--out", "{out}"],
        "quick": ["--quick", "--no-progress", "--steps", "2", "--teacher-steps", "2", "--out", "{out}"]},
        default=False),
    "pipelines": Benchmark("pipelines", pipelines_rows, {
        "cpu": ["--out", "{out}"],
        "cuda": ["--device", "cuda", "--dtype", "bfloat16", "--config", "small", "--batch", "64",
                 "--industrial-size", "640", "--grid-range", "51.2", "--grid-resolution", "0.2", "--out", "{out}"],
        "quick": ["--config", "tiny", "--batch", "2", "--medical-size", "64", "--industrial-size", "64",
                  "--grid-range", "16", "--backends", "eager", "onnx", "--warmup", "1", "--repeats", "1",
                  "--block-seconds", "0.02", "--threads", "1", "--data", "", "--out", "{out}"]}, default=False),
}


def run_one(name: str, mode: str, out: Path) -> tuple[dict[str, Any] | None, list[Row], float]:
    """Import ``benchmarks/<name>.py``, call ``main(argv)``; (figures, rows, seconds)."""
    bench = SUITE[name]
    argv = [a.replace("{out}", str(out / name)) for a in bench.argv[mode]]
    print(f"\n== {name} {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        figures = importlib.import_module(bench.module).main(argv)
        rows = bench.rows(figures, mode)
        if mode == "quick":  # the targets hold for the full settings, not for the smoke run's
            for row in rows:
                row.passed = None
                row.target = row.target if row.target == "-" else f"({row.target})"
    except (Exception, SystemExit) as err:  # one broken benchmark must not stop the suite
        traceback.print_exc()
        text = f"error: {type(err).__name__}: {err}".replace("\n", " ")[:200]
        return None, [Row(name, "-", float("nan"), note=text)], time.perf_counter() - t0
    return figures, rows, time.perf_counter() - t0


def format_table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table."""
    lines = [f"{'benchmark':15s} {'case':58s} {'figure':>12s} {'target':>9s} {'result':>6s}  note"]
    for r in rows:
        fig = "-" if math.isnan(r.figure) else f"{r.figure:.4g} {r.unit}".strip()
        lines.append(f"{r.benchmark:15s} {r.case[:58]:58s} {fig:>12s} {r.target:>9s} {r.verdict:>6s}  {r.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the suite; prints the table, writes ``<out>/benchmarks.json`` and returns its content."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(SUITE), default=None, help="run only these benchmarks")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="which variants to run")
    p.add_argument("--quick", action="store_true", help="smoke run at the tiniest settings")
    p.add_argument("--out", type=Path, default=Path("runs/run_all"), help="output folder (benchmarks.json)")
    args = p.parse_args(argv)
    mode = "quick" if args.quick else args.device
    names = args.only or [n for n, b in SUITE.items() if b.default]
    args.out.mkdir(parents=True, exist_ok=True)
    load_start, t0 = _load(), time.perf_counter()
    rows: list[Row] = []
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in names:
        figures, bench_rows, seconds[name] = run_one(name, mode, args.out)
        results[name] = figures
        rows += bench_rows
    report = {"mode": mode, "device": args.device, "benchmarks": names, "cpu_count": os.cpu_count(),
              "load_average_start": load_start, "load_average_end": _load(), "seconds": seconds,
              "total_seconds": time.perf_counter() - t0,
              "rows": [asdict(r) | {"result": r.verdict} for r in rows], "results": results}
    path = args.out / "benchmarks.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nperformance suite ({mode}; {os.cpu_count()} CPUs; load average {load_start:.1f} at the start, "
          f"{report['load_average_end']:.1f} at the end; a shared machine's latencies depend on it)")
    print(format_table(rows))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    sys.exit(1 if any(r["result"] == "error" for r in main()["rows"]) else 0)

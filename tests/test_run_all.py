"""benchmarks/run_all.py: the suite's smoke run gives one table and benchmarks.json; the INT8 Dice script.

Real benchmarks at their tiniest settings (``--quick``), no mocks; no timing assertions: only that
every figure is measured (finite), every row is judged consistently, and the JSON matches the table.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
DEFAULT_SET = ("moe_layer", "encoder_flops", "export_int8", "driving_bev", "int8_accuracy", "host_work")


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_report(report: dict[str, Any], stdout: str, names: tuple[str, ...]) -> None:
    assert report["mode"] == "quick" and report["benchmarks"] == list(names)
    rows = report["rows"]
    assert {r["benchmark"] for r in rows} == set(names)
    for r in rows:
        assert math.isfinite(r["figure"]), r
        assert r["result"] == "-" and r["passed"] is None  # quick mode judges nothing
        assert r["case"][:58] in stdout  # every JSON row is a line of the printed table
    for name in names:
        assert report["results"][name] is not None and report["seconds"][name] > 0
    assert "benchmark" in stdout and "target" in stdout and "result" in stdout


def test_only_runs_the_chosen_benchmark_in_process(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCHMARKS))
    report = run_all.main(["--quick", "--only", "moe_layer", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "benchmarks.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(report["rows"]))
    assert [r["case"] for r in report["rows"]][:2] == ["forward: MoE/FFN of ideal", "forward: all experts/MoE"]
    ratio = report["results"]["moe_layer"]["forward/ratio_to_ideal"]
    assert report["rows"][0]["figure"] == ratio and report["rows"][0]["target"] == "(<= 1.05)"


def test_row_verdicts_follow_the_targets() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from run_all import Row, int8_accuracy_rows
    finally:
        sys.path.remove(str(BENCHMARKS))
    figures = {"config": "tiny", "target_drop_points": 1.0, "variants": {
        "onnx fp32": {"drop_points": 0.0, "dice": 0.8, "mib": 1.0, "ms_per_slice": 5.0},
        "int8 a": {"drop_points": 0.4, "dice": 0.796, "mib": 0.5, "ms_per_slice": 4.0},
        "int8 b": {"drop_points": 2.5, "dice": 0.775, "mib": 0.4, "ms_per_slice": 4.0},
        "int8 c": {"drop_points": float("nan"), "dice": float("nan"), "mib": 0.4, "ms_per_slice": 4.0}}}
    assert [r.verdict for r in int8_accuracy_rows(figures, "cpu")] == ["-", "pass", "FAIL", "FAIL"]
    assert Row("x", "y", float("nan"), note="error: boom").verdict == "error"


@pytest.mark.slow
def test_run_all_quick(shared_data: Path, tmp_path: Path) -> None:
    proc = run("run_all.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    check_report(report, proc.stdout, DEFAULT_SET)


@pytest.mark.slow
def test_int8_accuracy_quick_gives_finite_dice_for_every_variant(shared_data: Path, tmp_path: Path) -> None:
    run("int8_accuracy.py", "--quick", "--no-progress", "--threads", "1", "--steps", "4", "--eval-slices", "3",
        "--repeats", "1", "--data", str(shared_data / "brats_lesion_mri"), "--out", str(tmp_path))
    r = json.loads((tmp_path / "int8_accuracy.json").read_text())
    variants = r["variants"]
    assert len(variants) == 6 and sum("int8" in name for name in variants) == 4
    ref = variants["pytorch fp32 (sparse MoE)"]["dice"]
    for name, v in variants.items():
        assert math.isfinite(v["dice"]) and 0.0 <= v["dice"] <= 1.0, name
        assert v["drop_points"] == pytest.approx(100 * (ref - v["dice"])), name
        assert v["mib"] > 0 and math.isfinite(v["ms_per_slice"]), name
    assert set(r["met"]) == {name for name in variants if "int8" in name}
    assert r["fp32_parity_max_abs"] < 1e-3  # the FP32 graph is the PyTorch model
    assert variants["int8 static QDQ (all)"]["mib"] < variants["onnx fp32 (dense MoE)"]["mib"]

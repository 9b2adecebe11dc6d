"""The issue-7 benchmark scripts run end to end (``--quick``, tiniest settings) on the real BraTS data;
the issue-8 pipeline benchmark on its own synthetic inputs.

Each script runs in a subprocess, as a user runs it; the test reads its results JSON and checks
that the metrics are finite and that every printed ratio is computed from the measured values.
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
TINIEST = ["--quick", "--no-progress", "--steps", "2", "--batch-size", "2", "--roi-size", "32",
           "--max-slices-per-case", "4", "--eval-slices", "5"]


def run_script(name: str, data: Path, out: Path, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), "--data", str(data), "--out", str(out),
                           *TINIEST, *extra], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "results:" in proc.stdout
    return json.loads((out / name.replace(".py", ".json")).read_text())


def finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_lora_vs_full_quick(shared_data: Path, tmp_path: Path) -> None:
    r = run_script("lora_vs_full.py", shared_data / "brats_lesion_mri", tmp_path, "--pretrain-steps", "2")
    full, lora, lora_float, lora_int4 = (r["arms"][a] for a in ("full", "lora", "lora_float", "lora_int4"))
    for arm in (full, lora, lora_float, lora_int4):
        assert finite(arm["dice"])  # HD95 is inf when a 2-step model predicts nothing: not checked
        assert 0.0 <= arm["dice"] <= 1.0
        assert arm["trainable_state_bytes"] == arm["grad_bytes"] + arm["optimizer_bytes"] > 0
        assert arm["weight_bytes"] > 0 and arm["peak_memory_bytes"] > 0
    assert lora["trainable_params"] == lora_float["trainable_params"] < full["trainable_params"]
    assert lora["weight_bytes"] < lora_float["weight_bytes"]  # the same adapters, on int8 and on float weights
    assert lora_int4["weight_bytes"] < lora["weight_bytes"]
    assert lora_int4["trainable_params"] == lora["trainable_params"]
    ratios = r["ratios"]
    assert ratios["dice_lora_minus_lora_float"] == pytest.approx(lora["dice"] - lora_float["dice"])
    assert r["met"]["dice_lora_minus_lora_float"] == (ratios["dice_lora_minus_lora_float"] >= -0.01)
    assert ratios["dice_lora_int4_minus_lora_float"] == pytest.approx(lora_int4["dice"] - lora_float["dice"])
    expected = {"dice_lora_over_full": lora["dice"] / full["dice"] if full["dice"] else float("nan"),
                "trainable_state_full_over_lora": full["trainable_state_bytes"] / lora["trainable_state_bytes"],
                "weight_bytes_full_over_lora": full["weight_bytes"] / lora["weight_bytes"],
                "peak_memory_full_over_lora": full["peak_memory_bytes"] / lora["peak_memory_bytes"]}
    for key, value in expected.items():
        assert ratios[key] == pytest.approx(value, nan_ok=True), key
    assert ratios["trainable_state_full_over_lora"] > 1
    assert r["met"]["trainable_state_full_over_lora"] == (ratios["trainable_state_full_over_lora"] >= 12)


def test_distill_lightweight_quick(shared_data: Path, tmp_path: Path) -> None:
    r = run_script("distill_lightweight.py", shared_data / "brats_lesion_mri", tmp_path, "--teacher-steps", "2")
    runs, ratios = r["runs"], r["ratios"]
    for name in ("teacher", "scratch", "distilled"):
        assert finite(runs[name]["dice"]) and 0.0 <= runs[name]["dice"] <= 1.0, name
        assert runs[name]["flops"] > 0
    t = runs["teacher"]["dice"]
    if t:
        assert ratios["scratch_over_teacher"] == pytest.approx(runs["scratch"]["dice"] / t)
        assert ratios["distilled_over_teacher"] == pytest.approx(runs["distilled"]["dice"] / t)
    assert ratios["student_flops_over_teacher"] == pytest.approx(runs["scratch"]["flops"] / t_flops(runs))
    assert ratios["student_flops_over_teacher"] <= 0.25
    assert runs["scratch"]["flops"] == runs["distilled"]["flops"]
    # the same teacher loaded from the first run's checkpoint instead of trained again
    again = run_script("distill_lightweight.py", shared_data / "brats_lesion_mri", tmp_path / "again",
                       "--teacher-steps", "2", "--teacher-checkpoint", str(tmp_path / "teacher" / "checkpoint"))
    assert again["runs"]["teacher"]["dice"] == pytest.approx(t)


def t_flops(runs: dict[str, Any]) -> float:
    return float(runs["teacher"]["flops"])


PIPELINES_TINY = ["--config", "tiny", "--batch", "3", "--medical-size", "64", "--industrial-size", "64",
                  "--grid-range", "16", "--warmup", "1", "--repeats", "2", "--block-seconds", "0.02",
                  "--threads", "1", "--data", ""]


def run_pipelines(out: Path, *extra: str) -> tuple[dict[str, Any], str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "pipelines.py"), *PIPELINES_TINY, "--out", str(out),
                           *extra], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "pipelines.json").read_text()), proc.stdout


def check_pipeline_cases(r: dict[str, Any], backends: set[str], batch: int) -> None:
    for name, p in r["pipelines"].items():
        assert {(c["backend"], c["batch"]) for c in p["cases"]} == {(b, n) for b in backends for n in (1, batch)}, name
        for c in p["cases"]:
            assert finite(c["ms_per_batch"], c["items_per_s"]) and c["ms_per_batch"] > 0 and c["items_per_s"] > 0
            assert c["items_per_s"] == pytest.approx(1000 * c["batch"] / c["ms_per_batch"])
            eager = next(e for e in p["cases"] if e["backend"] == "eager" and e["batch"] == c["batch"])
            assert c["speedup_over_eager"] == pytest.approx(c["items_per_s"] / eager["items_per_s"])
        assert set(p["parity_max_abs"]) == backends - {"eager"}


def test_pipelines_onnx_matches_eager_and_every_row_is_timed(tmp_path: Path) -> None:
    r, stdout = run_pipelines(tmp_path, "--backends", "eager", "onnx")
    assert list(r["pipelines"]) == ["medical", "industrial", "driving"]
    check_pipeline_cases(r, {"eager", "onnx"}, 3)
    for name, p in r["pipelines"].items():
        assert p["parity_max_abs"]["onnx"] < 1e-3, name  # the exported graph computes the eager head outputs
        assert p["onnx_mib"] > 0
    assert r["pipelines"]["medical"]["in_chans"] == 2 and r["pipelines"]["industrial"]["in_chans"] == 2
    assert r["pipelines"]["driving"]["image_size"] == [64, 64]  # +-16 m at 0.5 m
    assert "synthetic sweep" in r["pipelines"]["driving"]["item"]
    for name in r["pipelines"]:
        for backend in ("eager", "onnx"):
            assert any(line.startswith(f"{name:10s} {backend:8s}") for line in stdout.splitlines()), (name, backend)


@pytest.mark.slow
def test_pipelines_compile_matches_eager(tmp_path: Path) -> None:
    r, _ = run_pipelines(tmp_path, "--only", "medical", "--backends", "eager", "compile")
    check_pipeline_cases(r, {"eager", "compile"}, 3)
    assert r["pipelines"]["medical"]["parity_max_abs"]["compile"] < 1e-3

"""``benchmarks/pcb_vs_yolo.py`` runs end to end on the CPU with the tiniest settings.

The script runs in a subprocess, as a user runs it; the test reads its JSON and checks that every
vlsdk figure is finite and positive, that each ratio is the quotient of the measured figures, and
that without ultralytics (not a vlsdk dependency) the peer is reported as skipped.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pcb_vs_yolo.py"
TINIEST = ["--device", "cpu", "--config", "tiny", "--batch-size", "2", "--image-size", "64", "--warmup", "1",
           "--repeats", "1", "--boxes", "3"]
VLSDK = "vlsdk tiny"
PEER = "yolov8s"
KEYS = ("forward", "forward_nms", "train")


def run_script(out: Path, *extra: str) -> tuple[dict[str, Any], str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "YOLO_OFFLINE": "true"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINIEST, "--out", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "pcb_vs_yolo.json").read_text()), proc.stdout


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_pcb_vs_yolo_tiny(tmp_path: Path) -> None:
    r, stdout = run_script(tmp_path)
    assert r["device"] == "cpu" and r["device_name"] == "cpu" and r["torch"]
    assert r["setting"]["batch_size"] == 2 and r["setting"]["image_size"] == 64 and r["setting"]["repeats"] == 1
    assert r["precision"]["vlsdk_inference"] == "fp32"  # the CPU default: no autocast
    ours = r["boards_per_s"][VLSDK]
    for key in KEYS:  # forward only >= forward + NMS is not guaranteed (timing noise): not checked
        assert positive(ours[key]), (key, ours[key])
    assert r["errors"] == {}
    assert any(line.startswith(VLSDK) for line in stdout.splitlines())
    if importlib.util.find_spec("ultralytics") is None:
        assert r["peer_skipped"] == "ultralytics is not installed: YOLOv8s skipped (pip install ultralytics)"
        assert r["peer_skipped"] in stdout
        assert PEER not in r["boards_per_s"] and r["ratios"] == {} and r["met"] == {}
        assert r["ultralytics"] is None
        return
    assert r["peer_skipped"] is None and r["ultralytics"]
    peer = r["boards_per_s"][PEER]
    assert set(r["ratios"]) == set(KEYS)
    for key in KEYS:
        assert positive(peer[key]), (key, peer[key])
        assert r["ratios"][key] == pytest.approx(ours[key] / peer[key])
    for key, target in r["targets"].items():
        assert r["met"][key] == (r["ratios"][key] >= target)


def test_pcb_vs_yolo_without_peer_or_training(tmp_path: Path) -> None:
    r, stdout = run_script(tmp_path, "--no-peer", "--no-train")
    assert r["peer_skipped"] == "--no-peer: YOLOv8s skipped" and r["peer_skipped"] in stdout
    assert list(r["boards_per_s"]) == [VLSDK]
    assert set(r["boards_per_s"][VLSDK]) == {"forward", "forward_nms"}
    assert r["ratios"] == {} and r["met"] == {}

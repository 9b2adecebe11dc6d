"""``vlsdk demo`` for industrial: a tiny detector trained and scored on synthetic boards only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import torch

import vlsdk_industrial.plugin as industrial_plugin
from vlsdk_industrial.demo import run_demo


def test_quick_demo_trains_scores_and_draws(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    result = run_demo(tmp_path, quick=True, device="cpu", seed=0)
    assert torch.get_num_threads() == threads  # restored
    assert result.domain == "industrial" and result.expert == "industrial.pcb_defect" and result.summary
    assert set(result.metrics) == {"map50", "deeppcb"}
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in result.metrics.values()), result.metrics
    [png, routing] = result.images
    assert routing.name == "routing.png" and routing.is_file()  # expert shares over training, by the Trainer
    image = cv2.imread(str(png))
    assert png.parent == tmp_path and image is not None and image.shape[0] >= 256 and image.std() > 10
    assert not result.model.training and "industrial.pcb_defect" in result.model.expert_specs
    samples = result.samples
    assert samples.ndim == 4 and samples.shape[1] == 2 and samples.dtype == torch.float32  # board + template
    assert 0.0 <= float(samples.min()) and float(samples.max()) <= 1.0
    with torch.no_grad():
        out = result.model(samples[:1], heads=["pcb"])
    assert "pcb" in out.heads


def test_vlsdk_demo_command(plugin_host, register_plugin, tmp_path: Path) -> None:
    from vlsdk.cli import main

    register_plugin(industrial_plugin, "industrial")
    assert plugin_host.registry("demos").get("industrial").obj is run_demo
    assert main(["demo", "--quick", "--domain", "industrial", "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "industrial" in html and "PCB defect detection on synthetic boards" in html
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["industrial.map50"] <= 1.0 and metrics["industrial.own_expert_share"] > 0.0

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


def _trained_steps(folder: Path) -> int:
    """The last optimiser step the Trainer logged under ``folder/train`` (independent of the demo's report)."""
    import csv

    with open(folder / "train" / "metrics.csv", newline="") as f:
        return max(int(row["step"]) for row in csv.DictReader(f) if row["split"] == "train")


def test_steps_option_sets_the_training_steps(plugin_host, register_plugin, tmp_path: Path) -> None:
    from vlsdk.cli import main

    register_plugin(industrial_plugin, "industrial")
    assert main(["demo", "--quick", "--domain", "industrial", "--steps", "4", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["industrial.train_steps"] == 4 and _trained_steps(tmp_path / "industrial") == 4  # default: 50


def test_demo_on_the_deeppcb_folder(shared_data: Path, plugin_host, register_plugin, tmp_path: Path) -> None:
    """``--data industrial=<DeepPCB>`` in quick mode: trainval pairs with their templates, scored on test pairs."""
    from vlsdk.cli import main

    deeppcb = shared_data / "deeppcb"
    register_plugin(industrial_plugin, "industrial")
    assert main(["demo", "--quick", "--domain", "industrial", "--data", f"industrial={deeppcb}",
                 "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["industrial.train_steps"] == 50
    # quick mode measured 0.28 (seed 0); an untrained detector scores about 0
    assert 0.05 < metrics["industrial.deeppcb"] <= 1.0 and 0.0 <= metrics["industrial.map50"] <= 1.0
    html = (tmp_path / "report.html").read_text()
    assert "PCB defect detection on DeepPCB" in html and f"Real data from {deeppcb}" in html
    assert "first 48 DeepPCB trainval pairs" in html and "first 8 test pairs" in html and f">{deeppcb}<" in html
    image = cv2.imread(str(tmp_path / "industrial" / "predictions.png"))
    assert image is not None and image.std() > 10


def test_data_that_is_not_a_deeppcb_folder(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="trainval.txt.*DeepPCB list file does not exist"):
        run_demo(tmp_path, quick=True, device="cpu", seed=0, data=tmp_path)

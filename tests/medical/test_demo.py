"""The medical part of ``vlsdk demo``: synthetic lesions only, MONAI Dice, overlay PNG, routing inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import vlsdk_medical.demo as medical_demo
import vlsdk_medical.plugin as medical_plugin
from vlsdk.cli import main
from vlsdk.demo import DemoResult


def test_quick_demo_through_vlsdk_demo(register_plugin, monkeypatch, tmp_path):
    """One quick run (about 10 s): ``vlsdk demo --quick --domain medical`` calling the plugin's ``run_demo``."""
    results: list[tuple[dict, DemoResult]] = []
    run_demo = medical_demo.run_demo

    def recording_run_demo(out_dir, *, quick, device, seed):
        result = run_demo(out_dir, quick=quick, device=device, seed=seed)
        results.append(({"out_dir": out_dir, "quick": quick, "device": device, "seed": seed}, result))
        return result

    monkeypatch.setattr(medical_demo, "run_demo", recording_run_demo)  # the hook imports it at registration
    register_plugin(medical_plugin, "medical")
    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--domain", "medical", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # run_demo restores the thread count

    (call, result), = results
    assert call == {"out_dir": tmp_path / "medical", "quick": True, "device": "cpu", "seed": 0}
    assert isinstance(result, DemoResult) and result.domain == "medical" and result.expert == "medical.lesion"
    # an all-background prediction scores Dice 0; quick mode measured 0.59-0.60 over seeds 0-2, so 0.3 has margin
    assert result.metrics["dice_empty"] == 0.0
    dice = result.metrics["dice"]
    assert math.isfinite(dice) and 0.3 < dice <= 1.0
    assert math.isfinite(result.metrics["hd95"]) and result.metrics["hd95"] >= 0.0

    png, routing = result.images
    assert routing.name == "routing.png" and routing.parent == tmp_path / "medical" / "train"  # the Trainer's
    assert png.is_file() and png.parent == tmp_path / "medical" and png.stat().st_size > 20_000
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    assert min(pixels.shape[:2]) > 150 and pixels.std() > 10  # drawn images, not a blank canvas
    lime = (pixels[..., 0] < 80) & (pixels[..., 1] > 180) & (pixels[..., 2] < 80)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert lime.sum() > 50 and red.sum() > 50  # ground truth and prediction contours are drawn

    model, samples = result.model, result.samples
    assert not model.training and "medical.lesion" in model.expert_specs
    assert samples.dim() == 4 and samples.shape[1] == 1 == model.config.in_chans and len(samples) >= 2
    assert torch.isfinite(samples).all() and samples.abs().sum() > 0
    with torch.no_grad():
        out = model(samples[:2], heads=["lesion"])
    assert out["lesion"].logits.shape[0] == 2  # the samples are what the model takes

    html = (tmp_path / "report.html").read_text()
    assert "medical" in html and "Lesion segmentation" in html
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert math.isclose(metrics["medical.dice"], dice, abs_tol=1e-4)
    assert 0.0 <= metrics["medical.own_expert_share"] <= 1.0


def _trained_steps(folder) -> int:
    """The last optimiser step the Trainer logged under ``folder/train`` (independent of the demo's report)."""
    import csv

    with open(folder / "train" / "metrics.csv", newline="") as f:
        return max(int(row["step"]) for row in csv.DictReader(f) if row["split"] == "train")


def test_steps_option_sets_the_training_steps(register_plugin, tmp_path):
    register_plugin(medical_plugin, "medical")
    assert main(["demo", "--quick", "--domain", "medical", "--steps", "6", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["medical.train_steps"] == 6 and _trained_steps(tmp_path / "medical") == 6  # default: 80
    assert "--steps 6" in (tmp_path / "report.html").read_text()


def test_demo_on_the_brats_folder(shared_data, register_plugin, tmp_path, capsys):
    """``--data medical=<BraTS>`` in quick mode: FLAIR slices of the training patients, a held-out patient's scored."""
    brats = shared_data / "brats_lesion_mri"
    register_plugin(medical_plugin, "medical")
    assert main(["demo", "--quick", "--domain", "medical", "--data", f"medical={brats}", "--out", str(tmp_path)]) == 0
    assert "ignored" not in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["medical.train_steps"] == 80 and metrics["medical.dice_empty"] == 0.0
    # quick mode measured Dice 0.65 (seed 0) where an all-background prediction scores 0; 0.2 leaves margin
    assert 0.2 < metrics["medical.dice"] <= 1.0 and math.isfinite(metrics["medical.hd95"])
    html = (tmp_path / "report.html").read_text()
    assert "Lesion segmentation on BraTS FLAIR" in html and f"Real data from {brats}" in html
    # the test split's patient is held out; the other three train
    assert "held-out patient brats_2013_pat0001_1" in html
    assert "brats_2013_pat0004_1, brats_2013_pat0005_1, brats_2013_pat0006_1;" in html
    assert f">{brats}<" in html  # the summary's data column


def test_data_that_is_not_a_brats_folder(register_plugin, tmp_path):
    from vlsdk_medical.demo import run_demo

    with pytest.raises(ValueError, match=r"no BraTS patients \(folders with OTMultiClass.nii.gz\) under"):
        run_demo(tmp_path, quick=True, device="cpu", seed=0, data=tmp_path)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        run_demo(tmp_path, quick=True, device="cpu", seed=0, steps=0)

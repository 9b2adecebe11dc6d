"""Synthetic pre-training then real training (``vlsdk pcb --synthetic-pretrain-steps N``), on 64-px boards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from vlsdk_industrial.cli import QUICK, config_from_args, configure
from vlsdk_industrial.pipeline import HEAD, PipelineConfig, build_detector, run_pipeline
from vlsdk_industrial.pretrain import pretrain_synthetic, seconds_left
from vlsdk_industrial.synth import BoardSynthesizer
from vlsdk_industrial.transforms import build_transforms


def _rows(path: Path) -> list[dict]:
    return [row for row in map(json.loads, path.read_text().splitlines()) if row["split"] == "train"]


def test_pretrain_stage_then_real_stage(deeppcb: Path, tmp_path: Path, capsys) -> None:
    quick = {**QUICK, "image_size": 64}  # 8 real pairs (+ 3:1 synthetic), batch 4, 3 steps
    cfg = PipelineConfig(data=deeppcb, out=tmp_path, device="cpu", progress=False, synthetic_pretrain_steps=2,
                         synthetic_style="deeppcb", **quick)  # type: ignore[arg-type]
    summary = run_pipeline(cfg)
    printed = capsys.readouterr().out
    assert printed.index("stage 1/2: synthetic pre-training, 2 steps") < printed.index("stage 2/2: training, 3 steps")
    pre = summary["pretrain"]
    assert pre["steps"] == pre["requested_steps"] == 2 and not pre["out_of_time"] and pre["seconds"] > 0
    assert pre["boards"] == 2 * 4  # every pre-training board drawn once
    assert [r["step"] for r in _rows(tmp_path / "pretrain" / "metrics.jsonl")] == [1, 2]
    # then the real stage: its own Trainer folder, all its steps, a fresh schedule (peak lr after 1 warm-up step)
    assert summary["steps"] == 3 and summary["train_samples"] == 8 + 3 and summary["train_seconds"] > 0
    real_rows = _rows(tmp_path / "train" / "metrics.jsonl")
    assert [r["step"] for r in real_rows] == [1, 2, 3]
    assert real_rows[0]["lr"] == pytest.approx(cfg.lr)
    assert json.loads((tmp_path / "metrics.json").read_text())["pretrain"] == pre


def test_pretraining_changes_the_weights_and_keeps_the_time_box(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = build_detector("tiny", in_chans=2)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}  # parameters: BN statistics move anyway
    synth = BoardSynthesizer(template=True, style="deeppcb", min_defects=4, max_defects=10)
    tf = build_transforms(train=True, size=64, seed=0)
    stage = pretrain_synthetic(model, synth, steps=2, batch_size=2, lr=1e-3, transform=tf, out_dir=tmp_path / "a",
                               progress=True)
    assert "pretrain (synthetic): 100%" in capsys.readouterr().err  # the stage's bar is told from "train"
    assert stage.steps == 2 and stage.boards == 4 and stage.first_loss > 0
    changed = {k for k, p in model.named_parameters() if not torch.equal(before[k], p.detach())}
    assert any(k.startswith(f"heads.{HEAD}.") for k in changed), "the detection head did not learn"
    assert any(k.startswith("encoder.") for k in changed), "the encoder did not learn"
    assert len(changed) > len(before) // 2
    # a spent time box: one step, then stop; the next stage gets what is left (never negative)
    boxed = pretrain_synthetic(model, synth, steps=5, batch_size=2, lr=1e-3, transform=tf, out_dir=tmp_path / "b",
                               progress=False, max_seconds=0.0)
    assert boxed.steps == 1 and boxed.requested_steps == 5 and boxed.out_of_time
    assert seconds_left(10.0, 4.0) == 6.0 and seconds_left(1.0, boxed.seconds + 1) == 0.0
    assert seconds_left(None, 3.0) is None


def test_bad_pretrain_steps_raise() -> None:
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="synthetic_pretrain_steps must be an int >= 0"):
            PipelineConfig(synthetic_pretrain_steps=bad)  # type: ignore[arg-type]
    assert PipelineConfig().synthetic_pretrain_steps == 0
    with pytest.raises(ValueError, match="steps must be a positive int"):
        pretrain_synthetic(build_detector("tiny"), BoardSynthesizer(), steps=0, batch_size=2, lr=1e-3)
    parser = argparse.ArgumentParser()
    configure(parser)
    assert config_from_args(parser.parse_args(["--synthetic-pretrain-steps", "200"])).synthetic_pretrain_steps == 200
    with pytest.raises(ValueError, match="synthetic_pretrain_steps"):
        config_from_args(parser.parse_args(["--synthetic-pretrain-steps", "-5"]))

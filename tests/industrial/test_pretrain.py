"""Synthetic pre-training then real training (``industrial.pcb`` with ``synthetic_pretrain_steps``), 64-px boards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vlsdk.settings import settings_from
from vlsdk.tasks.runner import train
from vlsdk_industrial.cli import config_from_args, configure
from vlsdk_industrial.task import PcbSettings, PcbTask


def _rows(path: Path) -> list[dict]:
    return [row for row in map(json.loads, path.read_text().splitlines()) if row["split"] == "train"]


def _settings(deeppcb: Path, out: Path, **values) -> PcbSettings:
    quick = {**PcbTask.quick, "image_size": 64}  # 8 real pairs (+ 3:1 synthetic), batch 4, 3 steps
    return settings_from(PcbSettings, {**quick, "data": deeppcb, "out": out, "device": "cpu", "progress": False,
                                       **values}, "test")


def test_pretrain_stage_then_real_stage(deeppcb: Path, tmp_path: Path, capsys) -> None:
    settings = _settings(deeppcb, tmp_path, synthetic_pretrain_steps=2, synthetic_style="deeppcb")
    train(PcbTask(), settings)
    printed = capsys.readouterr().out
    assert printed.index("stage 1/2: pretrain, 2 steps on 8 samples") < printed.index("stage 2/2: train, 3 steps")
    summary = json.loads((tmp_path / "metrics.json").read_text())
    pre = summary["stages"][0]
    assert pre["steps"] == pre["requested_steps"] == 2 and not pre["out_of_time"]
    assert pre["samples"] == 2 * 4  # every pre-training board drawn once
    assert [r["step"] for r in _rows(tmp_path / "pretrain" / "metrics.jsonl")] == [1, 2]
    # then the real stage: its own Trainer folder, all its steps, a fresh schedule (peak lr after 1 warm-up step)
    assert summary["steps"] == 3 and summary["train_samples"] == 8 + 3
    real_rows = _rows(tmp_path / "train" / "metrics.jsonl")
    assert [r["step"] for r in real_rows] == [1, 2, 3]
    assert real_rows[0]["lr"] == pytest.approx(settings.lr)


def test_one_time_box_covers_every_stage(deeppcb: Path, tmp_path: Path) -> None:
    train(PcbTask(), _settings(deeppcb, tmp_path, synthetic_pretrain_steps=5, max_seconds=0.0))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    pre = summary["stages"][0]
    assert pre["steps"] == 1 and pre["requested_steps"] == 5 and pre["out_of_time"]  # one step, then stop
    assert summary["steps"] == 1 and summary["out_of_time"]  # the real stage gets what is left: nothing


def test_bad_pretrain_steps_raise() -> None:
    for bad in (-1, 1.5, True, "x"):
        with pytest.raises(ValueError, match="synthetic_pretrain_steps"):
            settings_from(PcbSettings, {"synthetic_pretrain_steps": bad}, "test")
    assert PcbSettings().synthetic_pretrain_steps == 0
    parser = argparse.ArgumentParser()
    configure(parser)
    assert config_from_args(parser.parse_args(["--synthetic-pretrain-steps", "200"])).synthetic_pretrain_steps == 200
    with pytest.raises(ValueError, match="synthetic_pretrain_steps"):
        config_from_args(parser.parse_args(["--synthetic-pretrain-steps", "-5"]))

"""``TrainConfig.max_seconds``: a clean stop at a step boundary that ``fit(resume=True)`` continues."""

from __future__ import annotations

import json

import pytest
import torch

import vlsdk
from vlsdk.testing import segmentation_loss, square_lesions
from vlsdk.train import TrainConfig, Trainer

seg_loss = segmentation_loss("seg")


def make_model():
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    return model


def config(tmp_path, **kw):
    base = {"steps": 4, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "log_every": 3, "progress": False,
            "out_dir": str(tmp_path / "run"), "seed": 3}
    return TrainConfig(**{**base, **kw})


def test_budget_stops_cleanly_and_resume_matches_an_uninterrupted_run(tmp_path):
    data = square_lesions()
    straight = Trainer(make_model(), seg_loss, data, config(tmp_path / "a", log_every=1)).fit()
    # a zero budget is spent after the first step, whatever the machine's speed
    budget = Trainer(make_model(), seg_loss, data, config(tmp_path / "b", max_seconds=0.0),
                     eval_fn=lambda m: {"score": 1.0})
    stopped = budget.fit()
    assert stopped.step == 1 and stopped.out_of_time
    assert [r["step"] for r in stopped.train] == [1]  # the last step is logged although log_every is 3
    assert stopped.eval == {"score": 1.0} and stopped.files["checkpoint"].is_dir()
    state = torch.load(tmp_path / "b" / "run" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1
    resumed = Trainer(make_model(), seg_loss, data, config(tmp_path / "b", log_every=1)).fit(resume=True)
    assert resumed.step == 4 and not resumed.out_of_time
    rows = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert losses == pytest.approx([r["loss"] for r in straight.train], rel=1e-5, abs=1e-6)


def test_budget_is_checked():
    with pytest.raises(ValueError, match="max_seconds must be >= 0"):
        TrainConfig(max_seconds=-1.0)
    assert TrainConfig.from_dict({"max_seconds": 30}).max_seconds == 30

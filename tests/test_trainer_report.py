"""Training reports: expert utilisation over training (``routing.jsonl`` + ``routing.png`` next to ``curves.png``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import vlsdk
from vlsdk.inspect.plots import plot_routing_history
from vlsdk.testing import segmentation_loss, square_lesions
from vlsdk.train import TrainConfig, Trainer
from vlsdk.train.routing_log import RoutingLog


class Lin(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc(x)


def make_model():
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.add_expert("toy.lin", Lin, init_bias=0.0)
    return model


def config(tmp_path, **kw):
    base = {"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "log_every": 2, "progress": False,
            "out_dir": str(tmp_path / "run"), "seed": 1, "amp": "off", "device": "cpu"}
    return TrainConfig(**{**base, **kw})


def rows_of(run):
    return [json.loads(line) for line in (run / "routing.jsonl").read_text().splitlines()]


def test_routing_shares_over_training_count_only_training_tokens(tmp_path):
    evals = []

    def eval_fn(model):  # eval-mode forwards must not be counted
        evals.append(model(torch.rand(3, 1, 64, 64), heads=["seg"]))
        return {"x": 1.0}

    trainer = Trainer(make_model(), segmentation_loss("seg"), square_lesions(16, size=64),
                      config(tmp_path, eval_every=2), eval_fn=eval_fn)
    result = trainer.fit()
    run = tmp_path / "run"
    assert evals  # the evaluation ran
    assert result.files["routing_png"] == run / "routing.png" and (run / "routing.png").stat().st_size > 1000
    assert (run / "curves.png").is_file()
    rows = rows_of(run)
    assert [(r["step"], r["layer"]) for r in rows] == [(s, layer) for s in (2, 4, 6) for layer in ("0", "1")]
    for r in rows:
        assert r["experts"] == ["generic.0", "generic.1", "generic.2", "generic.3", "toy.lin"]
        assert sum(r["share"]) == pytest.approx(1.0)
        # 2 steps x 4 images x (16 or 4 tokens) x top-2: only the training forwards of the interval
        assert sum(r["tokens"]) == 2 * 4 * (16 if r["layer"] == "0" else 4) * 2
        assert r["share"] == pytest.approx([t / sum(r["tokens"]) for t in r["tokens"]])
    assert any(r["tokens"][-1] > 0 for r in rows)  # the opened expert got tokens
    # the hooks are gone after fit: later forwards change nothing
    trainer.model.train()
    trainer.model(torch.rand(2, 1, 64, 64), heads=["seg"])
    assert rows_of(run) == rows


def test_resume_keeps_the_intervals_before_the_checkpoint(tmp_path):
    data = square_lesions(16, size=64)
    killed = Trainer(make_model(), segmentation_loss("seg"), data, config(tmp_path, save_every=2))
    killed.stop_after = 3  # dies after step 3; the checkpoint is step 2
    killed.fit()
    assert sorted({r["step"] for r in rows_of(tmp_path / "run")}) == [2]
    resumed = Trainer(make_model(), segmentation_loss("seg"), data, config(tmp_path, save_every=2))
    resumed.fit(resume=True)
    steps = [r["step"] for r in rows_of(tmp_path / "run")]
    assert steps == [2, 2, 4, 4, 6, 6]


def test_a_model_without_moe_layers_writes_no_routing_files(tmp_path):
    data = TensorDataset(torch.rand(8, 3), torch.rand(8, 1))
    trainer = Trainer(nn.Linear(3, 1), lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), data, config(tmp_path))
    result = trainer.fit()
    assert "routing_png" not in result.files and not (tmp_path / "run" / "routing.png").exists()
    assert (tmp_path / "run" / "curves.png").is_file()


def test_expert_added_mid_training_starts_a_new_interval(tmp_path):
    model = vlsdk.VLModel("tiny", in_chans=1)
    log = RoutingLog(model, tmp_path)
    model.train()
    model(torch.rand(1, 1, 64, 64))
    model.add_expert("toy.lin", Lin, init_bias=0.0)
    model(torch.rand(1, 1, 64, 64))
    log.snapshot(1)
    log.close()
    rows = log.rows()
    assert [len(r["experts"]) for r in rows] == [4, 4, 5, 5]
    assert [sum(r["tokens"]) for r in rows] == [32, 8, 32, 8]
    assert plot_routing_history(rows, tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no routing rows"):
        plot_routing_history([], tmp_path / "e.png")

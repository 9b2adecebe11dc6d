"""The trainer: learning, MoE losses, exact resume after a kill, NaN handling, logs, configs."""

from __future__ import annotations

import json
import time

import pytest
import torch

import vlsdk
from vlsdk.testing import segmentation_loss, square_lesions
from vlsdk.train import TrainConfig, Trainer, load_train_config, warmup_cosine

make_data = square_lesions
seg_loss = segmentation_loss("seg")


def make_model():
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    return model


def config(tmp_path, **kw):
    base = {"steps": 8, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "log_every": 1, "progress": False,
            "out_dir": str(tmp_path / "run"), "seed": 3}
    return TrainConfig(**{**base, **kw})


def test_training_lowers_the_loss_and_writes_logs(tmp_path):
    data = make_data()
    trainer = Trainer(make_model(), seg_loss, data, config(tmp_path, steps=25),
                      eval_fn=lambda m: {"dice_proxy": 1.0})
    result = trainer.fit()
    losses = [r["loss"] for r in result.train]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert {"aux_loss", "z_loss", "lr", "grad_norm", "samples_per_s", "data_wait_s"} <= set(result.train[0])
    assert all(0.0 <= r["data_share"] <= 1.0 for r in result.train)
    assert result.eval == {"dice_proxy": 1.0}
    run = tmp_path / "run"
    assert (run / "metrics.csv").read_text().startswith("split,step")
    assert (run / "curves.png").stat().st_size > 1000
    assert (run / "checkpoint" / "model.safetensors").is_file()
    loaded = vlsdk.VLModel.from_pretrained(run / "checkpoint")
    assert "seg" in loaded.heads


class _SlowData(torch.utils.data.Dataset):
    """A dataset whose samples take ``delay`` seconds each: an input pipeline slower than the model."""

    def __init__(self, data, delay: float) -> None:
        self.data, self.delay = data, delay

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.data[i]


def test_the_log_shows_time_spent_waiting_for_data(tmp_path):
    result = Trainer(make_model(), seg_loss, _SlowData(make_data(), 0.02), config(tmp_path, steps=3)).fit()
    assert all(r["data_wait_s"] >= 4 * 0.02 for r in result.train)  # 4 samples a step, 20 ms each
    assert all(r["data_share"] > 0.0 for r in result.train)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    data = make_data()
    straight = Trainer(make_model(), seg_loss, data, config(tmp_path / "a", grad_accum=2))
    full = straight.fit()

    killed = Trainer(make_model(), seg_loss, data, config(tmp_path / "b", grad_accum=2, save_every=3))
    killed.stop_after = 5  # dies after step 5; the last checkpoint is step 3
    killed.fit()
    resumed = Trainer(make_model(), seg_loss, data, config(tmp_path / "b", grad_accum=2, save_every=3))
    rest = resumed.fit(resume=True)
    assert resumed.step == 8
    rows = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 9))
    resumed_losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert resumed_losses == pytest.approx([r["loss"] for r in full.train], rel=1e-5, abs=1e-6)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert rest.step == 8


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    data = make_data()

    def exploding(model, batch):
        loss = seg_loss(model, batch)["loss"]
        return loss * float("nan") if trainer.step >= 2 else loss

    # max_skipped_steps=0: stop at the first non-finite step (tests/robustness/test_nonfinite_steps.py: skipping)
    trainer = Trainer(make_model(), exploding, data, config(tmp_path, save_every=1, max_skipped_steps=0))
    with pytest.raises(FloatingPointError, match="at step 3"):
        trainer.fit()
    state = torch.load(tmp_path / "run" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2


def test_resume_refuses_another_configuration(tmp_path):
    data = make_data()
    Trainer(make_model(), seg_loss, data, config(tmp_path, steps=2)).fit()
    other = vlsdk.VLModel("tiny", in_chans=1, embed_dim=32)
    other.add_head("seg", task="segmentation", num_classes=2)
    with pytest.raises(ValueError, match="embed_dim"):
        Trainer(other, seg_loss, data, config(tmp_path, steps=4)).fit(resume=True)


def test_config_files_and_overrides(tmp_path):
    (tmp_path / "t.yaml").write_text("steps: 50\nlr: 0.001\n")
    cfg = load_train_config(tmp_path / "t.yaml", ["batch_size=16", "amp=bf16"])
    assert (cfg.steps, cfg.lr, cfg.batch_size, cfg.amp) == (50, 0.001, 16, "bf16")
    (tmp_path / "bad.json").write_text('{"stpes": 3}')
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        load_train_config(tmp_path / "bad.json")
    (tmp_path / "broken.yaml").write_text("steps: [1,\n")
    with pytest.raises(ValueError, match="cannot be parsed"):
        load_train_config(tmp_path / "broken.yaml")
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="key=value"):
        TrainConfig().override(["steps"])


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup=4, total=20, min_ratio=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


class _IndexDataset(torch.utils.data.Dataset):
    """Sample i is the number i: what a batch holds says which indices the loader served."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i)])


def test_worker_loader_serves_the_recorded_indices_across_epochs(tmp_path):
    seen = []

    def loss_fn(model, batch):
        seen.append((batch[:, 0].long().tolist(), list(trainer.batch_indices)))
        return {"loss": model(batch).pow(2).mean()}

    config = TrainConfig(steps=7, batch_size=3, num_workers=2, device="cpu", out_dir=str(tmp_path),
                         progress=False, warmup_steps=1)
    trainer = Trainer(torch.nn.Linear(1, 1), loss_fn, _IndexDataset(), config)
    trainer.fit()
    assert len(seen) == 7  # 3 batches an epoch: the stream crosses two epoch boundaries
    assert all(served == recorded for served, recorded in seen)
    epochs = [sorted(sum((s for s, _ in seen[e * 3:(e + 1) * 3]), [])) for e in range(2)]
    assert all(len(set(e)) == 9 for e in epochs)  # each epoch a permutation (the 10th sample dropped)


def test_router_losses_skip_a_frozen_teacher():
    import vlsdk
    from vlsdk.models.moe import DynamicMoE
    from vlsdk.train.distill import Distiller
    from vlsdk.train.trainer import _RouterLosses

    torch.manual_seed(0)
    student, teacher = vlsdk.VLModel("tiny", in_chans=1), vlsdk.VLModel("tiny", in_chans=1)
    for model in (student, teacher):
        model.add_head("seg", task="segmentation", num_classes=2)
    distiller = Distiller(student, teacher).train()
    collected = _RouterLosses(distiller)  # hooks both encoders, as the Trainer does
    distiller(torch.rand(2, 1, 32, 32))
    layers = sum(isinstance(m, DynamicMoE) for m in student.modules())
    assert layers > 0 and len(collected.aux) == layers  # the student's layers only, not the teacher's
    assert all(a.requires_grad for a in collected.aux)
    collected.close()


# -- TrainConfig.max_seconds: a clean stop at a step boundary that fit(resume=True) continues --

def test_budget_stops_cleanly_and_resume_matches_an_uninterrupted_run(tmp_path):
    data = make_data()
    straight = Trainer(make_model(), seg_loss, data, config(tmp_path / "a", steps=4, warmup_steps=1)).fit()
    # a zero budget is spent after the first step, whatever the machine's speed
    short = config(tmp_path / "b", steps=4, warmup_steps=1, log_every=3, max_seconds=0.0)
    budget = Trainer(make_model(), seg_loss, data, short, eval_fn=lambda m: {"score": 1.0})
    stopped = budget.fit()
    assert stopped.step == 1 and stopped.out_of_time
    assert [r["step"] for r in stopped.train] == [1]  # the last step is logged although log_every is 3
    assert stopped.eval == {"score": 1.0} and stopped.files["checkpoint"].is_dir()
    state = torch.load(tmp_path / "b" / "run" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1
    resumed = Trainer(make_model(), seg_loss, data, config(tmp_path / "b", steps=4, warmup_steps=1)).fit(resume=True)
    assert resumed.step == 4 and not resumed.out_of_time
    rows = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert losses == pytest.approx([r["loss"] for r in straight.train], rel=1e-5, abs=1e-6)


def test_budget_is_checked():
    with pytest.raises(ValueError, match="max_seconds must be >= 0"):
        TrainConfig(max_seconds=-1.0)
    assert TrainConfig.from_dict({"max_seconds": 30}).max_seconds == 30


# -- TrainConfig.progress_label: the bar's label, so the stages of a multi-stage run read apart --

def test_progress_bar_shows_the_label(tmp_path, capsys):
    data = make_data()
    Trainer(make_model(), seg_loss, data, config(tmp_path / "a", steps=2, progress=True,
                                                 progress_label="pretrain (synthetic)")).fit()
    bar = capsys.readouterr().err  # tqdm writes to stderr
    assert "pretrain (synthetic): 100%" in bar and "2/2" in bar
    Trainer(make_model(), seg_loss, data, config(tmp_path / "b", steps=2, progress=True)).fit()
    assert "train: 100%" in capsys.readouterr().err  # the default label
    assert TrainConfig().progress_label == "train"


def test_world_record_and_no_gpu_memory_column_on_cpu(tmp_path):
    result = Trainer(make_model(), seg_loss, make_data(), config(tmp_path, steps=2, grad_accum=2, device="cpu")).fit()
    world = json.loads((tmp_path / "run" / "train_world.json").read_text())
    assert world == {"world_size": 1, "batch_size_per_rank": 4, "global_batch": 8, "backend": None, "device": "cpu"}
    assert result.train and not any(k.startswith("max_memory") for r in result.train for k in r)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak memory is logged on CUDA devices only")
def test_cuda_rows_log_this_ranks_peak_memory(tmp_path):
    result = Trainer(make_model(), seg_loss, make_data(), config(tmp_path, steps=3, device="cuda")).fit()
    peaks = [r["max_memory_mib"] for r in result.train]
    assert 0 < peaks[0] <= peaks[-1] <= torch.cuda.max_memory_allocated() / 2**20
    assert "max_memory_mib_all_ranks" not in result.train[-1]  # one process: no max over ranks
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["max_memory_mib"] for r in logged if r["split"] == "train"] == pytest.approx(peaks)

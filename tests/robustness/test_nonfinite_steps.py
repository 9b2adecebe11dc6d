"""A non-finite loss or gradient skips the optimiser step; too many in a row stop the run."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

import vlsdk
from vlsdk.testing import segmentation_loss, square_lesions
from vlsdk.train import TrainConfig, Trainer, warmup_cosine

seg_loss = segmentation_loss("seg")


def make_model(**kw) -> vlsdk.VLModel:
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1, **kw)
    model.add_head("seg", task="segmentation", num_classes=2)
    return model


def config(out_dir, **kw) -> TrainConfig:
    base = {"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "log_every": 2, "progress": False,
            "out_dir": str(out_dir), "seed": 3, "device": "cpu"}
    return TrainConfig(**{**base, **kw})


class NanAt:
    """``loss_fn`` whose loss is NaN at the chosen (1-based) steps; records the weights each step starts with."""

    def __init__(self, steps: set[int]) -> None:
        self.steps, self.trainer, self.weights = steps, None, {}

    def __call__(self, model, batch):
        step = self.trainer.step + 1
        self.weights.setdefault(step, [p.detach().clone() for p in model.parameters()])
        out = seg_loss(model, batch)
        return out | {"loss": out["loss"] * float("nan")} if step in self.steps else out


def rows(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_nan_loss_skips_the_step_warns_counts_and_training_goes_on(tmp_path):
    loss_fn = NanAt({3, 5})
    trainer = Trainer(make_model(), loss_fn, square_lesions(), config(tmp_path, grad_accum=2))
    loss_fn.trainer = trainer
    with pytest.warns(RuntimeWarning) as seen:
        result = trainer.fit()
    messages = [str(w.message) for w in seen if "skipped" in str(w.message)]
    assert len(messages) == 2
    assert "non-finite loss at step 3, micro-batch 0 (loss nan; loss terms {'loss': nan, 'ce': 0." in messages[0]
    assert "'aux_loss':" in messages[0] and "step 3 skipped (no parameter update; 1 in a row" in messages[0]
    # the step's forward was replayed with hooks: the model was finite, the loss function made the NaN
    assert "first non-finite output: every module's output finite (the loss or router terms" in messages[0]
    assert "step 5 skipped" in messages[1] and "2 in this run" in messages[1]
    assert result.step == 6
    assert same(loss_fn.weights[3], loss_fn.weights[4])  # step 3 changed nothing
    assert not same(loss_fn.weights[2], loss_fn.weights[3])  # a normal step does
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    logged = {r["step"]: r for r in rows(tmp_path) if r["split"] == "train"}
    assert sorted(logged) == [2, 3, 4, 5, 6]  # log_every=2, and every skipped step gets its row
    assert "skipped_steps" not in logged[2]  # the column appears with the first skip
    assert [logged[s]["skipped_steps"] for s in (3, 4, 5, 6)] == [1, 1, 2, 2]
    assert math.isnan(logged[3]["loss"]) and math.isfinite(logged[4]["loss"])
    # the schedule advanced through the skipped steps, as torch.amp.GradScaler's skips do
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    schedule = warmup_cosine(opt, 2, 6, 0.01)
    lrs = []
    for _ in range(6):
        lrs.append(schedule.get_last_lr()[0])
        opt.step()
        schedule.step()
    assert [logged[s]["lr"] for s in (2, 3, 4, 5, 6)] == pytest.approx(lrs[1:])


def test_too_many_skips_in_a_row_stop_the_run_and_keep_the_last_checkpoint(tmp_path):
    loss_fn = NanAt({3, 4, 5, 6})
    trainer = Trainer(make_model(), loss_fn, square_lesions(), config(tmp_path, save_every=1, max_skipped_steps=2))
    loss_fn.trainer = trainer
    with pytest.warns(RuntimeWarning, match="skipped"), pytest.raises(FloatingPointError) as err:
        trainer.fit()
    assert "non-finite loss at step 5" in str(err.value)
    assert "3 non-finite step(s) in a row, more than max_skipped_steps=2" in str(err.value)
    assert "the last good checkpoint (step 4)" in str(err.value)
    state = torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 4 and state["skipped_steps"] == 2
    saved = vlsdk.VLModel.from_pretrained(tmp_path / "checkpoint")
    assert same([p.detach() for p in saved.parameters()], loss_fn.weights[3])  # step 2's weights, finite


def test_skips_apart_do_not_add_up_and_resume_keeps_the_count(tmp_path):
    loss_fn = NanAt({2, 3, 5, 6})
    trainer = Trainer(make_model(), loss_fn, square_lesions(), config(tmp_path, max_skipped_steps=2, save_every=4))
    loss_fn.trainer = trainer
    trainer.stop_after = 4  # killed after step 4; checkpoint at step 4
    with pytest.warns(RuntimeWarning, match="skipped"):
        trainer.fit()
    resumed_fn = NanAt({2, 3, 5, 6})
    resumed = Trainer(make_model(), resumed_fn, square_lesions(), config(tmp_path, max_skipped_steps=2, save_every=4))
    resumed_fn.trainer = resumed
    with pytest.warns(RuntimeWarning) as seen:
        result = resumed.fit(resume=True)
    step6 = [str(w.message) for w in seen if "step 6 skipped" in str(w.message)]
    assert step6 and step6[0].endswith("2 in a row of max_skipped_steps=2, 4 in this run)")
    assert result.step == 6 and resumed.skipped_steps == 4
    assert rows(tmp_path)[-1]["skipped_steps"] == 4


def test_non_finite_gradients_with_a_finite_loss_skip_the_step(tmp_path):
    """sqrt at 0 is finite; its gradient is not: the clipped gradient norm tells."""

    def loss_fn(model, batch):
        out = seg_loss(model, batch)
        if trainer.step + 1 == 2:
            weight = next(model.heads["seg"].parameters())
            out["loss"] = out["loss"] + torch.sqrt((weight - weight.detach()).abs().sum())
        return out

    trainer = Trainer(make_model(), loss_fn, square_lesions(), config(tmp_path, steps=3, log_every=1))
    with pytest.warns(RuntimeWarning, match=r"non-finite gradient norm nan at step 2 .*step 2 skipped"):
        result = trainer.fit()
    assert [r.get("skipped_steps", 0) for r in result.train] == [0, 1, 1]
    assert math.isfinite(result.train[1]["loss"]) and math.isnan(result.train[1]["grad_norm"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_non_finite_input_is_traced_to_the_first_module_it_reaches(tmp_path):
    data = square_lesions()
    data.tensors[0][5, 0, 3, 3] = float("inf")  # one damaged pixel in one training image
    trainer = Trainer(make_model(), seg_loss, data, config(tmp_path, steps=8, max_skipped_steps=8))
    with pytest.warns(RuntimeWarning) as seen:
        trainer.fit()
    skips = [str(w.message) for w in seen if "skipped" in str(w.message)]
    assert skips, "the image with an inf pixel was never drawn"
    first_conv = next(n for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.Conv2d))
    assert f"first non-finite output: {first_conv} (Conv2d), inputs non-finite" in skips[0]
    indices = re.search(r"dataset indices \[([^\]]*)\]", skips[0])
    assert indices and 5 in [int(i) for i in indices.group(1).split(",")]
    # the skipped steps put back BatchNorm's statistics, which the damaged image had turned into NaN
    assert all(torch.isfinite(b).all() for b in trainer.model.buffers() if b.is_floating_point())


def test_an_overflow_under_autocast_is_told_from_one_in_any_precision():
    from vlsdk.train.nonfinite import rng_state, trace_nonfinite

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 1))
    big = torch.full((2, 4), 1e5)  # finite in float32, beyond float16 (max 65504): autocast casts it to inf

    def fp16():
        return torch.autocast("cpu", dtype=torch.float16)

    line = trace_nonfinite(net, lambda: net(big).sum(), autocast=fp16, rng=rng_state())
    assert line.startswith("first non-finite output: 0 (Linear), inputs finite (max |x| 1e+05)")
    assert line.endswith("without autocast the forward is finite (a precision problem)")
    with torch.no_grad():
        net[2].weight[0, 0] = float("nan")
    line = trace_nonfinite(net, lambda: net(big).sum(), autocast=None)
    assert line.startswith("first non-finite output: 2 (Linear), inputs finite (max |x| ")
    assert line.endswith("; non-finite parameters: 2.weight")


def test_the_replay_leaves_no_trace_and_never_raises():
    from vlsdk.train.nonfinite import trace_nonfinite

    model = make_model().train()  # the stem's BatchNorm updates its running statistics in training
    image = torch.rand(2, 1, 32, 32)
    image[0, 0, 5, 5] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    published = []
    handle = model.encoder.routing.subscribe(lambda encoder, stats: published.append(stats))
    line = trace_nonfinite(model, lambda: model(image, heads=["seg"]), autocast=None)
    assert line.startswith("first non-finite output: ") and "inputs non-finite" in line
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items() if v.isfinite().all())
    assert published == []  # the routing log and the MoE losses never see the replay
    model(image.nan_to_num(), heads=["seg"])
    assert len(published) == 1  # and the collector publishes again after it
    handle.remove()

    def broken():
        raise RuntimeError("labels out of range")

    assert trace_nonfinite(model, broken, autocast=None) == ("first non-finite output: the replayed forward "
                                                            "raised RuntimeError: labels out of range")
    assert trace_nonfinite(model, lambda: model(image.nan_to_num(), heads=["seg"]), autocast=None) == (
        "first non-finite output: the replay was finite (not reproduced)")


# -- under torchrun: every rank skips the same step --

def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 32, 32, generator=g)
    return TensorDataset(images, (images[:, 0] > 0.6).long())


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from datetime import timedelta

    # a hang guard, not a measurement: ranks that disagreed would wait forever in the gradient all-reduce
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        torch.set_num_threads(1)

        def loss_fn(m, batch):
            images, masks = batch
            loss = m.heads["seg"].loss(m(images, heads=["seg"])["seg"], masks)
            return loss | {"loss": loss["loss"] * float("nan")} if rank == 1 and trainer.step == 1 else loss

        trainer = Trainer(make_model(stem_norm="group"), loss_fn, _data(),
                          config(out_dir, steps=3, batch_size=2, log_every=1))
        result = trainer.fit()
        skipped = [r.get("skipped_steps", 0) for r in result.train]
        torch.save({"state": trainer.model.state_dict(), "skipped": skipped, "step": trainer.step},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_nan_on_one_rank_is_skipped_by_every_rank(tmp_path):
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [0, 1, 1]
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), k  # the ranks stayed in step
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert math.isnan(logged[1]["loss"]) and logged[1]["skipped_steps"] == 1  # rank 0 logged the skip

"""Data-parallel training on CPU with gloo: 2 processes equal 1 process on the same global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

import vlsdk
from vlsdk.train import TrainConfig, Trainer


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 32, 32, generator=g)
    return TensorDataset(images, (images[:, 0] > 0.6).long())


def model() -> vlsdk.VLModel:
    torch.manual_seed(0)
    m = vlsdk.VLModel("tiny", in_chans=1, stem_norm="group")  # batch-independent norm: exact equality
    m.add_head("seg", task="segmentation", num_classes=2, dice_weight=0.0)  # batch Dice is not a mean
    return m


def seg_loss(m, batch):
    images, masks = batch
    return m.heads["seg"].loss(m(images, heads=["seg"])["seg"], masks)


def config(out_dir, batch_size) -> TrainConfig:
    # the load-balancing loss depends on per-rank token counts; leave it out of the equality check
    return TrainConfig(steps=4, batch_size=batch_size, lr=1e-2, warmup_steps=1, log_every=1, progress=False,
                       aux_loss_weight=0.0, out_dir=str(out_dir), seed=5)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        trainer = Trainer(model(), seg_loss, data(), config(out_dir, batch_size=2))
        result = trainer.fit()
        if rank == 0:
            torch.save({"state": trainer.model.state_dict(), "losses": [r["loss"] for r in result.train]},
                       f"{out_dir}/rank0.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    single = Trainer(model(), seg_loss, data(), config(tmp_path / "single", batch_size=4))
    result = single.fit()
    assert ddp["losses"] == [pytest_approx(x) for x in (r["loss"] for r in result.train)]
    # Adam turns float-noise gradients of ~0 into +-lr steps, so a few elements may differ; the bulk must not
    diffs = torch.cat([(ddp["state"][k].float() - v.float()).abs().reshape(-1)
                       for k, v in single.model.state_dict().items() if v.is_floating_point()])
    assert float(diffs.max()) <= 2 * 1e-2 * 4
    assert float((diffs > 1e-4).float().mean()) < 1e-3
    assert (tmp_path / "ddp" / "checkpoint" / "model.safetensors").is_file()  # rank 0 saved it
    assert (tmp_path / "ddp" / "metrics.jsonl").read_text().count('"train"') == 4  # rank 0 logged once


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-4, abs=1e-5)


def _nan_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from datetime import timedelta

    # a hang guard, not a measurement: without agreement rank 0 would wait forever in the gradient all-reduce
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        torch.set_num_threads(1)

        def loss_on_rank1_explodes(m, batch):
            loss = seg_loss(m, batch)["loss"]
            return loss * float("nan") if rank == 1 and trainer.step >= 2 else loss

        cfg = config(out_dir, batch_size=2)
        cfg.save_every = 1
        cfg.max_skipped_steps = 0  # stop at the first non-finite step, not skip it
        trainer = Trainer(model(), loss_on_rank1_explodes, data(), cfg)
        message = ""
        try:
            trainer.fit()
        except FloatingPointError as err:
            message = str(err)
        torch.save({"message": message, "step": trainer.step, "indices": trainer.batch_indices},
                   f"{out_dir}/nan_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    out = tmp_path / "ddp"
    mp.spawn(_nan_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"nan_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r, seen in enumerate(ranks):
        assert seen["step"] == 2, seen  # both stopped before taking step 3
        assert "non-finite loss on rank(s) [1] of 2 at step 3, micro-batch 0" in seen["message"]
        assert f"rank {r}'s batch: dataset indices {seen['indices']}" in seen["message"]
        assert "the last good checkpoint (step 2)" in seen["message"]
    assert "(loss nan;" in ranks[1]["message"] and "this rank's loss" in ranks[0]["message"]
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 2
    assert not set(ranks[0]["indices"]) & set(ranks[1]["indices"])  # each rank's own slice of the global batch
    state = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2  # rank 0 kept the last good checkpoint

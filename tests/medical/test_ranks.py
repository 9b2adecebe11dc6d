"""The lesion task's training set under 2 gloo ranks: the repeats that give fresh crops count global batches
(``batch_size x world``), and the runner's step count is ``max_steps`` on one rank or two."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlsdk_medical.task import LesionTask

MAX_STEPS, BATCH = 5, 4


def _settings(data: Path):
    return LesionTask().settings(data=data, train_splits=["train"], epochs=2, batch_size=BATCH, roi_size=64,
                                 max_slices_per_case=12, max_steps=MAX_STEPS, device="cpu", progress=False)


def _rank(rank: int, world: int, init_file: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        train_set = LesionTask().datasets(_settings(Path(data)), "train")  # the task asks the process group
        (Path(out) / f"rank{rank}.json").write_text(json.dumps([len(train_set.index), train_set.repeats]))
    finally:
        dist.destroy_process_group()


def _runner_steps(length: int, world: int) -> int:
    """The runner's step count (vlsdk.tasks.runner.train) for epochs=2 and MAX_STEPS."""
    return min(MAX_STEPS, 2 * max(1, length // (BATCH * world)))


def test_two_ranks_count_global_batches(brats_root: Path, tmp_path: Path) -> None:
    one = LesionTask().datasets(_settings(brats_root), "train")
    n = len(one.index)
    assert n == 24 and one.repeats == math.ceil(MAX_STEPS * BATCH / n) == 1  # 2 patients x 12 slices
    assert _runner_steps(len(one), 1) == MAX_STEPS
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(brats_root), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        slices, repeats = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert slices == n and repeats == math.ceil(MAX_STEPS * BATCH * 2 / n) == 2
        assert slices * repeats >= MAX_STEPS * BATCH * 2  # every global batch of the run gets fresh crops
        assert _runner_steps(slices * repeats, 2) == MAX_STEPS

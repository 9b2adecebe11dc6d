"""``lesion_train_set`` under 2 gloo ranks: an epoch is a pass over the slices in global batches
(``batch_size x world``), so 2 ranks take half the steps of one process for the same epochs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlsdk_medical.pipeline import LesionTrainConfig, lesion_train_set


def _config(data: Path) -> LesionTrainConfig:
    return LesionTrainConfig(data_root=str(data), train_splits=("train",), epochs=2, batch_size=4, roi_size=64,
                             max_slices_per_case=12, device="cpu", progress=False).resolved()


def _rank(rank: int, world: int, init_file: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        train_set, steps = lesion_train_set(_config(Path(data)))
        (Path(out) / f"rank{rank}.json").write_text(json.dumps([len(train_set.index), train_set.repeats, steps]))
    finally:
        dist.destroy_process_group()


def test_two_ranks_take_half_the_steps(brats_root: Path, tmp_path: Path) -> None:
    one_set, one_steps = lesion_train_set(_config(brats_root))
    n = len(one_set.index)
    assert n == 24 and one_steps == 2 * 24 // 4  # 2 patients x 12 slices, 2 epochs of batch 4
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(brats_root), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        slices, repeats, steps = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert slices == n and steps == one_steps // 2  # global batch 2 x 4
        assert slices * repeats >= steps * 4 * 2  # the repeats cover every global batch with fresh crops

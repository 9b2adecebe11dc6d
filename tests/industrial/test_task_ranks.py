"""The ``industrial.pcb`` task under 2 gloo ranks: both train, only rank 0 evaluates, saves and writes metrics.

An epoch is a pass over the data in global batches (``batch_size x world``): 4 pairs, 2 per rank, 2 ranks
make one step, not the two a single process with batch 2 would take.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, init_file: str, data: str, out: str) -> None:
    from vlsdk.tasks.runner import train
    from vlsdk_industrial.task import PcbSettings, PcbTask

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        settings = PcbSettings(data=Path(data), out=Path(out) / f"rank{rank}", model="tiny", epochs=1, batch_size=2,
                               image_size=64, device="cpu", train_pairs=4, eval_pairs=1, num_workers=0,
                               draw=1, progress=False, cache="packed")
        result = train(PcbTask(), settings)
        (Path(out) / f"returned{rank}.json").write_text(json.dumps([sorted(result.metrics), result.steps]))
    finally:
        dist.destroy_process_group()


def test_only_rank_zero_evaluates_and_writes(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "deeppcb"
    if not (data / "PCBData" / "trainval.txt").is_file():
        pytest.skip(f"{data} holds no PCBData/trainval.txt")
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(data), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0" / "metrics.json").is_file() and (tmp_path / "rank0" / "model").is_dir()
    assert not (tmp_path / "rank1" / "metrics.json").exists() and not (tmp_path / "rank1" / "model").exists()
    assert not (tmp_path / "rank1" / "predictions.png").exists()
    keys, steps = json.loads((tmp_path / "returned0.json").read_text())
    assert "map_deeppcb" in keys and steps == 1  # one epoch of 4 pairs in global batches of 2 x 2
    assert json.loads((tmp_path / "returned1.json").read_text()) == [[], 1]  # rank 1 trains, does not evaluate

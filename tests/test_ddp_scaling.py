"""benchmarks/ddp_scaling.py on real CPU runs: 1 process and 2 gloo processes training with the same global batch.

The Trainer composes every global batch from the same seeded permutation whatever the world size (each
rank takes its slice), so the 1- and 2-process runs see the same samples at every step: their losses are
equal up to float noise, not merely alike. A run at a tenth of the learning rate, or a copy of the baseline
that drifts away late, must fail the agreement criterion; a run cut short gets no verdict; a run with another
global batch or another learning rate must be refused.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vlsdk
from vlsdk.testing import segmentation_loss, square_lesions
from vlsdk.train import TrainConfig, Trainer
from vlsdk.train.distributed import max_over_ranks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ddp_scaling  # noqa: E402

STEPS = 24
GLOBAL_BATCH = 4


def model() -> vlsdk.VLModel:
    torch.manual_seed(0)
    m = vlsdk.VLModel("tiny", in_chans=1, stem_norm="group")  # batch-independent norm: same loss on 1 or 2 ranks
    m.add_head("seg", task="segmentation", num_classes=2, dice_weight=0.0)  # batch Dice is not a mean over ranks
    return m


def train(out_dir: Path | str, batch_size: int, lr: float = 1e-2, steps: int = STEPS) -> None:
    # the load-balancing loss depends on per-rank token counts: left out, as in test_distributed.py
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=2, log_every=1, progress=False,
                         aux_loss_weight=0.0, out_dir=str(out_dir), seed=5)
    Trainer(model(), segmentation_loss("seg"), square_lesions(n=16), config).fit()


def _rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        train(out_dir, batch_size=GLOBAL_BATCH // world)
        largest = max_over_ranks(rank + 1.5, torch.device("cpu"))
        (Path(out_dir) / f"max_over_ranks{rank}.json").write_text(json.dumps(largest))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp_scaling")
    folders = {"one": root / "one", "two": root / "two", "slow_lr": root / "slow_lr", "other_batch": root / "b2"}
    mp.spawn(_rank, args=(2, str(root / "init"), str(folders["two"])), nprocs=2, join=True)
    train(folders["one"], batch_size=GLOBAL_BATCH)
    train(folders["slow_lr"], batch_size=GLOBAL_BATCH, lr=1e-3)
    train(folders["other_batch"], batch_size=2, steps=2)
    return folders


def logged(folder: Path, key: str) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    return [r["step"] for r in train_rows], [r[key] for r in train_rows]


def test_world_size_and_global_batch_are_recorded_and_read(runs: dict[str, Path]) -> None:
    two = json.loads((runs["two"] / "train_world.json").read_text())
    assert two == {"world_size": 2, "batch_size_per_rank": 2, "global_batch": 4, "backend": "gloo", "device": "cpu"}
    one, read_two = ddp_scaling.read_run(runs["one"]), ddp_scaling.read_run(runs["two"])
    assert (one.world_size, one.global_batch) == (1, GLOBAL_BATCH)
    assert (read_two.world_size, read_two.global_batch) == (2, GLOBAL_BATCH)
    assert [r["step"] for r in read_two.rows] == list(range(1, STEPS + 1))
    assert json.loads((runs["two"] / "max_over_ranks0.json").read_text()) == 2.5  # rank 1's 1 + 1.5, on both ranks
    assert json.loads((runs["two"] / "max_over_ranks1.json").read_text()) == 2.5


def test_efficiency_is_per_gpu_throughput_against_one_gpu(runs: dict[str, Path]) -> None:
    base, two = ddp_scaling.compare([ddp_scaling.read_run(runs["one"]), ddp_scaling.read_run(runs["two"])])

    def wall_clock_rate(folder: Path) -> float:  # images between the last warm-up row and the last row, per second
        steps, elapsed = logged(folder, "step")[1], logged(folder, "elapsed_s")[1]
        start = max(k for k, s in enumerate(steps) if s <= 0.1 * steps[-1])
        return (steps[-1] - steps[start]) * GLOBAL_BATCH / (elapsed[-1] - elapsed[start])

    assert base.images_per_s == pytest.approx(wall_clock_rate(runs["one"]))
    assert two.images_per_s == pytest.approx(wall_clock_rate(runs["two"]))
    assert base.efficiency == pytest.approx(1.0)
    assert two.efficiency == pytest.approx(two.images_per_s / 2 / base.images_per_s)
    # CPU runs log no GPU memory: the column stays empty rather than showing a made-up figure
    assert "max_memory_mib" not in json.loads((runs["two"] / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isnan(two.peak_mib)


def test_loss_curves_of_one_and_two_processes_agree_and_a_slower_lr_does_not(runs: dict[str, Path]) -> None:
    _, one_loss = logged(runs["one"], "loss")
    _, two_loss = logged(runs["two"], "loss")
    assert two_loss == pytest.approx(one_loss, rel=1e-4, abs=1e-5)  # same samples every step: same losses
    assert one_loss[-1] < 0.5 * one_loss[0]  # it learnt: there is a curve to compare, not a flat line
    one = ddp_scaling.read_run(runs["one"])
    same = ddp_scaling.loss_agreement(one, ddp_scaling.read_run(runs["two"]))
    assert same.steps == STEPS - 2 and same.agree is True and same.noise > 0  # steps 1-2 are the warm-up tenth
    assert same.diff < 1e-3 * same.noise
    slow = ddp_scaling.loss_agreement(one, ddp_scaling.read_run(runs["slow_lr"]))
    assert slow.agree is False, (slow.diff, slow.noise)


def _shifted(run: ddp_scaling.ScalingRun, offset: float, after_step: int) -> ddp_scaling.ScalingRun:
    rows = [{**r, "loss": r["loss"] + (offset if r["step"] > after_step else 0.0)} for r in run.rows]
    return dataclasses.replace(run, rows=rows)


def test_a_late_divergence_fails_and_a_run_cut_short_gets_no_verdict(runs: dict[str, Path]) -> None:
    one = ddp_scaling.read_run(runs["one"])
    noise = ddp_scaling.loss_agreement(one, one).noise
    assert ddp_scaling.loss_agreement(one, one).agree is True
    # the same curve, 3 noise units higher over the last quarter: the whole-run mean alone would miss it
    late = ddp_scaling.loss_agreement(one, _shifted(one, 3 * noise, after_step=3 * STEPS // 4))
    assert late.diff <= late.noise and late.tail > ddp_scaling.TAIL_FACTOR * late.noise and late.agree is False
    # a run that stopped at half the steps (e.g. --max-seconds): no verdict, whatever its losses
    half = dataclasses.replace(one, rows=one.rows[: STEPS // 2])
    cut = ddp_scaling.loss_agreement(one, half)
    assert cut.agree is None and (cut.reached, cut.base_last) == (STEPS // 2, STEPS)
    row = ddp_scaling.compare([one, half])[1]
    assert f"no verdict: shared steps end at {STEPS // 2} of {STEPS}" in ddp_scaling.format_table([row])


def test_command_prints_the_table_and_writes_the_plot(runs: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "plots" / "ddp_loss.png"
    assert ddp_scaling.main([str(runs["one"]), str(runs["two"]), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "| efficiency |" in table and f"| {runs['two']} | 2 | 4 |" in table and "| yes |" in table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(plot).shape[:2] == (440, 770)  # 7 x 4 inches at 110 dpi


def test_a_run_with_another_global_batch_or_learning_rate_is_refused(runs: dict[str, Path]) -> None:
    one, other = ddp_scaling.read_run(runs["one"]), ddp_scaling.read_run(runs["other_batch"])
    with pytest.raises(ValueError, match=r"global batch 2 .* with 4: .* per-rank batch to 4\)"):
        ddp_scaling.compare([one, other])
    with pytest.raises(ValueError, match=r"differs in \{'lr': \(0.01, 0.001\)\}"):
        ddp_scaling.compare([one, ddp_scaling.read_run(runs["slow_lr"])])


def test_smoothing_is_a_centred_moving_average() -> None:
    values = np.array([0.0, 3.0, 6.0, 3.0, 0.0])
    assert ddp_scaling.smooth(values, 3).tolist() == pytest.approx([1.5, 3.0, 4.0, 3.0, 1.5])
    assert ddp_scaling.smooth(values, 9).tolist() == pytest.approx([2.4] * 5)  # wider than the curve: its mean
    for even_or_empty in (0, 4):
        with pytest.raises(ValueError, match="odd"):
            ddp_scaling.smooth(values, even_or_empty)

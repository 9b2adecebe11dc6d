"""Data-parallel scaling from Trainer run folders: images/s, efficiency, peak memory and loss agreement.

Give the 1-GPU run first, then the N-GPU runs of the same training (same global batch, learning
rate, schedule, seed and precision; the script refuses others). Each folder is a Trainer
``out_dir`` (``metrics.jsonl``, ``train_config.json``, ``train_world.json``) or a ``vlsdk pcb --out``
folder holding one as ``train/``:

    python benchmarks/ddp_scaling.py runs/ddp_base_1gpu runs/ddp_base_2gpu runs/ddp_base_8gpu --plot ddp_loss.png

Per run it prints:

- images/s: images trained per second of wall time after the warm-up (``--warmup``, default the
  first 10 % of the run's steps): steps x global batch between the last warm-up row and the last
  row, over the ``elapsed_s`` between them (so every host sync, log and collective counts, the same
  for 1 and N GPUs). Runs logged before the Trainer wrote ``elapsed_s`` fall back to the median
  logged ``samples_per_s``;
- efficiency: ``(images/s_N / N) / (images/s_1 / 1)``, throughput per GPU against the baseline's;
- peak MiB per GPU: the largest ``max_memory_mib_all_ranks`` logged (``max_memory_mib`` of a 1-GPU
  run; ``-`` on CPU runs, which log none): ``torch.cuda.max_memory_allocated``, so without the
  allocator's reserve and NCCL's buffers;
- input wait: the median ``data_share`` (rank 0's) after the warm-up (a starved GPU shows here);
- loss agreement with the baseline, over the logged steps both runs share after the warm-up: both
  train-loss curves are smoothed by a centred moving average over ``--window`` logged points
  (default 9). ``diff`` is the mean absolute difference of the smoothed curves, ``tail`` the same
  over the last quarter of the shared steps (at least ``window`` points), so a late divergence
  shows. ``noise`` is the baseline's step-to-step scatter after the warm-up: the robust standard
  deviation (1.4826 x median absolute value) of its second differences ``l[i-1] - 2 l[i] + l[i+1]``
  over ``sqrt(6)`` (a locally straight trend cancels in them; independent noise of standard
  deviation ``s`` gives them variance ``6 s**2``), i.e. how far one logged loss strays from its trend.
  The curves **agree** when ``diff <= noise`` and ``tail <= 1.5 noise``. There is no verdict when the
  shared steps stop before 90 % of the baseline's last step (a run cut short by ``--max-seconds``) or
  number fewer than ``2 window + 1`` after the warm-up. Simulated on an exponentially decaying loss
  with Gaussian noise, 40 logged points, ``window=9``: two runs that differ only by noise fail in 0.6 %
  of pairs (0 % at 100 points); a gap of 2 ``s`` over the last 40 % of the steps is caught in 82 % of
  pairs (92 % at 100 points), a gap of 3 ``s`` in 99 %.

``--plot`` writes the raw (thin) and smoothed (thick) loss curves of every run overlaid.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SAME_TRAINING", "LossAgreement", "ScalingRow", "ScalingRun", "compare", "format_table", "loss_agreement",
           "main", "peak_memory_mib", "plot_losses", "read_run", "smooth", "throughput"]

#: ``train_config.json`` entries that must match for two runs to be the same training
SAME_TRAINING = ("steps", "grad_accum", "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "clip_grad", "amp",
                 "aux_loss_weight", "z_loss_weight", "seed")
#: the tail criterion's allowance, in units of the noise (see the module docstring)
TAIL_FACTOR = 1.5
#: the shared steps must reach this fraction of the baseline's last step for a verdict
MIN_COVERAGE = 0.9


@dataclass
class ScalingRun:
    """One training run as its folder records it.

    Args:
        folder: the Trainer ``out_dir`` read.
        world_size: ranks (GPUs) it ran on (``train_world.json``).
        global_batch: samples per optimiser step over all ranks (``train_world.json``).
        rows: its ``split == "train"`` rows of ``metrics.jsonl``, in step order.
        config: its ``train_config.json`` (empty when the folder has none).
    """

    folder: Path
    world_size: int
    global_batch: int
    rows: list[dict[str, Any]]
    config: dict[str, Any]

    def column(self, key: str) -> np.ndarray:
        """The logged ``key`` per train row (NaN where a row lacks it)."""
        return np.array([r.get(key, np.nan) for r in self.rows], dtype=np.float64)


@dataclass
class LossAgreement:
    """How close a run's train-loss curve is to the baseline's (see the module docstring).

    Args:
        steps: logged steps both runs share after the warm-up.
        diff: mean absolute difference of the two smoothed curves over ``steps``.
        tail: the same over the last quarter of ``steps`` (at least ``window`` points).
        noise: the baseline's step-to-step scatter after the warm-up (robust SD of second differences / sqrt(6)).
        reached: the last shared step.
        base_last: the baseline's last logged step.
        enough: whether ``steps`` suffice for a verdict (see the module docstring).
    """

    steps: int
    diff: float
    tail: float
    noise: float
    reached: int
    base_last: int
    enough: bool

    @property
    def agree(self) -> bool | None:
        """``diff <= noise`` and ``tail <= 1.5 noise``; ``None`` (no verdict) when the runs share too little."""
        if not self.enough:
            return None
        return self.diff <= self.noise and self.tail <= TAIL_FACTOR * self.noise


@dataclass
class ScalingRow:
    """One line of the printed table."""

    run: ScalingRun
    images_per_s: float
    efficiency: float
    peak_mib: float
    input_wait: float
    loss: LossAgreement | None  # None for the baseline itself


def read_run(folder: str | Path) -> ScalingRun:
    """Read a Trainer ``out_dir`` (or a folder with one as ``train/``).

    Args:
        folder: holds ``metrics.jsonl`` and ``train_world.json``, or ``train/`` holding them.
    """
    folder = Path(folder)
    if not (folder / "metrics.jsonl").is_file() and (folder / "train" / "metrics.jsonl").is_file():
        folder = folder / "train"
    for name in ("metrics.jsonl", "train_world.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: not a Trainer run folder, or written before the "
                                    "Trainer recorded train_world.json (world size and global batch)")
    world = json.loads((folder / "train_world.json").read_text(encoding="utf-8"))
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = sorted((r for r in map(json.loads, filter(str.strip, lines)) if r["split"] == "train"),
                  key=lambda r: r["step"])
    if not rows:
        raise ValueError(f"{folder / 'metrics.jsonl'} holds no train rows")
    config_file = folder / "train_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    return ScalingRun(folder, int(world["world_size"]), int(world["global_batch"]), rows, config)


def _after_warmup(run: ScalingRun, warmup: float) -> np.ndarray:
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {warmup}")
    steps = run.column("step")
    return steps > warmup * steps[-1]


def throughput(run: ScalingRun, warmup: float = 0.1) -> float:
    """Images per second of wall time after the first ``warmup`` of the steps (see the module docstring)."""
    after = _after_warmup(run, warmup)
    steps, elapsed = run.column("step"), run.column("elapsed_s")
    start = int(np.argmax(after)) - 1  # the last warm-up row: the window starts where it ended
    if np.isfinite(elapsed).all() and start >= 0 and elapsed[-1] > elapsed[start]:
        return float((steps[-1] - steps[start]) * run.global_batch / (elapsed[-1] - elapsed[start]))
    return float(np.median(run.column("samples_per_s")[after]))


def peak_memory_mib(run: ScalingRun) -> float:
    """The largest peak memory of any GPU the run logged, MiB; NaN when it logged none (CPU)."""
    for key in ("max_memory_mib_all_ranks", "max_memory_mib"):
        values = run.column(key)
        if np.isfinite(values).any():
            return float(np.nanmax(values))
    return float("nan")


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` (odd) points; near the ends it averages the points there are."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 1, got {window}")
    sums = np.concatenate([[0.0], np.cumsum(values)])
    at = np.arange(len(values))
    lo, hi = np.maximum(at - window // 2, 0), np.minimum(at + window // 2 + 1, len(values))
    return (sums[hi] - sums[lo]) / (hi - lo)


def loss_agreement(base: ScalingRun, other: ScalingRun, window: int = 9, warmup: float = 0.1) -> LossAgreement:
    """Compare the train-loss curves of ``other`` and ``base`` over their common logged steps after the warm-up.

    Args:
        base: the baseline (its scatter is the noise scale).
        other: the run compared with it.
        window: moving-average width, in logged points.
        warmup: fraction of the baseline's steps left out of the comparison and the noise.
    """
    base_steps = base.column("step")
    common, i, j = np.intersect1d(base_steps, other.column("step"), return_indices=True)
    if len(common) < 3:
        raise ValueError(f"{base.folder} and {other.folder} share {len(common)} logged steps; cannot compare losses")
    a, b = base.column("loss")[i], other.column("loss")[j]
    keep = common > warmup * base_steps[-1]
    gap = np.abs(smooth(a, window) - smooth(b, window))[keep]
    second = np.diff(a[keep], 2)
    noise = float(1.4826 * np.median(np.abs(second)) / np.sqrt(6)) if len(second) else float("nan")
    tail = gap[-max(window, round(0.25 * len(gap))):]
    enough = bool(len(gap) >= 2 * window + 1 and common[-1] >= MIN_COVERAGE * base_steps[-1])
    return LossAgreement(int(len(gap)), float(gap.mean()) if len(gap) else float("nan"),
                         float(tail.mean()) if len(tail) else float("nan"), noise, int(common[-1]),
                         int(base_steps[-1]), enough)


def compare(runs: Sequence[ScalingRun], warmup: float = 0.1, window: int = 9) -> list[ScalingRow]:
    """The table's rows; ``runs[0]`` is the baseline. Raises ``ValueError`` when the global batches differ.

    Args:
        runs: the baseline (1 GPU) first, then the N-GPU runs.
        warmup: fraction of each run's steps left out of the throughput.
        window: loss smoothing width, in logged points.
    """
    if not runs:
        raise ValueError("no runs to compare")
    base = runs[0]
    for run in runs[1:]:
        if run.global_batch != base.global_batch:
            per_rank = base.global_batch / (run.world_size * max(1, int(run.config.get("grad_accum", 1))))
            raise ValueError(f"{run.folder} trained with global batch {run.global_batch} ({run.world_size} ranks) but "
                             f"the baseline {base.folder} with {base.global_batch}: scaling compares the same training "
                             f"(set the per-rank batch to {per_rank:g})")
        differ = {k: (base.config.get(k), run.config.get(k)) for k in SAME_TRAINING
                  if base.config.get(k) != run.config.get(k)}
        if differ:
            raise ValueError(f"{run.folder} is not the same training as the baseline {base.folder}: train_config.json "
                             f"differs in {differ} (baseline, this run)")
    base_per_gpu = throughput(base, warmup) / base.world_size
    rows = []
    for k, run in enumerate(runs):
        ips = throughput(run, warmup)
        rows.append(ScalingRow(run, ips, ips / run.world_size / base_per_gpu, peak_memory_mib(run),
                               float(np.median(run.column("data_share")[_after_warmup(run, warmup)])),
                               None if k == 0 else loss_agreement(base, run, window, warmup)))
    return rows


def format_table(rows: Sequence[ScalingRow]) -> str:
    """The rows as a Markdown table."""
    lines = ["| run | GPUs | global batch | images/s | efficiency | peak allocated MiB per GPU | input wait | "
             "loss diff / tail / noise (points) | losses agree |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mib = f"{r.peak_mib:,.0f}" if np.isfinite(r.peak_mib) else "-"
        loss = ("baseline" if r.loss is None else
                f"{r.loss.diff:.4f} / {r.loss.tail:.4f} / {r.loss.noise:.4f} ({r.loss.steps})")
        verdict = None if r.loss is None else r.loss.agree
        agree = ("-" if r.loss is None else
                 f"no verdict: shared steps end at {r.loss.reached} of {r.loss.base_last}" if verdict is None else
                 "yes" if verdict else "NO")
        lines.append(f"| {r.run.folder} | {r.run.world_size} | {r.run.global_batch} | {r.images_per_s:,.1f} | "
                     f"{r.efficiency:.1%} | {mib} | {r.input_wait:.1%} | {loss} | {agree} |")
    return "\n".join(lines)


def plot_losses(runs: Sequence[ScalingRun], path: str | Path, window: int = 9) -> Path:
    """Write a PNG of every run's train loss (raw thin, smoothed thick) overlaid; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        steps, loss = run.column("step"), run.column("loss")
        label = f"{run.world_size} GPU{'s' if run.world_size > 1 else ''} ({run.folder})"
        (line,) = ax.plot(steps, smooth(loss, window), lw=2, label=label)
        ax.plot(steps, loss, lw=0.7, alpha=0.4, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(f"global batch {runs[0].global_batch}; thick: moving average over {window} logged points")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the table, write the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, the 1-GPU baseline first")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of the loss curves overlaid here")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of steps left out of images/s")
    parser.add_argument("--window", type=int, default=9, help="loss moving-average width, odd, in logged points")
    args = parser.parse_args(argv)
    runs = [read_run(f) for f in args.runs]
    print(format_table(compare(runs, args.warmup, args.window)))
    if args.plot is not None:
        print(f"loss curves: {plot_losses(runs, args.plot, args.window)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

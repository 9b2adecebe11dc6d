"""Synthetic pre-training: a first training stage on synthetic boards only, then the real one.

``vlsdk pcb --synthetic-pretrain-steps N`` (``PipelineConfig.synthetic_pretrain_steps``) runs two
:class:`vlsdk.train.Trainer` fits on one model: :func:`pretrain_synthetic` trains ``N`` steps on
fresh :class:`~vlsdk_industrial.synth.BoardSynthesizer` boards, then
:func:`~vlsdk_industrial.pipeline.run_pipeline` trains on the real pairs (or the real + synthetic
mix) with a new Trainer: a fresh AdamW and a fresh warm-up + cosine schedule. ``--max-seconds``
bounds both stages together (:func:`seconds_left`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlsdk import VLModel
    from vlsdk_industrial.synth import BoardSynthesizer

__all__ = ["PRETRAIN_SEED", "StageResult", "pretrain_synthetic", "seconds_left"]

#: Board seeds of the pre-training set start at ``PRETRAIN_SEED + seed``, apart from the mixed
#: set's boards (seeds ``seed ... seed + len(real) - 1``), so the two stages never share a board.
PRETRAIN_SEED = 1_000_000


@dataclass
class StageResult:
    """What one training stage did (written to ``metrics.json`` under ``"pretrain"``).

    Args:
        steps: optimiser steps that ran.
        requested_steps: steps asked for (more than ``steps`` when the time box stopped it).
        seconds: wall time of the stage (Trainer set-up, steps and its checkpoint).
        boards: distinct boards in the stage's training set.
        first_loss: first logged loss.
        last_loss: last logged loss.
        out_of_time: stopped by ``max_seconds`` before ``requested_steps``.
        out_dir: the stage's Trainer folder (``metrics.csv``, ``checkpoint/``).
    """

    steps: int
    requested_steps: int
    seconds: float
    boards: int
    first_loss: float
    last_loss: float
    out_of_time: bool
    out_dir: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seconds_left(max_seconds: float | None, spent: float) -> float | None:
    """The time box left for the next stage: ``max_seconds - spent``, at least 0 (``None``: no box).

    A stage given 0 seconds still runs one step (the Trainer checks the clock after each step).

    Example:
        >>> seconds_left(60.0, 45.0), seconds_left(60.0, 75.0), seconds_left(None, 10.0)
        (15.0, 0.0, None)
    """
    return None if max_seconds is None else max(0.0, max_seconds - spent)


def pretrain_synthetic(model: VLModel, synthesizer: BoardSynthesizer, *, steps: int, batch_size: int, lr: float,
                       transform: Any = None, weight_decay: float = 0.05, device: str = "cpu", amp: str = "none",
                       workers: int = 0, seed: int = 0, out_dir: str | Path = "runs/pcb/pretrain",
                       progress: bool = True, max_seconds: float | None = None) -> StageResult:
    """Train ``model`` for ``steps`` steps on synthetic boards only (each board seen once).

    Uses :func:`~vlsdk_industrial.pipeline.train` (the core Trainer, its own warm-up + cosine
    schedule over ``steps``); the caller then fine-tunes the same model with a new Trainer.

    Args:
        model: from :func:`~vlsdk_industrial.pipeline.build_detector`.
        synthesizer: draws the boards (its ``template`` must match the model's channels).
        steps: optimiser steps (>= 1).
        batch_size: boards per step and rank.
        lr: peak AdamW learning rate.
        transform: the training transform applied to each board (resize, augmentation).
        weight_decay: AdamW weight decay.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        amp: ``"none"`` or ``"bf16"``.
        workers: DataLoader workers (they draw the boards).
        seed: the run's seed (data order; boards use ``PRETRAIN_SEED + seed + i``).
        out_dir: the stage's Trainer folder.
        progress: tqdm bar (labelled ``"pretrain (synthetic)"``; the real stage's reads ``"train"``).
        max_seconds: stop after this many seconds (``None``: run every step).

    Example:
        >>> stage = pretrain_synthetic(build_detector("tiny"), BoardSynthesizer(), steps=200,
        ...                            batch_size=16, lr=1e-3)  # doctest: +SKIP
    """
    from vlsdk.train.distributed import init_from_env
    from vlsdk_industrial.pipeline import train

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    rank, world = init_from_env(device)  # a no-op outside torchrun; the Trainer joins the same group
    boards = synthesizer.dataset(steps * batch_size * world, seed=PRETRAIN_SEED + seed, transform=transform)
    if rank == 0:
        print(f"stage 1/2: synthetic pre-training, {steps} steps on {len(boards)} {synthesizer.style}-style "
              f"synthetic boards -> {out_dir}", flush=True)
    started = time.perf_counter()
    fit = train(model, boards, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, device=device,
                amp=amp, workers=workers, seed=seed, out_dir=out_dir, progress=progress,
                progress_label="pretrain (synthetic)", max_seconds=max_seconds)
    losses = [row["loss"] for row in fit.train]
    return StageResult(steps=fit.step, requested_steps=steps, seconds=time.perf_counter() - started,
                       boards=len(boards), first_loss=losses[0], last_loss=losses[-1], out_of_time=fit.out_of_time,
                       out_dir=str(out_dir))

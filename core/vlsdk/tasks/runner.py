"""The runner: what every task repeats, written once.

:func:`train` seeds, joins ``torchrun``, resolves the device and precision, turns epochs into steps
against the global batch, runs the task's extra stages and the main stage with the core
:class:`~vlsdk.train.Trainer` under one time budget, then on rank 0 evaluates, saves the model
(``save_pretrained`` plus ``task.json``), writes ``metrics.json``, the pictures and ``report.html``.
:func:`load` and :func:`evaluate` bring a saved task model back.

Output folder (``settings.out``)::

    model/            config.json (with the model's metadata), model.safetensors, task.json, README.md
    train/            the Trainer's checkpoint, metrics.jsonl, curves.png (one folder per stage)
    metrics.json      {"task", "primary_metric", "primary", "metrics", "steps", "seconds", ...}
    predictions.png   a few validation samples drawn by the task
    report/           report.html: metrics, curves and pictures
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.tasks.outputs import (METRICS_FILE, TASK_FILE, jsonable, load_record, run_facts, save, write_json,
                                 write_report)
from vlsdk.tasks.protocol import Task
from vlsdk.tasks.settings import RunSettings

if TYPE_CHECKING:
    import torch

    from vlsdk.models.model import VLModel

__all__ = ["RunResult", "TASK_FILE", "autocast", "evaluate", "evaluate_model", "jsonable", "load", "model_device",
           "fit_stage", "load_record", "resolve_device", "save", "train"]



@dataclass
class RunResult:
    """What :func:`train` returns.

    Attributes:
        task: the task's name.
        out: the output folder.
        metrics: the evaluation (empty on ranks other than 0 under ``torchrun``).
        primary: ``(name, value)`` of the task's primary metric (``None`` on other ranks).
        model_dir: the saved model (``None`` on other ranks).
        steps: optimiser steps of the main stage.
        seconds: wall time of the whole run.
    """

    task: str
    out: Path
    metrics: dict[str, Any]
    primary: tuple[str, float] | None
    model_dir: Path | None
    steps: int
    seconds: float


def train(task: Task, settings: RunSettings) -> RunResult:
    """Train ``task`` with ``settings`` end to end and write its outputs under ``settings.out``.

    Args:
        task: the task.
        settings: an instance of ``task.settings_type``.

    Raises:
        ValueError: no data folder set, an empty or too small training set, or an evaluation
            without the task's primary metric.
    """
    import torch

    from vlsdk.train.distributed import init_from_env

    started = time.perf_counter()
    _check_settings(task, settings)
    rank, world = init_from_env(settings.device)  # under torchrun: join before anything goes to "cuda"
    _seed(settings.seed)
    train_set = task.datasets(settings, "train")
    val_set = _rank0_val(task, settings, rank, world)
    model = task.build_model(settings, train_set)
    steps = settings.epochs * task.steps_per_epoch(settings, train_set, world)  # in global batches
    steps = min(steps, settings.max_steps) if settings.max_steps is not None else steps
    stages: list[dict[str, Any]] = []
    extra = task.stages(settings)
    for k, stage in enumerate(extra, 1):
        _say(rank, f"stage {k}/{len(extra) + 1}: {stage.name}, {stage.steps} steps on {len(stage.data)} samples "
                   f"-> {Path(settings.out) / stage.name}")
        fit = fit_stage(task, model, stage.data, settings, steps=stage.steps, folder=stage.name,
                        max_seconds=_left(settings.max_seconds, started))
        stages.append({"name": stage.name, "steps": fit.step, "requested_steps": stage.steps,
                       "samples": len(stage.data), "out_of_time": fit.out_of_time, **_losses(fit)})
    if extra:
        _say(rank, f"stage {len(extra) + 1}/{len(extra) + 1}: train, {steps} steps on {len(train_set)} samples "
                   "(fresh learning-rate schedule)")
    fit = fit_stage(task, model, train_set, settings, steps=steps, folder="train",
                    max_seconds=_left(settings.max_seconds, started))
    if rank != 0:
        return RunResult(task.name, settings.out, {}, None, None, fit.step, time.perf_counter() - started)
    with torch.no_grad():
        metrics = task.evaluate(model.eval(), val_set, settings)
    _show(task, metrics)
    primary = _primary(task, metrics)
    model_dir = save(task, settings, model, val_set, settings.out / "model",
                     training=run_facts(settings, fit.step, primary))
    picture = task.render(model, val_set, settings, settings.out / "predictions.png") if settings.draw else None
    summary = {
        "task": task.name, "primary_metric": primary[0], "primary": primary[1], "metrics": metrics,
        "steps": fit.step, "stages": stages, "train_samples": len(train_set), "val_samples": len(val_set),
        "skipped": {"train": _skipped(train_set), "val": _skipped(val_set)}, "out_of_time": fit.out_of_time,
        **_losses(fit), "seconds": time.perf_counter() - started, "device": str(model_device(model)),
        "model": str(model_dir), "predictions_png": str(picture) if picture else None,
        "settings": jsonable(dataclasses.asdict(settings)),
    }
    write_json(settings.out / METRICS_FILE, summary)
    write_report(task, settings, {**summary, "metadata": jsonable(task.metadata(settings, val_set))}, picture)
    return RunResult(task.name, settings.out, metrics, primary, model_dir, fit.step, summary["seconds"])


def load(model_dir: str | Path, overrides: Mapping[str, Any] | None = None, *,
         where: str = "command line") -> tuple[Task, RunSettings, VLModel]:
    """The task, its settings (as saved, then ``overrides``) and the model of a saved task model.

    Args:
        model_dir: a folder written by :func:`train` (``out/model``).
        overrides: settings to change (e.g. ``{"data": "other/folder"}``).
        where: where the overrides come from, for errors.

    Raises:
        FileNotFoundError: ``model_dir`` has no ``task.json``.
        ValueError: an unreadable ``task.json``, an unknown task, or bad overrides.
    """
    from vlsdk.models.model import VLModel
    from vlsdk.settings import settings_from
    from vlsdk.tasks.registry import get_task

    model_dir = Path(model_dir)
    record = load_record(model_dir)
    name, saved, path = record["task"], record["settings"], model_dir / TASK_FILE
    task = get_task(name)
    settings = settings_from(task.settings_type, saved, str(path))
    if overrides:
        settings = settings_from(task.settings_type, dict(overrides), where, base=settings)
    model = VLModel.from_pretrained(model_dir, map_location=resolve_device(settings.device))
    return task, settings, model


def evaluate(model_dir: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a saved task model on its validation split; write ``metrics.json`` under ``settings.out``.

    Args:
        model_dir: a folder written by :func:`train`.
        overrides: settings to change, e.g. ``{"data": DIR, "out": "runs/eval"}``; without ``out``
            the outputs go to ``eval/`` beside the model folder (the training run's files stay).

    Returns:
        ``{"task", "primary_metric", "primary", "metrics", "model"}``.
    """
    overrides = dict(overrides or {})
    overrides.setdefault("out", Path(model_dir).parent / "eval")
    task, settings, model = load(model_dir, overrides)
    return evaluate_model(task, settings, model, model_dir)


def evaluate_model(task: Task, settings: RunSettings, model: VLModel, model_dir: str | Path | None = None
                   ) -> dict[str, Any]:
    """Evaluate ``model`` with ``task`` on the validation split of ``settings``; write ``metrics.json``.

    Args:
        task: the task.
        settings: its settings (``data`` and ``out`` are read).
        model: the model (on the device it should run on).
        model_dir: where the model came from, recorded in ``metrics.json``.
    """
    import torch

    _check_settings(task, settings)
    _seed(settings.seed)
    with torch.no_grad():
        metrics = task.evaluate(model.eval(), task.datasets(settings, "val"), settings)
    _show(task, metrics)
    name, value = _primary(task, metrics)
    summary = {"task": task.name, "primary_metric": name, "primary": value, "metrics": metrics,
               "model": str(model_dir) if model_dir is not None else None,
               "settings": jsonable(dataclasses.asdict(settings))}
    write_json(Path(settings.out) / METRICS_FILE, summary)
    return summary


# -- helpers the tasks share ----------------------------------------------------------------------
def model_device(model: Any) -> torch.device:
    """The device of a model's parameters."""
    return next(model.parameters()).device


def autocast(settings: RunSettings, device: torch.device) -> Any:
    """The autocast context of ``settings.precision`` on ``device`` (a no-op for ``"off"``)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# -- internals --------------------------------------------------------------------------------------
def _check_settings(task: Task, settings: RunSettings) -> None:
    if not isinstance(settings, task.settings_type):
        raise TypeError(f"task {task.name!r} takes {task.settings_type.__name__}, got {type(settings).__name__}")
    if settings.data is None and not task.needs_data:
        return
    if settings.data is None:
        raise ValueError(f"task {task.name!r}: no data folder; set data=DIR (in the config or on the command line)")
    if not Path(settings.data).exists():
        raise FileNotFoundError(f"task {task.name!r}: data folder {settings.data} does not exist "
                                f"(relative paths are relative to {Path.cwd()})")


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else the CPU; any other name as ``torch.device`` reads it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _left(budget: float | None, started: float) -> float | None:
    return None if budget is None else max(0.0, budget - (time.perf_counter() - started))


def fit_stage(task: Task, model: VLModel, data: Any, settings: RunSettings, *, steps: int, folder: str,
              max_seconds: float | None = None) -> Any:
    """Train ``model`` on ``data`` for ``steps`` steps with the core Trainer (its folder: ``out/folder``).

    The schedule every stage uses: AdamW, linear warm-up over 5% of the steps, cosine decay,
    ``settings.clip_grad``, ``settings.precision``, a log row every ``min(10, steps // 4)`` steps;
    :meth:`Task.train_options` may change the warm-up, the decay floor and the logging.
    """
    from vlsdk.train import TrainConfig, Trainer

    options = {"warmup_steps": max(1, steps // 20), "log_every": max(1, min(10, steps // 4)),
               **task.train_options(settings, steps)}
    config = TrainConfig(steps=steps, batch_size=settings.batch_size, lr=settings.lr,
                         weight_decay=settings.weight_decay, amp=settings.precision, device=settings.device,
                         num_workers=settings.num_workers, seed=settings.seed, out_dir=str(Path(settings.out) / folder),
                         progress=settings.progress, progress_label=folder, clip_grad=settings.clip_grad,
                         max_seconds=max_seconds, loggers=tuple(settings.loggers), **options)
    resume = settings.resume and (Path(settings.out) / folder).is_dir()  # a stage not begun starts afresh
    return Trainer(model, task.loss, data, config, collate_fn=task.collate).fit(resume=resume)


def _rank0_val(task: Task, settings: RunSettings, rank: int, world: int) -> Any:
    """The validation set, built on rank 0 before training; a failure there stops every rank (no hang)."""
    error: Exception | None = None
    val_set = None
    if rank == 0:
        try:
            val_set = task.datasets(settings, "val")
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
            error = exc
    if world > 1:
        import torch
        import torch.distributed as dist

        from vlsdk.train.distributed import flagged_ranks

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else \
            torch.device("cpu")
        if flagged_ranks(error is not None, device) and error is None:
            raise RuntimeError("rank 0 could not build the validation set; its error says why")
    if error is not None:
        raise error
    return val_set


def _say(rank: int, text: str) -> None:
    if rank == 0:
        print(text, flush=True)


def _skipped(data: Any) -> list[str]:
    """What a dataset (or the real part of a mixed one) skipped as bad input, as text."""
    for part in (data, getattr(data, "real", None), getattr(data, "dataset", None)):
        if part is not None and hasattr(part, "skipped"):
            return [str(s) for s in part.skipped]
    return []


def _show(task: Task, metrics: Mapping[str, Any]) -> None:
    table = task.describe(metrics)
    if table:
        print(table, flush=True)


def _losses(fit: Any) -> dict[str, Any]:
    losses = [row["loss"] for row in fit.train if "loss" in row]
    return {"first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def _primary(task: Task, metrics: Mapping[str, Any]) -> tuple[str, float]:
    if task.primary_metric not in metrics:
        raise ValueError(f"task {task.name!r}: evaluate() returned no primary metric {task.primary_metric!r} "
                         f"(keys: {sorted(metrics)})")
    return task.primary_metric, float(metrics[task.primary_metric])

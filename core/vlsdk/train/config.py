"""Training configuration: a dataclass, read from YAML/JSON files and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from vlsdk.settings import convert, settings_from
from vlsdk.train.loggers import check_loggers

__all__ = ["TrainConfig", "load_train_config"]


@dataclass
class TrainConfig:
    """Everything the :class:`~vlsdk.train.Trainer` needs besides the model, data and loss.

    Args:
        steps: optimiser steps to train for.
        batch_size: samples per micro-batch.
        grad_accum: micro-batches per optimiser step.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay (not applied to norms, biases and router rows).
        warmup_steps: linear warm-up steps before the cosine decay.
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio``.
        clip_grad: max gradient norm; ``None`` disables clipping.
        amp: ``"auto"`` (bf16 autocast on CUDA devices that support it, else off), ``"off"``,
            ``"bf16"`` or ``"fp16"`` (with a gradient scaler).
        aux_loss_weight: weight of the MoE load-balancing loss added to the task loss.
        z_loss_weight: weight of the router z-loss.
        eval_every: evaluate every N steps (0: only at the end).
        save_every: checkpoint every N steps (0: only at the end).
        log_every: write a log row every N steps.
        seed: seeds data order, initialisation-time randomness and dropout.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or any other device string
            ``torch.device`` accepts.
        num_workers: DataLoader worker processes.
        out_dir: where checkpoints, ``metrics.csv``/``metrics.jsonl`` and ``curves.png`` go.
        progress: show a progress bar.
        progress_label: the progress bar's label, to tell the stages of a multi-stage run apart
            (e.g. ``"pretrain (synthetic)"`` then ``"train"``).
        max_seconds: wall-time budget of :meth:`~vlsdk.train.Trainer.fit`: training stops cleanly
            at the first step boundary after it (the final evaluation, log row and checkpoint
            are written as at ``steps``; the schedule still spans ``steps``; ``fit(resume=True)``
            continues). Under ``torchrun`` the ranks agree on the step. ``None``: no budget.
        max_skipped_steps: how many optimiser steps in a row may be skipped because a loss or the
            gradient norm is non-finite; the next one stops the run with ``FloatingPointError``
            (the last checkpoint is kept). 0 stops at the first non-finite step.
        loggers: experiment loggers that receive every logged train and eval scalar besides
            ``metrics.jsonl`` (:mod:`vlsdk.train.loggers`): ``"tensorboard"`` (event files in
            ``out_dir/tensorboard``; ``pip install "vlsdk[tensorboard]"``) and ``"mlflow"`` (an
            MLflow run; ``pip install mlflow``). A comma-separated string works too
            (``loggers=tensorboard,mlflow``).

    Values from files and the command line are converted by :func:`vlsdk.settings.convert`
    (``lr: 1e-3``, which YAML reads as a string, becomes a float); a value of the wrong type
    (``batch_size: 2.5``, ``steps: true``) or an unknown device (``"cdua"``) is a ``ValueError``
    naming the option.

    Raises:
        ValueError: a value of the wrong type or out of range, naming the option.
        ImportError: a logger in ``loggers`` whose package is not installed (the message names
            the package and the ``pip install`` line).
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    clip_grad: float | None = 1.0
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 1e-3
    eval_every: int = 0
    save_every: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    out_dir: str = "runs/vlsdk"
    progress: bool = True
    progress_label: str = "train"
    max_seconds: float | None = None
    max_skipped_steps: int = 10
    loggers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, convert(getattr(self, f.name), hints[f.name], f"TrainConfig: {f.name}"))
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "num_workers", "max_skipped_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_seconds is not None and not self.max_seconds >= 0:
            raise ValueError(f"max_seconds must be >= 0 or None, got {self.max_seconds}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        _check_device(self.device)
        check_loggers(self.loggers)

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict of raw values, each converted to its field's type.

        Args:
            values: option name -> value (as YAML, JSON or the command line gave it).
            source: where the values came from, named in errors (a file name, ``"command line"``).

        Raises:
            ValueError: an unknown key (naming the closest valid one), a value of the wrong type
                or out of range; the message starts with ``source``.
        """
        try:
            return settings_from(cls, values, source)
        except ValueError as err:
            if str(err).startswith(f"{source}:"):
                raise
            raise ValueError(f"{source}: {err}") from None

    def override(self, assignments: list[str]) -> TrainConfig:
        """Apply ``key=value`` strings (values parsed as JSON when they parse, else kept as text).

        Raises:
            ValueError: an item without ``=``, an unknown key or a value of the wrong type.
        """
        values = self.to_dict()
        for item in assignments:
            key, eq, raw = item.partition("=")
            if not eq:
                raise ValueError(f"override {item!r} must look like key=value")
            try:
                values[key.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                values[key.strip()] = raw
        return TrainConfig.from_dict(values, source="command line")


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML or JSON file (top level: the :class:`TrainConfig` fields) and apply overrides.

    Args:
        path: a ``.yaml``/``.yml`` or JSON file.
        overrides: ``key=value`` strings applied on top (see :meth:`TrainConfig.override`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file does not parse, is not a mapping, or holds a bad option (named with the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as err:  # yaml.YAMLError or json.JSONDecodeError
        raise ValueError(f"training config {path} cannot be parsed: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"training config {path} must hold a mapping of options, got {type(values).__name__}")
    config = TrainConfig.from_dict(values, source=str(path))
    return config.override(overrides) if overrides else config


def _check_device(device: str) -> None:
    """``"auto"`` or a device string ``torch.device`` parses (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...)."""
    if device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError) as err:
        import difflib

        close = difflib.get_close_matches(device, ["auto", "cpu", "cuda", "mps", "xpu"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or another "
                         f"torch device, got {device!r}{hint} ({err})") from None

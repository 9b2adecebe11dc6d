"""The settings every task shares: one vocabulary for data, output, model, schedule and precision.

A task's settings dataclass subclasses :class:`RunSettings` and adds its own fields. Each field's
type annotation and help text (``field(metadata={"help": ...})``) are the single source of truth
for the config file keys, the ``key=value`` overrides and the ``--flag`` options of
``vlsdk train`` (:func:`vlsdk.cli.train.settings_parser`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["ComponentSpec", "ComposedSettings", "Precision", "RunSettings", "help_field"]

#: Mixed precision, one vocabulary for the whole SDK: no autocast, bf16 autocast, fp16 autocast with a scaler.
Precision = Literal["off", "bf16", "fp16"]


def help_field(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with a default and its help text (shown by ``--help``).

    Args:
        default: the default value (a list or dict default is copied per instance).
        help: one line for ``--help`` and the docs.
        **kwargs: other :func:`dataclasses.field` arguments.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class S:
        ...     steps: int = help_field(10, "optimiser steps")
        >>> S().steps
        10
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class RunSettings:
    """What the runner (:func:`vlsdk.tasks.train`) reads; every task's settings subclass this."""

    data: Path | None = help_field(None, "the dataset folder (required to train or evaluate)")
    out: Path = help_field(Path("runs/task"), "output folder: model/, metrics.json, report/, pictures")
    model: str = help_field("small", "backbone config (tiny, edge, small, base; fields by name: small@depths=2,2)")
    epochs: int = help_field(10, "passes over the training set (in global batches: batch_size x ranks)")
    max_steps: int | None = help_field(None, "stop training after this many optimiser steps")
    batch_size: int = help_field(8, "samples per step and rank")
    lr: float = help_field(1e-3, "peak AdamW learning rate (linear warm-up over 5% of the steps, cosine decay)")
    weight_decay: float = help_field(0.05, "AdamW weight decay")
    clip_grad: float | None = help_field(10.0, "max gradient norm (none: no clipping)")
    device: str = help_field("auto", "auto, cpu, cuda, cuda:1, ...")
    precision: Precision = help_field("off", "mixed precision: off, bf16 or fp16")
    seed: int = help_field(0, "seed of initialisation, data order, augmentation and synthetic data")
    num_workers: int = help_field(0, "DataLoader worker processes")
    progress: bool = help_field(True, "show progress bars")
    max_seconds: float | None = help_field(None, "wall-time budget of all training stages; then evaluate and save")
    draw: int = help_field(4, "validation samples drawn into predictions.png (0: none)")
    loggers: list[str] = help_field([], "experiment loggers besides metrics.jsonl: tensorboard, mlflow")
    resume: bool = help_field(False, "continue each stage from its checkpoint under out/ (exactly: same data order)")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or none, got {self.max_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.num_workers < 0 or self.draw < 0:
            raise ValueError(f"num_workers and draw must be >= 0, got {self.num_workers!r}, {self.draw!r}")
        if self.max_seconds is not None and not self.max_seconds >= 0:
            raise ValueError(f"max_seconds must be >= 0 or none, got {self.max_seconds!r}")


#: A component named by its registered name, or ``{name: ..., **options}``.
ComponentSpec = Any


@dataclass
class ComposedSettings(RunSettings):
    """Settings of a task composed from registered parts (the generic detection and segmentation tasks)."""

    dataset: ComponentSpec = help_field({"name": "coco"}, "dataset adapter (registered name, or {name, options})")
    val_dataset: ComponentSpec = help_field(None, "validation adapter (none: hold out val_fraction of dataset)")
    val_fraction: float = help_field(0.2, "share of the dataset held out for validation when no val_dataset")
    channels: int = help_field(3, "input channels the adapter delivers (1 grey, 3 RGB)")
    image_size: int = help_field(512, "samples are resized to image_size x image_size (a multiple of 32)")
    transforms: ComponentSpec = help_field(["resize", "flip"], "training transforms by registered name")
    eval_transforms: ComponentSpec = help_field(["resize"], "evaluation transforms by registered name")
    metric: ComponentSpec = help_field("detection.map", "the metric by registered name")
    experts: list[str] = help_field([], "registered experts inserted into every MoE layer")
    head: str = help_field("detection", "the registered head")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size!r}")

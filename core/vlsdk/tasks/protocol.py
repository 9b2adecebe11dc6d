"""The task protocol: what a domain (or a user) writes so that the runner can train, evaluate and predict.

A task is a small class: a settings dataclass, how to build the model, the datasets of each split,
the loss of a batch, the evaluation (metrics with one primary metric named) and, optionally,
prediction and pictures. Everything a pipeline used to repeat (seeding, device and precision, epochs
to steps, the Trainer, torchrun, rank-0 evaluation, saving, ``metrics.json``, the report, time
budgets) belongs to the runner (:mod:`vlsdk.tasks.runner`), not to the task.

Example:
    >>> from dataclasses import dataclass
    >>> from vlsdk.tasks import RunSettings, Task
    >>> @dataclass
    ... class MySettings(RunSettings):
    ...     image_size: int = 256
    >>> class MyTask(Task):
    ...     name = "acme.scratches"
    ...     settings_type = MySettings
    ...     primary_metric = "map50"
    ...     def datasets(self, settings, split): ...
    ...     def build_model(self, settings, data): ...
    ...     def loss(self, model, batch): ...
    ...     def evaluate(self, model, data, settings): ...
    >>> MyTask().settings(image_size=128).image_size
    128
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from vlsdk.tasks.settings import RunSettings

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from vlsdk.models.model import VLModel

__all__ = ["Split", "Stage", "Task"]

#: The dataset splits a task is asked for.
Split = Literal["train", "val"]


@dataclass(frozen=True)
class Stage:
    """An extra training stage that runs before the main one (e.g. synthetic pre-training).

    Attributes:
        name: the stage's name (its folder under ``out/`` and its progress label).
        data: the stage's training set.
        steps: optimiser steps (the learning-rate schedule restarts for the main stage).
    """

    name: str
    data: Any
    steps: int


class Task(abc.ABC):
    """A trainable task the runner can run end to end. Subclass it and register the class.

    Class attributes:
        name: the registered name (``"detection"``, ``"industrial.pcb"``...).
        settings_type: the settings dataclass (a :class:`RunSettings` subclass).
        primary_metric: the key of :meth:`evaluate`'s result that ranks models.
        description: one line for ``vlsdk train --list``.
        quick: the settings ``--quick`` sets (a CI-sized run), under the command line's values.
        head: the name of the model head the task trains.
        needs_data: whether ``settings.data`` must name a folder (``False``: a task that can train
            and evaluate on data it makes itself).
    """

    name: ClassVar[str] = ""
    settings_type: ClassVar[type[RunSettings]] = RunSettings
    primary_metric: ClassVar[str] = ""
    description: ClassVar[str] = ""
    quick: ClassVar[Mapping[str, Any]] = {}
    head: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True

    def settings(self, **values: Any) -> RunSettings:
        """This task's settings from keyword values (converted and checked), defaults elsewhere."""
        from vlsdk.settings import settings_from

        return settings_from(self.settings_type, values, f"{self.name or type(self).__name__} settings")

    # -- what every task writes -----------------------------------------------------------------
    @abc.abstractmethod
    def datasets(self, settings: RunSettings, split: Split) -> Dataset:
        """The map-style dataset of ``split`` (``"train"`` with augmentation, ``"val"`` without)."""

    @abc.abstractmethod
    def build_model(self, settings: RunSettings, data: Dataset) -> VLModel:
        """A fresh model for ``data`` (the training set: its classes and channels)."""

    @abc.abstractmethod
    def loss(self, model: VLModel, batch: Any) -> torch.Tensor | Mapping[str, torch.Tensor]:
        """The task loss of a batch already on the device (the Trainer adds the MoE losses)."""

    @abc.abstractmethod
    def evaluate(self, model: VLModel, data: Dataset, settings: RunSettings) -> dict[str, Any]:
        """Metrics on ``data`` (JSON-ready; holds :attr:`primary_metric`)."""

    # -- what a task may override ---------------------------------------------------------------
    def collate(self, samples: list[Any]) -> Any:
        """Batch samples for the Trainer and evaluation (default: images, targets and samples)."""
        from vlsdk.data.samples import collate

        return collate(samples)

    def steps_per_epoch(self, settings: RunSettings, data: Any, world: int) -> int:
        """Optimiser steps in one pass over ``data`` with ``world`` ranks (default: whole global batches)."""
        return max(1, len(data) // (settings.batch_size * world))

    def train_options(self, settings: RunSettings, steps: int) -> dict[str, Any]:
        """:class:`~vlsdk.train.TrainConfig` options of a stage of ``steps`` steps over the runner's
        (``warmup_steps``, ``min_lr_ratio``, ``log_every``...); default: the runner's."""
        return {}

    def stages(self, settings: RunSettings) -> list[Stage]:
        """Training stages before the main one (default: none)."""
        return []

    def metadata(self, settings: RunSettings, data: Dataset) -> dict[str, Any]:
        """What the saved model says about itself: class names, input channels, scaling, size."""
        return {}

    def describe(self, metrics: Mapping[str, Any]) -> str | None:
        """A table of ``metrics`` for people (printed by the runner after evaluation; default: none)."""
        return None

    def predict(self, model: VLModel, data: Dataset, settings: RunSettings) -> list[dict[str, Any]]:
        """Predictions for every sample of ``data`` (JSON-ready)."""
        raise NotImplementedError(f"task {self.name!r} does not predict")

    def render(self, model: VLModel, data: Dataset, settings: RunSettings, path: Path) -> Path | None:
        """Draw a few predictions of ``data`` into the picture ``path`` (default: no picture)."""
        return None

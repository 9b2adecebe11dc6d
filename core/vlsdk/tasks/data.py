"""Dataset plumbing the generic tasks share: registered adapters per split, hold-out splits, synthetic sets.

:func:`split_datasets` builds a task's ``train`` or ``val`` dataset from the settings' specs. When
no validation adapter is named, the training adapter is built twice (augmented and plain) and a
seeded ``val_fraction`` of its samples is held out of training, so one annotated folder is enough.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlsdk.tasks.components import build

__all__ = ["PRETRAIN_SEED", "HeldOut", "SyntheticSet", "split_datasets", "synthetic_set"]

#: Seeds of a synthetic pre-training set start at ``PRETRAIN_SEED + seed``, apart from the seeds of a
#: mixed-in synthetic set (``seed ... seed + len(real) - 1``), so the two stages never share a sample.
PRETRAIN_SEED = 1_000_000


class HeldOut:
    """The samples ``indices`` of ``dataset``; other attributes (``classes``, ``skipped``...) pass through.

    Args:
        dataset: a map-style dataset.
        indices: the positions kept.
    """

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def split_datasets(settings: Any, split: str, transform: Any, **context: Any) -> Any:
    """The ``split`` dataset named by ``settings.dataset`` / ``settings.val_dataset``.

    Args:
        settings: task settings with ``data``, ``dataset``, ``val_dataset``, ``val_fraction``, ``seed``.
        split: ``"train"`` or ``"val"``.
        transform: the split's transform (``sample -> sample``) or ``None``.
        **context: more values offered to the adapter's factory (``channels``, ``max_samples``...).

    Raises:
        ValueError: an unknown adapter (naming the closest), an empty dataset, or a hold-out that
            leaves a split empty.
    """
    train = split == "train"
    common = {"root": settings.data, "transform": transform, "train": train, **context}
    if split == "val" and settings.val_dataset is not None:
        return _nonempty(build("datasets", settings.val_dataset, "val_dataset", **common), "val_dataset")
    data = _nonempty(build("datasets", settings.dataset, "dataset", **common), "dataset")
    if settings.val_dataset is not None:
        return data
    fraction = float(settings.val_fraction)
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1) when no val_dataset is named, got {fraction!r}")
    order = np.random.default_rng(settings.seed).permutation(len(data))
    n_val = max(1, round(fraction * len(data)))
    if n_val >= len(data):
        raise ValueError(f"dataset: {len(data)} samples are too few to hold out val_fraction={fraction} "
                         "and still train; name a val_dataset or add samples")
    return HeldOut(data, np.sort(order[n_val:] if train else order[:n_val]))


class SyntheticSet:
    """``length`` samples ``synthesizer(seed + i)`` (each passed through ``transform``).

    Args:
        synthesizer: a registered synthesizer: ``synthesizer(seed) -> sample``.
        length: samples in the set.
        seed: seed of sample 0.
        transform: ``sample -> sample``.
    """

    def __init__(self, synthesizer: Callable[[int], Any], length: int, seed: int = 0,
                 transform: Callable[[Any], Any] | None = None) -> None:
        self.synthesizer, self.length, self.seed, self.transform = synthesizer, int(length), int(seed), transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic samples")
        sample = self.synthesizer(self.seed + index)
        return self.transform(sample) if self.transform is not None else sample


def synthetic_set(spec: Any, length: int, seed: int, transform: Any, **context: Any) -> Any:
    """A dataset of ``length`` samples from the registered synthesizer ``spec``.

    A synthesizer with a ``dataset(length, seed, transform)`` method builds its own; any other is
    called with a seed per sample (:class:`SyntheticSet`).
    """
    synthesizer = build("synthesizers", spec, "synthesizer", **context)
    if hasattr(synthesizer, "dataset"):
        return synthesizer.dataset(length, seed=seed, transform=transform)
    if not callable(synthesizer):
        raise ValueError(f"synthesizer: {spec!r} built a {type(synthesizer).__name__}, which is neither callable "
                         "nor has dataset(length, seed, transform)")
    return SyntheticSet(synthesizer, length, seed, transform)


def _nonempty(data: Any, where: str) -> Any:
    if len(data) == 0:
        raise ValueError(f"{where}: the dataset is empty (check data= and the adapter's options)")
    return data

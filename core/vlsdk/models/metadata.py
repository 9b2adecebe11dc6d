"""What a saved model is: its task, class names, the input it expects, how it was trained and what for.

A :class:`ModelMetadata` travels with the model (``VLModel.metadata``), is written into
``config.json`` under ``"metadata"`` by ``save_pretrained`` and restored by ``from_pretrained``;
``vlsdk predict`` reads the class names, input channels, scaling and image size from it, and the
model card (``README.md`` beside the weights) is rendered from it. Read it from a checkpoint with
``read_config(dir)["metadata"]`` (the one place, also for ONNX export).

Example:
    >>> meta = ModelMetadata(task="detection", class_names={"det": ("open", "short")},
    ...                      input=InputSpec(channels=("board", "template"), image_size=(640, 640)))
    >>> ModelMetadata.from_dict(meta.to_dict()) == meta
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InputSpec", "ModelMetadata", "SCALINGS", "default_channels"]

#: How raw values become the model input (:attr:`InputSpec.scaling`):
#: ``"divide_255"``: 8-bit values divided by 255 (16-bit by 65535), floating-point values as stored;
#: ``"zscore_per_image"``: each channel minus its mean over the image, divided by its standard deviation;
#: ``"none"``: the values as stored in the file.
SCALINGS: tuple[str, ...] = ("divide_255", "zscore_per_image", "none")


def default_channels(in_chans: int) -> tuple[str, ...]:
    """``("channel_0", ..., "channel_{in_chans - 1}")``: channel names when none were recorded."""
    return tuple(f"channel_{i}" for i in range(int(in_chans)))


def _fail(where: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{where}: expected {expected}, got {got!r}")


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, str) and v for v in value):
        raise _fail(where, "a non-empty list of non-empty strings", value)
    return tuple(value)


def _numbers(value: Any, where: str, n: int, kind: type, expected: str) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != n:
        raise _fail(where, expected, value)
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _fail(where, expected, value)
        if not math.isfinite(v) or v <= 0:
            raise _fail(where, expected + " (finite, > 0)", value)
        if kind is int and int(v) != v:
            raise _fail(where, expected, value)
        out.append(kind(v))
    return tuple(out)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, "a string", value)
    return value


def _check_keys(data: Any, where: str, cls: type) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise _fail(where, f"a JSON object with fields {[f.name for f in dataclasses.fields(cls)]}", data)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected only {sorted(known)}")
    return dict(data)


@dataclass(frozen=True)
class InputSpec:
    """The input a model expects.

    Args:
        channels: the meaning of each input channel, in order (``("board", "template")``,
            ``("flair", "t1c")``, ``("gray",)``); its length is the model's ``in_chans``.
        scaling: how raw values become the model input, one of :data:`SCALINGS`.
        image_size: ``(height, width)`` the model was trained at (``vlsdk predict`` resizes to
            it by default); ``None``: not recorded.
        voxel_spacing: ``(x, y, z)`` millimetres of the training volumes; ``None``: not recorded.

    Raises:
        ValueError: a field out of its documented range, naming the field.
    """

    channels: tuple[str, ...]
    scaling: str = "divide_255"
    image_size: tuple[int, int] | None = None
    voxel_spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _names(self.channels, "input.channels"))
        if self.scaling not in SCALINGS:
            raise _fail("input.scaling", f"one of {SCALINGS}", self.scaling)
        object.__setattr__(self, "image_size", _numbers(self.image_size, "input.image_size", 2, int,
                                                        "two positive ints [height, width] or null"))
        object.__setattr__(self, "voxel_spacing", _numbers(self.voxel_spacing, "input.voxel_spacing", 3, float,
                                                           "three positive numbers [x, y, z] in mm or null"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        return {"channels": list(self.channels), "scaling": self.scaling,
                "image_size": None if self.image_size is None else list(self.image_size),
                "voxel_spacing": None if self.voxel_spacing is None else list(self.voxel_spacing)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "input") -> InputSpec:
        """Rebuild from :meth:`to_dict`'s form.

        Raises:
            ValueError: naming the field (``input.image_size``) and what was expected.
        """
        data = _check_keys(data, where, cls)
        if "channels" not in data:
            raise ValueError(f"{where}.channels: missing; expected a list of channel names")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(str(err).replace("input.", f"{where}.", 1)) from None


@dataclass(frozen=True)
class ModelMetadata:
    """What a model is for, recorded with its weights.

    Args:
        task: what the model does (``"pcb defect detection"``, ``"lesion segmentation"``); ``None``: not recorded.
        class_names: head name -> the name of each label value that head outputs (for a
            segmentation head including the background at 0).
        input: the input the model expects; ``None``: not recorded.
        training: free-form facts of the training run: ``data``, ``data_licence``, ``metrics``
            (name -> value), ``command`` (that produced the metrics), ``seed``, ...
        intended_use: what the model is meant for ("" = not recorded).
        limitations: what it is known not to do well ("" = not recorded).

    Raises:
        ValueError: a field of the wrong type, naming the field.
    """

    task: str | None = None
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    input: InputSpec | None = None
    training: dict[str, Any] = field(default_factory=dict)
    intended_use: str = ""
    limitations: str = ""

    def __post_init__(self) -> None:
        if self.task is not None:
            _text(self.task, "task")
        if not isinstance(self.class_names, Mapping) or not all(isinstance(k, str) for k in self.class_names):
            raise _fail("class_names", "an object: head name -> list of class names", self.class_names)
        object.__setattr__(self, "class_names",
                           {k: _names(v, f"class_names.{k}") for k, v in self.class_names.items()})
        if self.input is not None and not isinstance(self.input, InputSpec):
            raise _fail("input", "an InputSpec or None", self.input)
        if not isinstance(self.training, Mapping):
            raise _fail("training", "an object (data, data_licence, metrics, command, seed, ...)", self.training)
        object.__setattr__(self, "training", dict(self.training))
        _text(self.intended_use, "intended_use")
        _text(self.limitations, "limitations")

    def replace(self, **changes: Any) -> ModelMetadata:
        """A copy with some fields changed (checked like the constructor)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` rebuilds it."""
        return {"task": self.task, "class_names": {k: list(v) for k, v in self.class_names.items()},
                "input": None if self.input is None else self.input.to_dict(), "training": dict(self.training),
                "intended_use": self.intended_use, "limitations": self.limitations}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "metadata") -> ModelMetadata:
        """Rebuild from :meth:`to_dict`'s form; ``None`` gives empty metadata.

        Args:
            data: the dict.
            where: prefix of field names in errors (``"config.json: metadata"``).

        Raises:
            ValueError: naming the field (``metadata.input.scaling``) and what was expected.
        """
        if data is None:
            return cls()
        data = _check_keys(data, where, cls)
        spec = data.pop("input", None)
        try:
            meta = cls(**data)
        except ValueError as err:
            raise ValueError(f"{where}.{err}") from None
        return meta if spec is None else meta.replace(input=InputSpec.from_dict(spec, f"{where}.input"))

    def channels(self, in_chans: int) -> tuple[str, ...]:
        """The recorded channel names, or ``("channel_0", ...)`` for ``in_chans`` channels when none are."""
        return self.input.channels if self.input is not None else default_channels(in_chans)

"""What an exported file tells a deployment about its model: flat ONNX ``metadata_props``.

:func:`~vlsdk.export.onnx.to_onnx` writes these keys beside its own ``"vlsdk"`` JSON blob, as plain
strings (JSON for the structured ones) that any ONNX tool shows (``onnx.load(f).metadata_props``,
``onnxruntime.InferenceSession(f).get_modelmeta().custom_metadata_map``, Netron):

========================  ==================================================================
``vlsdk_version``         the vlsdk that wrote the file
``task``                  the model's task (the saved ``metadata.task``; else the exported
                          heads' tasks joined by ``,``; ``features`` with no head)
``class_names``           JSON ``{head: [names]}`` (only when the saved model records them)
``in_chans``              the number of input channels
``input_channels``        JSON list of what each input channel is (``["flair", "t1ce"]``), when known
``scaling``               how raw pixels/voxels are scaled before the model, when known
``image_size``            JSON ``[H, W]`` the graph was exported at
``dynamic_size``          ``"true"`` when the spatial axes of the input are dynamic
``voxel_spacing``         JSON, when the saved model records it
========================  ==================================================================

The facts come from the model's :class:`~vlsdk.models.metadata.ModelMetadata` (``model.metadata``,
which ``from_pretrained`` restores from the ``"metadata"`` block of ``config.json``), in its
``to_dict()`` form; a fact it does not record is an absent key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PROP_KEYS", "model_props", "read_props"]

#: Every flat key :func:`model_props` may write, in the order ``vlsdk export onnx`` prints them.
PROP_KEYS: tuple[str, ...] = ("vlsdk_version", "task", "class_names", "in_chans", "input_channels", "scaling",
                              "image_size", "dynamic_size", "voxel_spacing")


def _fail(field: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"model metadata field {field!r}: expected {expected}, got {got!r}")


def _names(field: str, value: Any) -> list[str]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise _fail(field, "a list of strings", value)
    return list(value)


def _finite_numbers(field: str, value: Any) -> Any:
    numbers = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        raise _fail(field, "finite numbers", value)
    return value


def model_props(*, in_chans: int, heads: Mapping[str, Mapping[str, Any]], image_size: Sequence[int],
                dynamic_size: bool, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The flat metadata of an export, checked against the exported heads.

    Args:
        in_chans: the model's input channels.
        heads: the exported head layout, head -> ``{"task": ..., "num_classes": ...}``.
        image_size: ``(H, W)`` of the export.
        dynamic_size: whether the spatial axes are dynamic.
        metadata: ``ModelMetadata.to_dict()`` (the ``config.json`` ``"metadata"`` block), or ``None``.

    Returns:
        key -> string, for :data:`PROP_KEYS` that are known.

    Raises:
        ValueError: a malformed block, naming the field: class names that are not strings or
            whose count differs from the head's ``num_classes``, channel names whose count differs
            from ``in_chans``, a non-finite image size or voxel spacing.
    """
    from vlsdk.version import __version__

    if not isinstance(metadata, (Mapping, type(None))):
        raise _fail("metadata", "a mapping (config.json 'metadata' block)", metadata)
    meta = dict(metadata or {})
    tasks = list(dict.fromkeys(str(info["task"]) for info in heads.values()))
    task = meta.get("task") or (",".join(tasks) if tasks else "features")
    if not isinstance(task, str):
        raise _fail("task", "a string", task)
    props = {"vlsdk_version": __version__, "task": task, "in_chans": str(in_chans),
             "image_size": json.dumps([int(v) for v in image_size]), "dynamic_size": json.dumps(bool(dynamic_size))}
    class_names = meta.get("class_names") or {}
    if not isinstance(class_names, Mapping):
        raise _fail("class_names", "a mapping head -> list of names", class_names)
    exported = {}
    for head, names in class_names.items():
        names = _names(f"class_names.{head}", names)
        if head not in heads:
            continue  # a head that was not exported
        n = heads[head].get("num_classes")
        segmentation = heads[head].get("task") == "segmentation"
        expected = None if not isinstance(n, int) else max(n, 2) if segmentation else n  # as save_pretrained
        if expected is not None and len(names) != expected:
            background = " (segmentation: the background is label 0)" if segmentation else ""
            raise _fail(f"class_names.{head}", f"{expected} names (head {head!r} outputs {expected} labels"
                        f"{background})", names)
        exported[head] = names
    if exported:
        props["class_names"] = json.dumps(exported)
    block = meta.get("input") or {}
    if not isinstance(block, Mapping):
        raise _fail("input", "a mapping with channels, scaling, image_size, voxel_spacing", block)
    if block.get("channels") is not None:
        channels = _names("input.channels", block["channels"])
        if len(channels) != in_chans:
            raise _fail("input.channels", f"{in_chans} names (the model takes in_chans={in_chans})", channels)
        props["input_channels"] = json.dumps(channels)
    if block.get("scaling") is not None:
        if not isinstance(block["scaling"], str):
            raise _fail("input.scaling", "a string", block["scaling"])
        props["scaling"] = block["scaling"]
    if block.get("image_size") is not None:
        _finite_numbers("input.image_size", block["image_size"])
    if block.get("voxel_spacing") is not None:
        props["voxel_spacing"] = json.dumps(_finite_numbers("input.voxel_spacing", block["voxel_spacing"]))
    return props


def read_props(onnx_model: Any) -> dict[str, str]:
    """The :data:`PROP_KEYS` present in a file, a ``ModelProto`` or an onnxruntime session."""
    if hasattr(onnx_model, "get_modelmeta"):
        props = dict(onnx_model.get_modelmeta().custom_metadata_map)
    else:
        if not hasattr(onnx_model, "metadata_props"):
            import onnx

            onnx_model = onnx.load(str(onnx_model), load_external_data=False)
        props = {p.key: p.value for p in onnx_model.metadata_props}
    return {k: props[k] for k in PROP_KEYS if k in props}

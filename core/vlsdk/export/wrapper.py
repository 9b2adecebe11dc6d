"""The module that is exported: a :class:`~vlsdk.models.model.VLModel` as ``images -> tuple of tensors``.

:class:`ExportWrapper` flattens the model's head outputs into named tensors (the layout is recorded
in the ONNX file's ``vlsdk`` metadata, read back by :func:`read_metadata`); :func:`export_mode`
puts a model in eval mode with the dense MoE path for the duration of a trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel

__all__ = ["METADATA_KEY", "TASK_OUTPUTS", "ExportWrapper", "export_mode", "read_metadata"]

#: Output fields written for the core tasks, in order, and which of them have no batch axis.
TASK_OUTPUTS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "detection": (("cls_logits", "obj_logits", "ltrb", "boxes", "anchors", "strides"),
                  frozenset({"anchors", "strides"})),
    "segmentation": (("logits",), frozenset()),
    "depth": (("depth",), frozenset()),
}

METADATA_KEY = "vlsdk"


def _task_of(model: VLModel, head: str) -> str:
    spec = getattr(model, "head_specs", {}).get(head)
    return spec.task if spec is not None else getattr(model.heads[head], "task", "") or head


class ExportWrapper(nn.Module):
    """``images -> tuple of tensors``: :class:`~vlsdk.ModelOutput` flattened into named outputs.

    Args:
        model: the model to wrap (not copied).
        heads: head names to export, in order (default: every attached head; ``[]``: only the
            encoder's feature pyramid).

    Attributes:
        output_names: ``"<head>.<field>"`` of each output, in order (filled by :meth:`describe`).
        output_ranks: output name -> number of axes (filled by :meth:`describe`).
        batch_free: the output names without a batch axis (detection anchors and strides).

    Example:
        >>> wrapper = ExportWrapper(model, heads=["det"])  # doctest: +SKIP
        >>> wrapper.describe(torch.zeros(2, 3, 64, 64))["det"]["outputs"]  # doctest: +SKIP
        ['det.cls_logits', 'det.obj_logits', 'det.ltrb', 'det.boxes', 'det.anchors', 'det.strides']
    """

    def __init__(self, model: VLModel, heads: Sequence[str] | None = None) -> None:
        super().__init__()
        if isinstance(heads, str):
            raise ValueError(f"heads must be a sequence of head names, got the string {heads!r}")
        names = list(model.heads) if heads is None else list(heads)
        missing = [h for h in names if h not in model.heads]
        if missing:
            raise ValueError(f"unknown head(s) {missing}; attached heads: {sorted(model.heads)}")
        if len(set(names)) != len(names):
            raise ValueError(f"heads must be distinct, got {names}")
        self.model = model
        self.head_names = names
        self.output_names: list[str] = []
        self.output_ranks: dict[str, int] = {}
        self.batch_free: set[str] = set()

    def _flatten(self, head: str, output: Any) -> list[tuple[str, torch.Tensor]]:
        task = _task_of(self.model, head)
        if task in TASK_OUTPUTS:
            fields, _ = TASK_OUTPUTS[task]
            return [(f"{head}.{f}", getattr(output, f)) for f in fields]
        if isinstance(output, torch.Tensor):
            return [(head, output)]
        if dataclasses.is_dataclass(output):
            items = [(f.name, getattr(output, f.name)) for f in dataclasses.fields(output)]
        elif isinstance(output, Mapping):
            items = list(output.items())
        elif isinstance(output, (tuple, list)):
            items = [(str(i), v) for i, v in enumerate(output)]
        else:
            raise ValueError(f"head {head!r} returned {type(output).__name__}; export needs a tensor, a dataclass, "
                             f"a mapping or a tuple of tensors")
        tensors = [(f"{head}.{k}", v) for k, v in items if isinstance(v, torch.Tensor)]
        if not tensors:
            raise ValueError(f"head {head!r} returned no tensor to export ({type(output).__name__})")
        return tensors

    def _named(self, images: torch.Tensor) -> tuple[list[tuple[str, torch.Tensor]], Any]:
        out = self.model(images, heads=self.head_names)
        if not self.head_names:
            return [(f"features.s{s}", f) for s, f in sorted(out.features.pyramid.items())], out
        named = []
        for head in self.head_names:
            named += self._flatten(head, out.heads[head])
        return named, out

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named, _ = self._named(images)
        return tuple(t for _, t in named)

    @torch.no_grad()
    def describe(self, images: torch.Tensor) -> dict[str, Any]:
        """Run once on ``images``; fill :attr:`output_names` / :attr:`batch_free`; the head layout."""
        named, out = self._named(images)
        self.output_names = [n for n, _ in named]
        self.output_ranks = {n: t.dim() for n, t in named}
        self.batch_free = set()
        layout: dict[str, Any] = {}
        for head in self.head_names:
            task = _task_of(self.model, head)
            prefix = f"{head}."
            entry: dict[str, Any] = {"task": task,
                                     "outputs": [n for n in self.output_names if n == head or n.startswith(prefix)]}
            if task in TASK_OUTPUTS:
                self.batch_free |= {f"{head}.{f}" for f in TASK_OUTPUTS[task][1]}
            result = out.heads[head]
            for key in ("level_sizes", "image_size"):
                if hasattr(result, key):
                    entry[key] = [list(v) if isinstance(v, tuple) else v for v in getattr(result, key)]
            module = self.model.heads[head]
            for key in ("num_classes", "strides", "max_depth", "activation"):
                value = getattr(module, key, None)
                if isinstance(value, (int, float, str, tuple)):
                    entry[key] = list(value) if isinstance(value, tuple) else value
            layout[head] = entry
        return layout


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and the dense MoE path for the duration; every module's previous state restored.

    (The TorchScript exporter restores ``train()`` of the *top* module recursively, which would
    flip a model whose submodules were in mixed modes; this restores each module's own flag.)
    """
    from vlsdk.models.moe import DynamicMoE

    modes = {m: m.training for m in model.modules()}
    dense = {m: m.dense for m in model.modules() if isinstance(m, DynamicMoE)}
    try:
        model.eval()
        for m in dense:
            m.dense = True
        yield
    finally:
        for m, flag in modes.items():
            m.training = flag
        for m, flag in dense.items():
            m.dense = flag


def read_metadata(onnx_model: str | Path | Any) -> dict[str, Any]:
    """The ``vlsdk`` metadata :func:`to_onnx` wrote (a path, an ``onnx.ModelProto`` or an ORT session)."""
    if hasattr(onnx_model, "get_modelmeta"):  # onnxruntime.InferenceSession
        props = onnx_model.get_modelmeta().custom_metadata_map
    else:
        if not hasattr(onnx_model, "metadata_props"):
            import onnx

            onnx_model = onnx.load(str(onnx_model), load_external_data=False)
        props = {p.key: p.value for p in onnx_model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError("this ONNX model has no vlsdk metadata; export it with vlsdk.export.to_onnx")
    return json.loads(props[METADATA_KEY])

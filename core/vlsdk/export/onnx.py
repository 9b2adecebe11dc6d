"""ONNX export of a :class:`~vlsdk.VLModel` with its heads and inserted domain experts.

**Static MoE path.** The sparse MoE path (:meth:`DynamicMoE._sparse`) sorts tokens by expert,
loops over the experts that received tokens (``kept.tolist()``) and scatters back with
``index_add_``. None of that survives tracing: the TorchScript exporter (torch 2.13) rejects the
stable ``argsort`` outright, and were it traced, the loop and the split sizes would become
constants of the example input (experts it did not reach vanish from the graph) and ``index_add_``
with repeated indices can be written as a non-summing scatter. :func:`to_onnx` therefore switches every MoE layer
to the dense path (``VLModel.set_dense_moe(True)``) for the duration of the export: every expert
(generic, domain, shared) runs on every token and is combined with a ``(T, E)`` weight matrix
built by one ``ScatterElements`` of the renormalised top-k weights (the ``k`` indices of a token
are distinct, so no reduction is needed). Routing is exported as it runs in PyTorch: fp32
``Gemm -> Softmax (or Sigmoid and a sum-normalisation) -> TopK -> renormalise``. Domain experts
that take an :class:`~vlsdk.models.features.ExpertContext` receive ``index = arange(T)`` and their
grid gathers become ``Gather`` ops on the whole token matrix. After writing the file,
:func:`missing_experts` checks that the weights of every expert of every layer are in the graph,
and :func:`to_onnx` raises if one is not.

**Exporter.** The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used.
The dense path has no data-dependent control flow, so tracing it is exact; it needs no extra
package, and its node names keep the module path (``.../ffn/router/Gemm``,
``.../ffn/shared/fc1/Gemm``), which is what :mod:`vlsdk.export.quantize` matches to keep the
routers and shared experts in float. The ``torch.export``-based exporter (torch >= 2.9's default,
which needs ``onnxscript``) has not been tried since the encoder's forward became free of host
reads (it compiles with ``fullgraph=True``); its node names would differ.

**Dropless.** The graph computes every (token, expert) assignment; a layer with a
``capacity_factor`` drops overflowing assignments on its sparse PyTorch path, so :func:`to_onnx`
warns and parity then holds only where no expert overflows. Top-k ties resolve to the lower
expert index in onnxruntime's ``TopK``, as in ``torch.topk`` on CPU.

**Fixed image size, dynamic batch.** By default the image size is fixed in the graph: export once
per deployment resolution. The batch dimension is dynamic (``dynamic_batch=True``).
``dynamic_size=True`` makes the spatial axes dynamic as well (the encoder builds its position
embedding in the graph when traced); parity is then also checked at a second size.

**Nothing unchecked is certified.** :func:`to_onnx` keeps a file only when (1) the tracer raised
no warning other than the reviewed ones of the core's model
(:data:`~vlsdk.export.tracing.KNOWN_TRACER_WARNINGS`; ``allow_tracer_warnings=True`` overrides, and
the file records it), (2) every expert's weights are in the graph and (3) onnxruntime agrees with
PyTorch on every output at the traced batch size and another one, and at a second image size when
the spatial axes are dynamic (:func:`~vlsdk.export.parity.verify_parity`; its table is recorded).

**Outputs** (named ``"<head>.<field>"``; see :data:`TASK_OUTPUTS`):

- detection: ``cls_logits (B, A, C)``, ``obj_logits (B, A)``, ``ltrb (B, A, 4)``,
  ``boxes (B, A, 4)`` (xyxy pixels, unclipped), ``anchors (A, 2)`` and ``strides (A,)`` (no batch
  axis). Score threshold, top-k and class-wise NMS stay outside the graph:
  :func:`decode_onnx_outputs` does them in torch, exactly as ``DetectionHead.decode``.
- segmentation: ``logits (B, C, H, W)``; depth: ``depth (B, 1, H, W)``.
- any other head: every tensor field of its output dataclass (or the tensor itself).
- no head: ``features.s<stride>`` for each map of the encoder's pyramid.

The head layout (tasks, classes, level sizes, image size), the experts of each MoE layer, the
vlsdk version and the parity table are stored as JSON in the model's ``metadata_props["vlsdk"]``
(:func:`read_metadata`); what a deployment needs to feed the model and read its outputs (task,
class names, input channels, scaling, image size) is also written as flat keys
(:mod:`vlsdk.export.metadata_props`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlsdk.export.wrapper import METADATA_KEY, TASK_OUTPUTS, ExportWrapper, export_mode, read_metadata

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel

__all__ = [
    "DEFAULT_OPSET",
    "TASK_OUTPUTS",
    "ExportWrapper",
    "to_onnx",
    "read_metadata",
    "missing_experts",
    "head_outputs_from_onnx",
    "decode_onnx_outputs",
]

#: Opset written by default (onnxruntime >= 1.14 runs it; LayerNormalization is a single op).
DEFAULT_OPSET = 17

def _check_args(model: Any, image_size: Any, in_chans: int | None, opset: int) -> tuple[tuple[int, int], int]:
    from vlsdk.models.model import VLModel

    if not isinstance(model, VLModel):
        raise ValueError(f"to_onnx expects a vlsdk.VLModel, got {type(model).__name__}")
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be a pair (H, W) of ints, got {image_size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    expected = model.config.in_chans
    if in_chans is not None and in_chans != expected:
        raise ValueError(f"the model takes images with in_chans={expected} channels, got in_chans={in_chans}; "
                         f"build the model with in_chans={in_chans} (e.g. VLModel(name, in_chans={in_chans}))")
    if not isinstance(opset, int) or not 13 <= opset <= 20:
        raise ValueError(f"opset must be an int in [13, 20] (17 recommended), got {opset!r}")
    return (height, width), expected


def to_onnx(model: VLModel, path: str | Path, *, heads: Sequence[str] | None = None,
            image_size: Sequence[int] = (224, 224), in_chans: int | None = None, opset: int = DEFAULT_OPSET,
            dynamic_batch: bool = True, dynamic_size: bool = False, batch_size: int = 2,
            example: torch.Tensor | None = None, check_experts: bool = True, verify: bool = True,
            atol: float = 1e-4, rtol: float = 1e-4, allow_tracer_warnings: bool = False,
            metadata: Mapping[str, Any] | Any | None = None) -> Path:
    """Export ``model`` (encoder, MoE routing, every expert, the chosen heads) to an ONNX file.

    The model is left as it was (training flags, sparse/dense MoE flags, weights). See the
    module docstring for the static MoE path, the exporter choice and the output names. A file
    is only left at ``path`` when every check passed: on any error below it is removed.

    Args:
        model: a :class:`~vlsdk.VLModel`.
        path: the ``.onnx`` file to write (parent folders are created).
        heads: head names to export (default: every attached head; ``[]``: the feature pyramid).
        image_size: ``(H, W)`` of the input images (the traced size).
        in_chans: input channels; only checked against ``model.config.in_chans``.
        opset: ONNX opset, in ``[13, 20]``.
        dynamic_batch: make the batch axis of the input and outputs dynamic.
        dynamic_size: make the spatial axes dynamic too. The core's encoder, segmentation and
            depth heads compute their sizes in the graph; the detection neck decides at trace time
            whether to resize a level (``heads/detection.py``), so a detection head needs
            ``allow_tracer_warnings=True`` and holds only at sizes whose grids halve alike; the
            parity check at a second size is what tells.
        batch_size: batch of the example input used for tracing (2 avoids size-1 specialisation).
        example: the tracing input ``(B, C, H, W)``; default ``randn`` (seeded) of ``batch_size``.
        check_experts: raise when an expert's weights are missing from the written graph.
        verify: run :func:`~vlsdk.export.parity.verify_parity` (traced and another batch size;
            a second image size when ``dynamic_size``) and record its table in the metadata.
        atol, rtol: parity tolerance per element, ``atol + rtol * |reference|``.
        allow_tracer_warnings: export even though the tracer warned of values frozen into the
            graph (other than :data:`~vlsdk.export.tracing.KNOWN_TRACER_WARNINGS`); the warnings
            are then warned about once and recorded in the metadata (``"tracer_warnings"``).
        metadata: what the model is for (task, class names, input channels, scaling), written as
            flat ``metadata_props`` (:mod:`vlsdk.export.metadata_props`): a ``ModelMetadata`` or its
            ``to_dict()`` form; default ``model.metadata`` (from ``config.json`` after ``from_pretrained``).

    Returns:
        the path written.

    Raises:
        ValueError: bad arguments (unknown head, wrong ``in_chans``, bad ``image_size`` or opset,
            a malformed ``metadata`` block).
        TracerWarningError: the tracer warned, naming each warning's text and source line.
        ParityError: onnxruntime disagrees with PyTorch; names the output, batch, size, shape, error.
        RuntimeError: an expert is missing from the graph (:func:`missing_experts`).

    Example:
        >>> model = VLModel("tiny"); model.add_head("seg", task="segmentation", num_classes=3)  # doctest: +SKIP
        >>> to_onnx(model, "seg.onnx", image_size=(64, 64))  # doctest: +SKIP
        PosixPath('seg.onnx')
    """
    import onnx

    from vlsdk.export.metadata_props import model_props
    from vlsdk.export.parity import ParityError, verify_parity
    from vlsdk.export.tracing import TracerWarningError, capture_tracer_warnings, unexpected

    size, channels = _check_args(model, image_size, in_chans, opset)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    wrapper = ExportWrapper(model, heads)
    capped = [i for i, layer in enumerate(model.moe_layers) if layer.capacity_factor is not None]
    if capped:
        warnings.warn(f"MoE layers {capped} have a capacity_factor: the exported graph is dropless (every "
                      f"assignment counts), so it differs from the PyTorch sparse path wherever an expert "
                      f"overflows its capacity; parity is checked against the dense path", UserWarning, stacklevel=2)
    param = next(model.parameters())
    if example is None:
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(batch_size, channels, *size, generator=gen).to(device=param.device, dtype=param.dtype)
    elif tuple(example.shape[1:]) != (channels, *size):
        raise ValueError(f"example must have shape (B, {channels}, {size[0]}, {size[1]}), got {tuple(example.shape)}")
    path = Path(path)
    with export_mode(model):
        live = live_moe_layers(wrapper, example)
    with export_mode(model), torch.no_grad():
        layout = wrapper.describe(example)
    if metadata is None and hasattr(getattr(model, "metadata", None), "to_dict"):
        metadata = model.metadata.to_dict()  # restored from config.json by from_pretrained
    elif hasattr(metadata, "to_dict"):
        metadata = metadata.to_dict()
    props = model_props(in_chans=channels, heads=layout, image_size=size, dynamic_size=dynamic_size,
                        metadata=metadata)
    names = wrapper.output_names
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with export_mode(model), torch.no_grad(), capture_tracer_warnings() as issues:
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=names,
                              dynamic_axes=_dynamic_axes(wrapper, dynamic_batch, dynamic_size),
                              do_constant_folding=True)
        frozen = unexpected(issues, dynamic_size)
        if frozen and not allow_tracer_warnings:
            listing = "\n  ".join(i.describe() for i in frozen)
            raise TracerWarningError(
                f"the tracer froze values of the example input into the graph ({len(frozen)} warning(s)); the "
                f"file would be right for that input only:\n  {listing}\nfix the code at those lines, or pass "
                f"allow_tracer_warnings=True (vlsdk export onnx --allow-tracer-warnings) to export anyway", frozen)
        if frozen:
            warnings.warn(f"exporting despite {len(frozen)} tracer warning(s) (allow_tracer_warnings=True): "
                          + "; ".join(i.describe() for i in frozen), UserWarning, stacklevel=2)
        from vlsdk.version import __version__

        proto = onnx.load(str(path))
        meta = {
            "vlsdk_version": __version__,
            "config": model.config.name,
            "image_size": list(size),
            "in_chans": channels,
            "opset": opset,
            "exporter": "torchscript",
            "dynamic_batch": dynamic_batch,
            "dynamic_size": dynamic_size,
            "batch_size": int(example.shape[0]),
            "inputs": ["images"],
            "outputs": names,
            "heads": layout,
            "experts": [list(layer.expert_names) for layer in model.moe_layers],
            "domain_experts": sorted(model.expert_specs),
            "unused_moe_layers": [i for i in range(len(model.moe_layers)) if i not in live],
            "allow_tracer_warnings": bool(allow_tracer_warnings),
            "tracer_warnings": [i.describe() for i in frozen],
            "metadata": dict(metadata or {}),
        }
        _set_metadata(proto, meta, props)
        if check_experts:
            missing = missing_experts(model, proto, layers=live)
            if missing:
                raise RuntimeError(f"the exported graph {path} lacks the weights of expert(s) {missing}; "
                                   f"the MoE layers were not exported on their static path")
        if verify:
            from vlsdk.export.parity import session

            try:
                cases = verify_parity(model, session(proto.SerializeToString()), atol=atol, rtol=rtol,
                                      dense=bool(capped))
            except ParityError as err:
                raise ParityError(f"{path}: {err}", err.cases) from None
            meta["parity"] = {"atol": atol, "rtol": rtol, "cases": [dataclasses.asdict(c) for c in cases]}
            _set_metadata(proto, meta, props)
        onnx.save(proto, str(path))
    except BaseException:
        path.unlink(missing_ok=True)  # never leave an unchecked file where a checked one was asked for
        raise
    return path


def _set_metadata(proto: Any, meta: Mapping[str, Any], props: Mapping[str, str]) -> None:
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "vlsdk"


def _dynamic_axes(wrapper: ExportWrapper, batch: bool, spatial: bool) -> dict[str, dict[int, str]] | None:
    """The exporter's ``dynamic_axes``: batch axes; with ``spatial`` every other output axis too."""
    if not (batch or spatial):
        return None
    axes: dict[str, dict[int, str]] = {"images": {**({0: "batch"} if batch else {}),
                                                  **({2: "height", 3: "width"} if spatial else {})}}
    for name in wrapper.output_names:
        has_batch = name not in wrapper.batch_free
        out: dict[int, str] = {0: "batch"} if batch and has_batch else {}
        if spatial:
            out |= {i: f"{name}.{i}" for i in range(int(has_batch), wrapper.output_ranks[name])}
        if out:
            axes[name] = out
    return axes


def _digests(array: Any) -> set[str]:
    import numpy as np

    a = np.ascontiguousarray(array, dtype=np.float32)
    out = {hashlib.sha1(a.tobytes()).hexdigest()}
    if a.ndim == 2:
        out.add(hashlib.sha1(np.ascontiguousarray(a.T).tobytes()).hexdigest())
    elif a.ndim == 3:  # stacked experts (E, ., .): each expert's matrix, as is or transposed
        for matrix in a:
            out |= _digests(matrix)
    return out


def live_moe_layers(wrapper: nn.Module, example: torch.Tensor) -> list[int]:
    """Indices of the MoE layers that the exported outputs depend on.

    A head that reads only some pyramid levels (a BEV head on strides 4-16, say) leaves the later
    stages' layers dead: the exporter rightly prunes them, and their experts must not count as
    dropped. Found exactly with one forward and ``autograd.grad`` from the outputs to each layer's
    output (``None`` = no path).
    """
    outputs: list[torch.Tensor] = []
    layers = wrapper.model.moe_layers
    hooks = [layer.register_forward_hook(lambda mod, args, out: outputs.append(out[0])) for layer in layers]
    try:
        with torch.enable_grad():
            results = wrapper(example.detach().clone().requires_grad_(True))
            total = sum(r.float().sum() for r in results if r.is_floating_point() and r.requires_grad)
            if not torch.is_tensor(total):
                return []
            grads = torch.autograd.grad(total, outputs, allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
    return [i for i, g in enumerate(grads) if g is not None]


def missing_experts(model: VLModel, onnx_model: str | Path | Any, layers: Sequence[int] | None = None) -> list[str]:
    """``"layer<i>/<expert>"`` for each expert whose weights are not initializers of the graph.

    ``layers`` limits the check to those MoE layers (default all; :func:`to_onnx` passes
    :func:`live_moe_layers`, the ones its outputs depend on).

    An expert counts as present when one of its weight matrices (parameters with two or more
    dimensions) is an initializer, as is or transposed (constant folding transposes ``Linear``
    weights for ``MatMul``). Experts without such a parameter are not checked. This is what
    catches a graph traced through the sparse path, where experts the example did not reach
    are simply absent.
    """
    import numpy as np
    from onnx import numpy_helper

    if not hasattr(onnx_model, "graph"):
        import onnx

        onnx_model = onnx.load(str(onnx_model))
    present: set[str] = set()
    for init in onnx_model.graph.initializer:
        if init.data_type in (1, 10) and len(init.dims) >= 2:  # float32 / float16 tensors
            present |= _digests(numpy_helper.to_array(init))
    missing = []
    for i, layer in enumerate(model.moe_layers):
        if layers is not None and i not in layers:
            continue
        modules = list(zip(layer.expert_names, layer._modules_in_order(), strict=True))
        if layer.shared is not None:
            modules.append(("shared", layer.shared))
        for name, module in modules:
            weights = [p.detach().float().cpu().numpy() for p in module.parameters() if p.dim() >= 2]
            weights = [w.reshape(w.shape[0], -1) if w.ndim > 2 else w for w in weights]
            if weights and not any(_digests(w) & present for w in weights):
                # a conv weight may have been reshaped by folding: compare the flat bytes as well
                flat = {hashlib.sha1(np.ascontiguousarray(w, np.float32).tobytes()).hexdigest() for w in weights}
                if not flat & present:
                    missing.append(f"layer{i}/{name}")
    return missing


def head_outputs_from_onnx(outputs: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild each head's typed output (``DetectionOutput`` ...) from named onnxruntime arrays.

    Args:
        outputs: output name -> array (``dict(zip(names, session.run(None, feeds)))``).
        metadata: :func:`read_metadata` of the exported file.

    Returns:
        head name -> ``DetectionOutput`` / ``SegmentationOutput`` / ``DepthOutput`` for the core
        tasks, else a dict field -> tensor.
    """
    from vlsdk.heads import DepthOutput, DetectionOutput, SegmentationOutput

    result: dict[str, Any] = {}
    for head, info in metadata["heads"].items():
        tensors = {}
        for name in info["outputs"]:
            if name not in outputs:
                raise ValueError(f"output {name!r} of head {head!r} is missing; got {sorted(outputs)}")
            tensors[name[len(head) + 1:] if name != head else head] = torch.as_tensor(outputs[name])
        task = info["task"]
        if task == "detection":
            result[head] = DetectionOutput(
                tensors["cls_logits"], tensors["obj_logits"], tensors["ltrb"], tensors["anchors"],
                tensors["strides"], [tuple(s) for s in info["level_sizes"]], tuple(info["image_size"]))
        elif task == "segmentation":
            result[head] = SegmentationOutput(tensors["logits"])
        elif task == "depth":
            result[head] = DepthOutput(tensors["depth"])
        else:
            result[head] = tensors
    return result


@torch.no_grad()
def decode_onnx_outputs(outputs: Mapping[str, Any], metadata: Mapping[str, Any], *, score_threshold: float = 0.05,
                        iou_threshold: float = 0.5, max_detections: int = 100, pre_nms_topk: int = 1000,
                        seg_threshold: float = 0.5) -> dict[str, Any]:
    """The documented post-processing of an exported model: what ``head.decode`` gives in PyTorch.

    - detection: ``sigmoid(obj) * sigmoid(cls)`` scores, boxes clipped to the image, per image top
      ``pre_nms_topk`` above ``score_threshold``, class-wise NMS, at most ``max_detections``:
      a list of :class:`~vlsdk.heads.Detections` (one per image).
    - segmentation: :class:`~vlsdk.heads.SegmentationPrediction` (softmax / sigmoid, labels).
    - depth: ``(B, H, W)`` tensor. Other tasks: their raw tensors.

    Args:
        outputs: output name -> array from onnxruntime.
        metadata: :func:`read_metadata` of the exported file.
        score_threshold, iou_threshold, max_detections, pre_nms_topk: as ``DetectionHead.decode``.
        seg_threshold: foreground threshold of a binary segmentation head.

    Example:
        >>> sess = onnxruntime.InferenceSession("model.onnx")  # doctest: +SKIP
        >>> arrays = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))  # doctest: +SKIP
        >>> decode_onnx_outputs(arrays, read_metadata(sess))["det"][0].boxes  # doctest: +SKIP
    """
    from vlsdk.heads import DetectionOutput, SegmentationPrediction
    from vlsdk.heads.detection import decode_detections

    decoded: dict[str, Any] = {}
    for head, out in head_outputs_from_onnx(outputs, metadata).items():
        task = metadata["heads"][head]["task"]
        if task == "detection":
            assert isinstance(out, DetectionOutput)
            decoded[head] = decode_detections(out, score_threshold, iou_threshold, max_detections, pre_nms_topk)
        elif task == "segmentation":
            logits = out.logits
            if logits.shape[1] == 1:
                probs = torch.sigmoid(logits)
                decoded[head] = SegmentationPrediction((probs[:, 0] > seg_threshold).long(), probs)
            else:
                probs = logits.softmax(1)
                decoded[head] = SegmentationPrediction(probs.argmax(1), probs)
        elif task == "depth":
            decoded[head] = out.depth[:, 0]
        else:
            decoded[head] = out
    return decoded

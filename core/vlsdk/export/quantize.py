"""INT8 post-training quantisation of an exported model with onnxruntime, and its output drift.

Two modes (``onnxruntime.quantization``):

- ``"dynamic"``: int8 weights, activations quantised on the fly per tensor; ``MatMul``/``Gemm``
  only (the transformer, routers, experts). No calibration data. The CNN stem and the heads stay
  float.
- ``"static"``: QDQ format, int8 weights (per channel) and int8 activations with ranges from a
  calibration set; ``Conv``/``MatMul``/``Gemm``.

By default the MoE routers (``.../ffn/router/Gemm``) and the shared experts
(``.../ffn/shared/...``) stay in float (``keep_float``): a router quantised to int8 flips top-k
choices near ties, which changes which expert a token reaches (a discrete error, unlike the
smooth error of a quantised expert), and the shared expert sees every token. Node names come from
the TorchScript exporter, which writes each node's module path (see :mod:`vlsdk.export.onnx`).
Everything that is not ``Conv``/``MatMul``/``Gemm`` (the top-k, the ``(T, E)`` combine, norms,
softmax) stays float in both modes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_KEEP_FLOAT", "float_node_names", "quantize_onnx", "int8_drift"]

#: Module-path segments whose weight ops stay float by default.
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("router", "shared")

_MODES = ("dynamic", "static")


def _segment_matches(segment: str, pattern: str) -> bool:
    # "router" matches the scopes "router", "router_1" (a module called twice) and "router.x"
    return segment == pattern or segment.startswith(pattern + ".") or re.fullmatch(
        re.escape(pattern) + r"_\d+", segment) is not None


def float_node_names(onnx_model: str | Path | Any, keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
                     op_types: Sequence[str] = ("Conv", "MatMul", "Gemm")) -> list[str]:
    """Names of the ``op_types`` nodes under a module-path segment named by ``keep_float``.

    A pattern matches a segment of the node name ``/model/encoder/blocks.0/ffn/router/Gemm``
    when it is that segment, that segment with a ``_<n>`` suffix (a module called a second time)
    or its prefix before a dot. Experts appear under their leaf name: ``"pcb_defect"`` keeps the
    ``industrial.pcb_defect`` expert in float, ``"generic"`` every generic expert.

    Example:
        >>> float_node_names("model.onnx")  # doctest: +SKIP
        ['/model/encoder/blocks.0/ffn/router/Gemm', '/model/encoder/blocks.0/ffn/shared/fc1/Gemm', ...]
    """
    if not hasattr(onnx_model, "graph"):
        import onnx

        onnx_model = onnx.load(str(onnx_model), load_external_data=False)
    names = []
    for node in onnx_model.graph.node:
        if node.op_type not in op_types:
            continue
        segments = node.name.split("/")
        if any(_segment_matches(s, p) for s in segments for p in keep_float):
            names.append(node.name)
    return names


class _CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over an iterable of image batches."""

    def __init__(self, batches: Iterable[Any], input_name: str = "images") -> None:
        self._batches = [np.asarray(b.detach().cpu().numpy() if hasattr(b, "detach") else b, dtype=np.float32)
                         for b in batches]
        if not self._batches:
            raise ValueError("calibration needs at least one batch of images")
        self._input = input_name
        self._iter = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self._input: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def quantize_onnx(onnx_path: str | Path, out_path: str | Path, *, mode: str = "dynamic",
                  calibration: Iterable[Any] | None = None, keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
                  per_channel: bool = True, op_types: Sequence[str] | None = None) -> Path:
    """Write an INT8 copy of an exported model (metadata kept).

    Args:
        onnx_path: an FP32 model written by :func:`~vlsdk.export.to_onnx`.
        out_path: where to write the INT8 model.
        mode: ``"dynamic"`` or ``"static"`` (see the module docstring).
        calibration: for ``"static"``: batches ``(B, C, H, W)`` (tensors or arrays) of
            representative images at the exported size.
        keep_float: module-path segments kept in float (:func:`float_node_names`); ``()`` quantises all.
        per_channel: per-output-channel weight scales.
        op_types: ops to quantise (default ``MatMul``/``Gemm`` for dynamic, plus ``Conv`` for static).

    Returns:
        ``out_path``.

    Example:
        >>> quantize_onnx("model.onnx", "model.int8.onnx")  # doctest: +SKIP
        >>> int8_drift("model.onnx", "model.int8.onnx", images)  # doctest: +SKIP
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "static" and calibration is None:
        raise ValueError("mode='static' needs calibration=[batch, ...] of representative images")
    if isinstance(keep_float, str):
        raise ValueError(f"keep_float must be a sequence of names, got the string {keep_float!r}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise ValueError(f"no ONNX model at {onnx_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ops = list(op_types) if op_types is not None else (["MatMul", "Gemm"] if mode == "dynamic"
                                                        else ["Conv", "MatMul", "Gemm"])
    exclude = float_node_names(onnx_path, keep_float, ops) if keep_float else []
    # dynamic quantisation first rewrites each Gemm into "<name>_MatMul" + "<name>_Add" (onnxruntime's
    # replace_gemm_with_matmul), so the excluded Gemm must be named by its MatMul as well
    exclude += [f"{name}_MatMul" for name in exclude]
    if mode == "dynamic":
        quantize_dynamic(str(onnx_path), str(out_path), op_types_to_quantize=ops, per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    else:
        quantize_static(str(onnx_path), str(out_path), _CalibrationReader(calibration),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    _copy_metadata(onnx_path, out_path, mode, list(keep_float))
    return out_path


def _copy_metadata(src: Path, dst: Path, mode: str, keep_float: list[str]) -> None:
    import json

    import onnx

    from vlsdk.export.onnx import METADATA_KEY

    source = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    if METADATA_KEY not in source:
        return
    model = onnx.load(str(dst))
    meta = json.loads(source[METADATA_KEY])
    meta["quantization"] = {"mode": mode, "keep_float": keep_float}
    meta.pop("parity", None)  # the FP32 file's table; the INT8 graph's error is int8_drift's to tell
    source[METADATA_KEY] = json.dumps(meta)
    del model.metadata_props[:]
    for key, value in source.items():  # the flat keys (task, class names, ...) too
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))


def int8_drift(fp32_path: str | Path, int8_path: str | Path, inputs: Iterable[Any]) -> dict[str, dict[str, float]]:
    """Output drift of an INT8 model against its FP32 source over a few batches.

    Args:
        fp32_path: the float model.
        int8_path: its quantised copy.
        inputs: batches ``(B, C, H, W)`` (tensors or arrays), or one such batch.

    Returns:
        output name -> ``{"max_abs", "mean_abs", "rel_rms"}`` (``rms(int8 - fp32) / rms(fp32)``),
        plus ``"label_agreement"`` (share of pixels with the same argmax) for 4-D ``logits``
        outputs with several classes.
    """
    from vlsdk.export.parity import run_onnx, session

    batches = [inputs] if hasattr(inputs, "shape") else list(inputs)
    fp32, int8 = session(fp32_path), session(int8_path)
    sums: dict[str, dict[str, float]] = {}
    for batch in batches:
        ref, got = run_onnx(fp32, batch), run_onnx(int8, batch)
        for name, r in ref.items():
            diff = got[name].astype(np.float64) - r.astype(np.float64)
            acc = sums.setdefault(name, {"max_abs": 0.0, "abs": 0.0, "sq": 0.0, "ref_sq": 0.0, "n": 0.0,
                                         "agree": 0.0, "pixels": 0.0})
            acc["max_abs"] = max(acc["max_abs"], float(np.abs(diff).max()) if diff.size else 0.0)
            acc["abs"] += float(np.abs(diff).sum())
            acc["sq"] += float((diff ** 2).sum())
            acc["ref_sq"] += float((r.astype(np.float64) ** 2).sum())
            acc["n"] += diff.size
            if name.endswith("logits") and r.ndim == 4 and r.shape[1] > 1:
                acc["agree"] += float((r.argmax(1) == got[name].argmax(1)).sum())
                acc["pixels"] += r.shape[0] * r.shape[2] * r.shape[3]
    result = {}
    for name, acc in sums.items():
        n = max(acc["n"], 1.0)
        row = {"max_abs": acc["max_abs"], "mean_abs": acc["abs"] / n,
               "rel_rms": float(np.sqrt(acc["sq"] / max(acc["ref_sq"], 1e-30)))}
        if acc["pixels"]:
            row["label_agreement"] = acc["agree"] / acc["pixels"]
        result[name] = row
    return result

"""Deployment: ONNX export with the static all-experts MoE path, onnxruntime parity and INT8.

``import vlsdk.export`` imports no torch and no onnx; the functions load them when called.

Example:
    >>> from vlsdk.export import to_onnx, check_parity  # doctest: +SKIP
    >>> path = to_onnx(model, "model.onnx", image_size=(224, 224))  # doctest: +SKIP
    >>> check_parity(model, path, torch.randn(2, 3, 224, 224))  # doctest: +SKIP
    {'det.cls_logits': 2.1e-06, ...}
    >>> OnnxModel("model.int8.onnx")(images, heads=["seg"])["seg"].logits  # doctest: +SKIP

:class:`OnnxModel` runs an exported file behind the ``VLModel`` call, so evaluation code written
for a model (a sliding-window predictor, a held-out Dice loop) scores the FP32 or INT8 graph as is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlsdk._lazy import lazy_exports

_EXPORTS = {
    "to_onnx": "vlsdk.export.onnx",
    "ExportWrapper": "vlsdk.export.onnx",
    "read_metadata": "vlsdk.export.onnx",
    "missing_experts": "vlsdk.export.onnx",
    "decode_onnx_outputs": "vlsdk.export.onnx",
    "head_outputs_from_onnx": "vlsdk.export.onnx",
    "check_parity": "vlsdk.export.parity",
    "run_onnx": "vlsdk.export.parity",
    "verify_parity": "vlsdk.export.parity",
    "parity_table": "vlsdk.export.parity",
    "ParityError": "vlsdk.export.parity",
    "TracerWarningError": "vlsdk.export.tracing",
    "read_props": "vlsdk.export.metadata_props",
    "quantize_onnx": "vlsdk.export.quantize",
    "int8_drift": "vlsdk.export.quantize",
    "float_node_names": "vlsdk.export.quantize",
    "OnnxModel": "vlsdk.export.runtime",
}

__all__ = [
    "to_onnx",
    "ExportWrapper",
    "read_metadata",
    "missing_experts",
    "decode_onnx_outputs",
    "head_outputs_from_onnx",
    "check_parity",
    "run_onnx",
    "verify_parity",
    "parity_table",
    "ParityError",
    "TracerWarningError",
    "read_props",
    "quantize_onnx",
    "int8_drift",
    "float_node_names",
    "OnnxModel",
]
assert set(__all__) == set(_EXPORTS)

if TYPE_CHECKING:
    from vlsdk.export.onnx import (
        ExportWrapper,
        decode_onnx_outputs,
        head_outputs_from_onnx,
        missing_experts,
        read_metadata,
        to_onnx,
    )
    from vlsdk.export.metadata_props import read_props
    from vlsdk.export.parity import ParityError, check_parity, parity_table, run_onnx, verify_parity
    from vlsdk.export.quantize import float_node_names, int8_drift, quantize_onnx
    from vlsdk.export.runtime import OnnxModel
    from vlsdk.export.tracing import TracerWarningError


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

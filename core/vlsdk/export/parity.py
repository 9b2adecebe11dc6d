"""onnxruntime (CPU) vs PyTorch parity of an exported model, output by output."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vlsdk.export.onnx import ExportWrapper, export_mode, read_metadata

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel

__all__ = ["check_parity", "run_onnx", "session"]


def session(onnx_path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for ``onnx_path``.

    Args:
        onnx_path: the model file.
        threads: intra-op threads (default: onnxruntime's choice).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _as_numpy(inputs: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(inputs, torch.Tensor):
        return inputs.detach().cpu().float().numpy()
    return np.asarray(inputs, dtype=np.float32)


def run_onnx(onnx_path: str | Path | Any, inputs: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Run an exported model (a path or a session) on ``(B, C, H, W)`` images; name -> array."""
    sess = onnx_path if hasattr(onnx_path, "run") else session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"images": _as_numpy(inputs)}), strict=True))


def check_parity(model: VLModel, onnx_path: str | Path | Any, inputs: torch.Tensor | np.ndarray, *,
                 dense: bool = False) -> dict[str, float]:
    """Max absolute error of every output of ``onnx_path`` (onnxruntime CPU) against ``model``.

    The PyTorch reference runs the model in eval mode with the heads recorded in the file's
    metadata; by default on its sparse MoE path (what users run), so the figure also covers
    dense-vs-sparse equivalence. The model's state is left as it was.

    Args:
        model: the model the file was exported from (or one with the same structure).
        onnx_path: a file written by :func:`~vlsdk.export.to_onnx`, or an onnxruntime session of it.
        inputs: ``(B, C, H, W)`` images at the exported size (any batch when exported with
            ``dynamic_batch=True``).
        dense: compare against the dense (all-experts) MoE path instead.

    Returns:
        output name -> max absolute error (``inf`` on a shape mismatch).

    Example:
        >>> check_parity(model, "model.onnx", torch.randn(3, 3, 64, 64))  # doctest: +SKIP
        {'seg.logits': 1.1e-06, 'depth.depth': 9.5e-06}
    """
    sess = onnx_path if hasattr(onnx_path, "run") else session(onnx_path)
    meta = read_metadata(sess)
    images = torch.as_tensor(_as_numpy(inputs))
    param = next(model.parameters())
    got = run_onnx(sess, images)
    wrapper = ExportWrapper(model, list(meta["heads"]))
    with export_mode(model), torch.no_grad():
        if not dense:
            for layer in model.moe_layers:
                layer.dense = False
        ref = wrapper(images.to(device=param.device, dtype=param.dtype))
    errors: dict[str, float] = {}
    for name, expected in zip(meta["outputs"], ref, strict=True):
        actual = got[name]
        expected = expected.detach().float().cpu().numpy()
        if actual.shape != expected.shape:
            errors[name] = float("inf")
        else:
            errors[name] = float(np.abs(actual.astype(np.float32) - expected).max()) if actual.size else 0.0
    return errors

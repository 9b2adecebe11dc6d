"""onnxruntime (CPU) vs PyTorch parity of an exported model, output by output.

:func:`check_parity` gives each output's max error on the images you pass. :func:`verify_parity`
is what :func:`~vlsdk.export.to_onnx` runs before it accepts a file: every output at the traced
batch size and another one (when the batch axis is dynamic), and at the exported image size and
another one (when the spatial axes are dynamic), so a graph that froze a batch or a size of the
example into a constant fails instead of being certified. :class:`ParityError` names the output,
the batch, the image size, the shape and the error of each failing case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vlsdk.export.wrapper import ExportWrapper, export_mode, read_metadata

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel

__all__ = ["ParityCase", "ParityError", "check_parity", "parity_table", "run_onnx", "session", "verify_parity"]


def session(onnx_path: str | Path | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for ``onnx_path``.

    Args:
        onnx_path: the model file, or a serialised ``ModelProto`` (bytes).
        threads: intra-op threads (default: onnxruntime's choice).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    model = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


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
    got = run_onnx(sess, images)
    ref = _reference(model, meta, images, dense)
    errors: dict[str, float] = {}
    for name, expected in ref.items():
        actual = got[name]
        if actual.shape != expected.shape:
            errors[name] = float("inf")
        else:
            errors[name] = float(np.abs(actual.astype(np.float32) - expected).max()) if actual.size else 0.0
    return errors


def _reference(model: VLModel, meta: dict[str, Any], images: torch.Tensor, dense: bool) -> dict[str, np.ndarray]:
    """The PyTorch outputs, by name, of the heads recorded in the file (model state restored)."""
    param = next(model.parameters())
    wrapper = ExportWrapper(model, list(meta["heads"]))
    with export_mode(model), torch.no_grad():
        if not dense:
            for layer in model.moe_layers:
                layer.dense = False
        ref = wrapper(images.to(device=param.device, dtype=param.dtype))
    return {name: t.detach().float().cpu().numpy() for name, t in zip(meta["outputs"], ref, strict=True)}


@dataclasses.dataclass(frozen=True)
class ParityCase:
    """One output of one parity run.

    Attributes:
        batch: images in the batch.
        image_size: ``(H, W)`` of the images.
        output: the output name (``"seg.logits"``).
        shape: the PyTorch reference's shape.
        max_abs: max absolute error of onnxruntime against PyTorch (``inf``: no comparable result).
        passed: every element within ``atol + rtol * |reference|``.
        problem: what went wrong besides the numbers (a shape mismatch, an onnxruntime error), or ``""``.
    """

    batch: int
    image_size: tuple[int, int]
    output: str
    shape: tuple[int, ...]
    max_abs: float
    passed: bool
    problem: str = ""

    def describe(self) -> str:
        """``output 'seg.logits' shape (1, 4, 32, 32) at batch 1, image 32x32: ...`` on one line."""
        what = self.problem or f"max abs error {self.max_abs:.2e}"
        return (f"output {self.output!r} shape {self.shape} at batch {self.batch}, image "
                f"{self.image_size[0]}x{self.image_size[1]}: {what}")


class ParityError(RuntimeError):
    """An exported file disagrees with its model in at least one :class:`ParityCase`.

    Attributes:
        cases: every case checked (the passing ones too), for :func:`parity_table`.
    """

    def __init__(self, message: str, cases: list[ParityCase]) -> None:
        super().__init__(message)
        self.cases = cases


def _is_dynamic(dim: Any) -> bool:
    return not isinstance(dim, int)


def parity_cases(model: VLModel, sess: Any, meta: dict[str, Any]) -> list[tuple[int, tuple[int, int]]]:
    """``(batch, (H, W))`` pairs :func:`verify_parity` checks by default for this file.

    The traced batch (``meta["batch_size"]``) and, when the input's batch axis is dynamic, batch 1
    (batch 3 if it was traced at 1); the exported size and, when the input's spatial axes are
    dynamic, one more: ``H + m, W + 2m`` with ``m`` the model's coarsest stride (not square, so a
    swapped axis shows).
    """
    shape = sess.get_inputs()[0].shape
    traced = int(meta.get("batch_size") or 2)
    batches = [traced, 1 if traced != 1 else 3] if _is_dynamic(shape[0]) else [int(shape[0])]
    height, width = (int(v) for v in meta["image_size"])
    sizes = [(height, width)]
    if _is_dynamic(shape[2]) or _is_dynamic(shape[3]):
        m = max(model.config.strides)
        sizes.append((height + m if _is_dynamic(shape[2]) else height,
                      width + 2 * m if _is_dynamic(shape[3]) else width))
    return [(b, s) for s in sizes for b in batches]


def verify_parity(model: VLModel, onnx_path: str | Path | Any, *, atol: float = 1e-4, rtol: float = 1e-4,
                  cases: Sequence[tuple[int, tuple[int, int]]] | None = None, dense: bool = False,
                  seed: int = 0) -> list[ParityCase]:
    """Check every output on seeded random images for each ``(batch, image size)`` case.

    Args:
        model: the model the file was exported from.
        onnx_path: the file (or an onnxruntime session of it).
        atol, rtol: an element passes when ``|onnx - torch| <= atol + rtol * |torch|``.
        cases: ``(batch, (H, W))`` pairs (default: :func:`parity_cases`).
        dense: compare with the dense MoE path (what a ``capacity_factor`` model's graph computes)
            instead of the sparse one.
        seed: seed of the random images.

    Returns:
        one :class:`ParityCase` per case and output.

    Raises:
        ParityError: a case failed (onnxruntime error, shape mismatch or error above tolerance);
            the message names each failing output with its batch, image size, shape and error.

    Example:
        >>> print(parity_table(verify_parity(model, "model.onnx")))  # doctest: +SKIP
    """
    sess = onnx_path if hasattr(onnx_path, "run") else session(onnx_path)
    meta = read_metadata(sess)
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    results: list[ParityCase] = []
    for batch, size in cases if cases is not None else parity_cases(model, sess, meta):
        images = torch.randn(batch, model.config.in_chans, *size, generator=torch.Generator().manual_seed(seed))
        ref = _reference(model, meta, images, dense)
        try:
            got = run_onnx(sess, images)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            problem = f"onnxruntime failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            results += [ParityCase(batch, size, n, e.shape, float("inf"), False, problem) for n, e in ref.items()]
            continue
        for name, expected in ref.items():
            actual = got[name].astype(np.float32)
            if actual.shape != expected.shape:
                results.append(ParityCase(batch, size, name, expected.shape, float("inf"), False,
                                          f"onnxruntime gave shape {actual.shape}"))
                continue
            diff = np.abs(actual - expected)
            worst = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0.0
            passed = bool(np.all(diff <= atol + rtol * np.abs(expected)))  # False on any NaN
            results.append(ParityCase(batch, size, name, expected.shape, worst, passed))
    failed = [c for c in results if not c.passed]
    if failed:
        lines = "\n  ".join(c.describe() for c in failed)
        raise ParityError(f"onnxruntime disagrees with PyTorch (atol {atol:.0e} + rtol {rtol:.0e} x |reference|) "
                          f"in {len(failed)} of {len(results)} cases:\n  {lines}", results)
    return results


def parity_table(cases: Sequence[ParityCase]) -> str:
    """The cases as a fixed-width table: batch, image size, output, shape, max abs error, ok/FAIL."""
    rows = [("batch", "image", "output", "shape", "max abs err", "")]
    for c in cases:
        rows.append((str(c.batch), f"{c.image_size[0]}x{c.image_size[1]}", c.output, str(c.shape),
                     f"{c.max_abs:.2e}", "ok" if c.passed else f"FAIL {c.problem}".strip()))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(("  ".join(v.ljust(w) for v, w in zip(r[:5], widths, strict=True)) + "  " + r[5]).rstrip()
                     for r in rows)

"""An exported model behind the ``VLModel`` call: ``model(images, heads=[...])[head]`` on onnxruntime.

:class:`OnnxModel` lets code written for a :class:`~vlsdk.VLModel` (an evaluation loop, a
sliding-window predictor such as ``vlsdk_medical.inference.model_predictor``) score an ONNX file,
FP32 or INT8, without a second copy of that code. It runs on the CPU execution provider and
returns each head's typed output (:func:`~vlsdk.export.onnx.head_outputs_from_onnx`); the images
are moved to the CPU and the outputs come back on the images' device.

Example:
    >>> onnx_model = OnnxModel("lesion.int8.onnx", threads=2)  # doctest: +SKIP
    >>> onnx_model(torch.zeros(4, 2, 128, 128), heads=["lesion"])["lesion"].logits.shape  # doctest: +SKIP
    torch.Size([4, 1, 128, 128])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlsdk.export.onnx import head_outputs_from_onnx, read_metadata
from vlsdk.export.parity import run_onnx, session

__all__ = ["OnnxModel"]


class OnnxModel(nn.Module):
    """A file written by :func:`~vlsdk.export.to_onnx` (or its INT8 copy), called like a ``VLModel``.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).

    Attributes:
        heads: head name -> task (``"segmentation"`` ...), from the file's metadata.
        image_size: ``(H, W)`` the graph was exported at (inputs must have it unless ``dynamic_size``).
        dynamic_size: whether the file was exported with dynamic spatial axes.
        metadata: :func:`~vlsdk.export.read_metadata` of the file.
        session: the onnxruntime ``InferenceSession``.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"no ONNX model at {self.path}")
        self.session = session(self.path, threads)
        self.metadata = read_metadata(self.session)
        self.heads: dict[str, str] = {h: info["task"] for h, info in self.metadata["heads"].items()}
        self.image_size = tuple(self.metadata.get("image_size") or ())
        self.dynamic_size = bool(self.metadata.get("dynamic_size", False))

    def forward(self, images: torch.Tensor, heads: Sequence[str] | None = None) -> dict[str, Any]:
        """Run the graph on ``(B, C, H, W)`` images; head name -> typed output (every head when ``None``).

        Args:
            images: images at :attr:`image_size`.
            heads: the heads wanted (each must be in the file).
        """
        wanted = list(self.heads) if heads is None else list(heads)
        unknown = [h for h in wanted if h not in self.heads]
        if unknown:
            raise ValueError(f"head(s) {unknown} not in {self.path.name}; exported heads: {sorted(self.heads)}")
        if self.image_size and not self.dynamic_size and tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"{self.path.name} was exported at {self.image_size}, got images of size "
                             f"{tuple(images.shape[-2:])}")
        outputs = head_outputs_from_onnx(run_onnx(self.session, images), self.metadata)
        return {h: _to(outputs[h], images.device) for h in wanted}


def _to(output: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return output
    if isinstance(output, dict):
        return {k: v.to(device) for k, v in output.items()}
    fields = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(output).items()}
    return type(output)(**fields)

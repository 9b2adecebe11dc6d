"""The industrial sample format, image reading, bad-input errors and batching.

Every industrial dataset, synthesizer and transform speaks one sample format, a plain ``dict``:

- ``"image"``: ``(H, W, C)`` ``uint8`` numpy array (``C = 1`` for binarised boards, ``2`` when the
  defect-free template is stacked as a second channel, ``3`` for RGB);
- ``"boxes"``: ``(n, 4)`` ``float32`` xyxy pixel boxes (``n`` may be 0: a defect-free board);
- ``"labels"``: ``(n,)`` ``int64`` class ids starting at 0;
- ``"path"``: where the image came from (``str``), and other optional metadata.

:func:`collate` turns a list of samples into ``(images, targets, samples)`` for
:class:`vlsdk.heads.detection.DetectionHead`. Bad input raises :class:`DataError` (a
``ValueError``) naming the file and, where there is one, the line; datasets built with
``on_error="skip"`` record a :class:`Skipped` for each sample they leave out and warn once with
the count.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEEPPCB_CLASSES",
    "DataError",
    "OnError",
    "Skipped",
    "SkipLog",
    "collate",
    "empty_targets",
    "read_image",
]

#: The six DeepPCB defect classes, in label order (DeepPCB's type ``k`` is label ``k - 1``).
DEEPPCB_CLASSES: tuple[str, ...] = ("open", "short", "mousebite", "spur", "copper", "pin-hole")

#: What a dataset does with a bad sample: ``"raise"`` a :class:`DataError` or ``"skip"`` it (counted).
OnError = Literal["raise", "skip"]


class DataError(ValueError):
    """Bad input data, with the file (and line) it was found in.

    Args:
        path: the offending file.
        problem: what is wrong.
        line: 1-based line number in ``path``, when the problem sits on one line.

    Example:
        >>> str(DataError("a/b.txt", "x2 < x1", line=3))
        'a/b.txt:3: x2 < x1'
    """

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path, self.problem, self.line = str(path), problem, line
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Skipped:
    """One sample a dataset left out under ``on_error="skip"``.

    Attributes:
        path: the offending file.
        line: 1-based line in ``path`` or ``None``.
        problem: why it was left out.
    """

    path: str
    line: int | None
    problem: str

    def __str__(self) -> str:
        return str(DataError(self.path, self.problem, self.line))


class SkipLog:
    """Collects :class:`Skipped` records for a dataset and warns once with their count.

    Args:
        on_error: ``"raise"`` makes :meth:`handle` raise the error, ``"skip"`` records it.
        owner: the dataset's name for the warning.
    """

    def __init__(self, on_error: OnError, owner: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error, self.owner = on_error, owner
        self.skipped: list[Skipped] = []

    def handle(self, error: DataError) -> None:
        """Raise ``error`` or record it as skipped."""
        if self.on_error == "raise":
            raise error
        self.skipped.append(Skipped(error.path, error.line, error.problem))

    def warn(self) -> None:
        """Warn once, with the count and the first reasons, if anything was skipped."""
        if self.skipped:
            first = "; ".join(str(s) for s in self.skipped[:3])
            more = f" (and {len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            warnings.warn(f"{self.owner}: skipped {len(self.skipped)} bad sample(s): {first}{more}",
                          stacklevel=3)


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """Read an image file as ``(H, W, channels)`` ``uint8``.

    Args:
        path: image file (any format OpenCV reads).
        channels: 1 (grayscale; colour images are converted) or 3 (RGB).

    Raises:
        DataError: the file is missing or cannot be decoded.
        ValueError: ``channels`` is not 1 or 3.

    Example:
        >>> read_image("missing.jpg")
        Traceback (most recent call last):
        ...
        vlsdk_industrial.samples.DataError: missing.jpg: image file does not exist
    """
    import cv2

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(path, "cannot decode image (corrupt or not an image)")
    if channels == 1:
        return image[..., None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def empty_targets() -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (0, 4) float32, labels (0,) int64)``: the targets of a defect-free board."""
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def collate(samples: Sequence[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """Batch samples for :class:`vlsdk.heads.detection.DetectionHead`.

    Args:
        samples: samples of one image size and channel count.

    Returns:
        ``images`` ``(B, C, H, W)`` float tensor in ``[0, 1]``, ``targets`` (one
        ``{"boxes": (n, 4) float, "labels": (n,) long}`` per image) and the samples themselves.

    Raises:
        ValueError: no samples, or images of different shapes.
    """
    import torch

    if not samples:
        raise ValueError("collate needs at least one sample")
    shapes = {s["image"].shape for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate needs images of one shape (resize them in the transform), got {sorted(shapes)}")
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).float().div_(255)
    targets = [{"boxes": torch.as_tensor(np.asarray(s["boxes"], np.float32).reshape(-1, 4)),
                "labels": torch.as_tensor(np.asarray(s["labels"], np.int64).reshape(-1))} for s in samples]
    return images, targets, list(samples)

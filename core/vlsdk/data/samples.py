"""The generic sample format, image reading, bad-input errors and batching.

Every generic dataset and transform speaks one sample format, a plain ``dict``:

- ``"image"``: ``(H, W, C)`` ``uint8`` numpy array (``C = 1`` grayscale, ``3`` RGB; plugins may
  stack more channels, e.g. a defect-free template);
- ``"boxes"``: ``(n, 4)`` ``float32`` xyxy pixel boxes (``n`` may be 0) and ``"labels"``: ``(n,)``
  ``int64`` class ids starting at 0 (detection), or ``"mask"``: ``(H, W)`` ``int64`` class ids
  (segmentation);
- ``"path"`` (``str``), ``"image_id"``, ``"index"`` and ``"size"``: ``(h, w)`` of the image as
  read, before any transform (results are mapped back to it, see :mod:`vlsdk.data.coco_results`).

:func:`collate` turns a list of detection samples into ``(images, targets, samples)`` for
:class:`vlsdk.heads.detection.DetectionHead`. Bad input raises :class:`DataError` (a
``ValueError``) naming the file, the record (line, annotation id, object index) and the field;
datasets built with ``on_error="skip"`` record a :class:`Skipped` for each sample they leave out
and warn once with the count.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["DataError", "OnError", "SkipLog", "Skipped", "collate", "empty_targets", "read_image"]

#: What a dataset does with a bad sample: ``"raise"`` a :class:`DataError` or ``"skip"`` it (counted).
OnError = Literal["raise", "skip"]

#: Pillow modes :func:`read_image` converts; 16-bit and float images are refused, not clipped.
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                              "LAB", "HSV"})


def _message(path: str, problem: str, line: int | None, record: str | None, field: str | None) -> str:
    where = path if line is None else f"{path}:{line}"
    if field is not None and field not in problem:
        problem = f"{field}: {problem}"
    return f"{where}: {problem}" if record is None else f"{where}: {record}: {problem}"


class DataError(ValueError):
    """Bad input data, with the file, the record and the field it was found in.

    The message reads ``path[:line]: [record: ][field: ]problem`` (the field is written only
    when ``problem`` does not already name it).

    Args:
        path: the offending file.
        problem: what is wrong and what was expected.
        line: 1-based line number in ``path``, when the problem sits on one line.
        record: the record inside the file, e.g. ``"annotation id 7 (index 3)"``.
        field: the field of the record, e.g. ``"bbox"``.

    Example:
        >>> str(DataError("a/b.txt", "x2 < x1", line=3))
        'a/b.txt:3: x2 < x1'
        >>> str(DataError("a.json", "is nan; expected a finite number", record="annotation id 7", field="bbox"))
        'a.json: annotation id 7: bbox: is nan; expected a finite number'
    """

    def __init__(self, path: str | Path, problem: str, line: int | None = None, *, record: str | None = None,
                 field: str | None = None) -> None:
        self.path, self.problem, self.line = str(path), problem, line
        self.record, self.field = record, field
        super().__init__(_message(self.path, problem, line, record, field))


@dataclass(frozen=True)
class Skipped:
    """One sample a dataset left out under ``on_error="skip"``.

    Attributes:
        path: the offending file.
        line: 1-based line in ``path`` or ``None``.
        problem: why it was left out.
        record: the record in the file (``None`` when the line says it).
        field: the offending field, when there is one.
    """

    path: str
    line: int | None
    problem: str
    record: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        return _message(self.path, self.problem, self.line, self.record, self.field)


class SkipLog:
    """Collects :class:`Skipped` records for a dataset and warns once with their count.

    Args:
        on_error: ``"raise"`` makes :meth:`handle` raise the error, ``"skip"`` records it.
        owner: the dataset's name for the warning.

    Raises:
        ValueError: ``on_error`` is neither ``"raise"`` nor ``"skip"``.
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
        self.skipped.append(Skipped(error.path, error.line, error.problem, error.record, error.field))

    def warn(self) -> None:
        """Warn once, with the count and the first reasons, if anything was skipped."""
        if self.skipped:
            first = "; ".join(str(s) for s in self.skipped[:3])
            more = f" (and {len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            warnings.warn(f"{self.owner}: skipped {len(self.skipped)} bad sample(s): {first}{more}",
                          stacklevel=3)


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """Read an 8-bit image file with Pillow as ``(H, W, channels)`` ``uint8``.

    The EXIF orientation is applied. A colour JPEG read with ``channels=1`` is decoded straight to
    its luma, as OpenCV's ``IMREAD_GRAYSCALE`` does (JPEGs come out pixel-identical to OpenCV's);
    other colour images are converted with Pillow's ITU-R 601-2 luma, which may round one grey
    level away from OpenCV's.

    Args:
        path: image file (any format Pillow reads).
        channels: 1 (grayscale; colour images are converted) or 3 (RGB; alpha is dropped).

    Raises:
        DataError: the file is missing, cannot be decoded, or is a 16-bit or float image (those
            are refused rather than clipped to 8 bits).
        ValueError: ``channels`` is not 1 or 3.

    Example:
        >>> read_image("missing.jpg")
        Traceback (most recent call last):
        ...
        vlsdk.data.samples.DataError: missing.jpg: image file does not exist
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file does not exist")
    try:
        with Image.open(path) as image:
            if channels == 1 and image.format == "JPEG":
                image.draft("L", image.size)  # decode the luma only; no scaling at the full size
            if image.mode not in _EIGHT_BIT_MODES:
                raise DataError(path, f"{image.mode} image: only 8-bit images are read (convert it to 8 bits)")
            if (image.info.get("exif") or image.format == "TIFF") and image.getexif().get(0x0112, 1) != 1:
                image = ImageOps.exif_transpose(image)
            pixels = np.array(image.convert("L" if channels == 1 else "RGB"))  # writable, as OpenCV's were
            return pixels.reshape(image.height, image.width, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(path, f"cannot decode image (corrupt or not an image): {exc}") from None


def empty_targets() -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (0, 4) float32, labels (0,) int64)``: the targets of an image without objects."""
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def collate(samples: Sequence[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """Batch detection samples for :class:`vlsdk.heads.detection.DetectionHead`.

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

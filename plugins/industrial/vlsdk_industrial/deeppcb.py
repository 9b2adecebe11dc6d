"""DeepPCB dataset adapter (Tang et al., arXiv:1902.06197), read in place.

Layout (``<root>`` holds ``PCBData/`` or is it)::

    PCBData/trainval.txt, PCBData/test.txt     lines "<group>/<id>/<n>.jpg <group>/<id>_not/<n>.txt"
    PCBData/<group>/<id>/<n>_test.jpg          defective board (binarised, 640 x 640)
    PCBData/<group>/<id>/<n>_temp.jpg          its defect-free template
    PCBData/<group>/<id>_not/<n>.txt           lines "x1 y1 x2 y2 type" (space or comma separated)

``type`` is 1 open, 2 short, 3 mousebite, 4 spur, 5 spurious copper, 6 pin-hole; labels are
``type - 1`` (see :data:`~vlsdk_industrial.samples.DEEPPCB_CLASSES`). An empty annotation file is a
defect-free board. A non-finite value (``nan``, ``inf``) is an error naming the file, the line and
the field. Samples carry ``"image_id"``: the pair's line in the list file (unique, increasing in
dataset order, so COCO output and :class:`~vlsdk.metrics.detection.DetectionMAP` rank ties alike).

Decoding a 640 x 640 JPEG pair costs a few milliseconds a sample, every epoch; ``cache="uint8"``
decodes every pair once and keeps the exact pixels in RAM (0.8 MB a pair with its template),
``cache="packed"`` keeps them binarised and bit-packed (1/8 of that; see :data:`CacheMode`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlsdk_industrial.samples import DEEPPCB_CLASSES, DataError, OnError, SkipLog, read_image

__all__ = ["BINARY_THRESHOLD", "CACHE_MODES", "CacheMode", "DeepPCBDataset", "DeepPCBRecord",
           "parse_deeppcb_annotation", "read_deeppcb_list"]

_SEP = re.compile(r"[,\s]+")

#: How :class:`DeepPCBDataset` keeps decoded images: ``"none"`` decodes the JPEGs in every
#: ``__getitem__``; ``"uint8"`` decodes each pair once when the dataset is built and keeps the exact
#: decoded pixels (samples identical to ``"none"``); ``"packed"`` keeps them thresholded at
#: :data:`BINARY_THRESHOLD` and bit-packed (``np.packbits``, 8x less RAM: the 2,500 DeepPCB images
#: take 128 MB), so pixels come back as exactly 0 or 255: DeepPCB boards are black and white and
#: the other grey levels are JPEG ringing (levels within a few steps of 0 or 255 are snapped to it;
#: about 0.06 % of pixels are mid-grey). Samples then differ from ``"none"`` by that ringing.
CacheMode = Literal["none", "uint8", "packed"]
CACHE_MODES: tuple[str, ...] = ("none", "uint8", "packed")

#: ``"packed"`` cache: a pixel is white when its decoded grey level is above this.
BINARY_THRESHOLD = 127


@dataclass(frozen=True)
class DeepPCBRecord:
    """One DeepPCB pair as listed and annotated (images are read lazily).

    Attributes:
        image: the defective image ``<n>_test.jpg``.
        template: the template ``<n>_temp.jpg``.
        annotation: the ``<n>.txt`` annotation file.
        boxes: ``(n, 4)`` float32 xyxy pixels.
        labels: ``(n,)`` int64, ``type - 1``.
        lines: ``(n,)`` 1-based line of each box in ``annotation``.
        list_line: the pair's 1-based line in the list file (its ``image_id``).
    """

    image: Path
    template: Path
    annotation: Path
    boxes: np.ndarray
    labels: np.ndarray
    lines: np.ndarray
    list_line: int = 0


def parse_deeppcb_annotation(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a DeepPCB annotation file.

    Args:
        path: ``<n>.txt`` with lines ``x1 y1 x2 y2 type`` (space or comma separated); blank lines
            are ignored, an empty file is a defect-free board.

    Returns:
        ``boxes (n, 4) float32``, ``labels (n,) int64`` (``type - 1``) and the 1-based ``lines (n,)``.

    Raises:
        DataError: naming the file and line, for a line that is not five numbers, a non-finite
            value (naming the field), an unknown type, or a box with ``x2 <= x1`` or ``y2 <= y1``
            or negative coordinates.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read annotation file: {exc}") from None
    rows, lines = [], []
    for i, raw in enumerate(text.splitlines(), 1):
        raw = raw.strip()
        if not raw:
            continue
        fields = _SEP.split(raw)
        if len(fields) != 5:
            raise DataError(path, f"expected 'x1 y1 x2 y2 type', got {raw!r}", i)
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise DataError(path, f"expected five numbers, got {raw!r}", i) from None
        rows.append(values)
        lines.append(i)
    if not rows:
        boxes, types = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        return boxes, types, np.zeros((0,), np.int64)
    table = np.asarray(rows, np.float64)
    lines_arr = np.asarray(lines, np.int64)
    finite = np.isfinite(table)
    if not finite.all():
        k, j = (int(v[0]) for v in np.nonzero(~finite))
        field = ("x1", "y1", "x2", "y2", "type")[j]
        raise DataError(path, f"{field} is {table[k, j]}; expected a finite number", int(lines_arr[k]), field=field)
    boxes, types = table[:, :4], table[:, 4]
    bad_type = (types != np.round(types)) | (types < 1) | (types > len(DEEPPCB_CLASSES))
    if bad_type.any():
        k = int(np.argmax(bad_type))
        raise DataError(path, f"unknown defect type {types[k]:g}; expected 1..{len(DEEPPCB_CLASSES)} "
                              f"({', '.join(DEEPPCB_CLASSES)})", int(lines_arr[k]))
    checks = (((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]), "empty box: expected x2 > x1 and y2 > y1"),
              ((boxes < 0).any(1), "box outside the image: negative coordinate"))
    for bad, problem in checks:
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(path, f"{problem}, got {boxes[k].tolist()}", int(lines_arr[k]))
    return boxes.astype(np.float32), types.astype(np.int64) - 1, lines_arr


def read_deeppcb_list(list_file: str | Path) -> list[tuple[int, Path, Path, Path]]:
    """Read a DeepPCB split list.

    Args:
        list_file: ``trainval.txt`` / ``test.txt``; paths in it are relative to its folder.

    Returns:
        ``(line, image, template, annotation)`` per listed pair (files not checked).

    Raises:
        DataError: the list is missing, or a line is not two paths ending ``.jpg`` and ``.txt``.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(list_file, "DeepPCB list file does not exist")
    base = list_file.parent
    out = []
    for i, raw in enumerate(list_file.read_text().splitlines(), 1):
        raw = raw.strip()
        if not raw:
            continue
        fields = raw.split()
        if len(fields) != 2 or not fields[0].endswith(".jpg") or not fields[1].endswith(".txt"):
            raise DataError(list_file, f"expected '<group>/<id>/<n>.jpg <group>/<id>_not/<n>.txt', got {raw!r}", i)
        stem = base / fields[0][: -len(".jpg")]
        out.append((i, stem.with_name(stem.name + "_test.jpg"), stem.with_name(stem.name + "_temp.jpg"),
                    base / fields[1]))
    return out


class DeepPCBDataset:
    """DeepPCB pairs as samples (see :mod:`vlsdk.data.samples`).

    Annotations and file existence are checked when the dataset is built; images are decoded in
    ``__getitem__`` (or all at once with ``check_images=True``). Each sample has ``"image"``
    ``(640, 640, 1)`` (``(640, 640, 2)`` with ``template=True``: channel 0 the defective board,
    channel 1 its template), ``"boxes"``, ``"labels"``, ``"path"`` and ``"template_path"``.

    Args:
        root: the DeepPCB folder (holding ``PCBData/``) or ``PCBData`` itself.
        split: ``"trainval"``, ``"test"`` or the path of a list file in the same format.
        template: stack the defect-free template as a second channel.
        transform: ``transform(sample) -> sample`` applied last (e.g.
            :func:`vlsdk_industrial.transforms.build_transforms`).
        on_error: ``"raise"`` a :class:`DataError` naming file and line, or ``"skip"`` the pair
            (recorded in :attr:`skipped`, one warning with the count).
        check_images: decode every image now, so unreadable images, templates of another size and
            boxes outside the image are found (and skipped) before training rather than mid-epoch.
        max_samples: keep only the first ``max_samples`` listed pairs (quick runs).
        cache: one of :data:`CACHE_MODES` (see :data:`CacheMode`). A cache decodes every image
            when the dataset is built (so it checks images as ``check_images`` does) and serves
            read-only views of it: a transform must not write into ``sample["image"]`` in place.
            DataLoader workers started by ``fork`` (Linux' default) share the cache copy-on-write;
            under ``spawn`` each worker receives its own copy.

    Example:
        >>> ds = DeepPCBDataset("../shared/data/deeppcb", "test", template=True)  # doctest: +SKIP
        >>> ds[0]["image"].shape  # doctest: +SKIP
        (640, 640, 2)
    """

    classes: tuple[str, ...] = DEEPPCB_CLASSES

    def __init__(self, root: str | Path, split: str | Path = "trainval", *, template: bool = False,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None, on_error: OnError = "raise",
                 check_images: bool = False, max_samples: int | None = None, cache: CacheMode = "none") -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"DeepPCB root {str(root)!r} is not a folder")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable, got {type(transform).__name__}")
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        data = root / "PCBData" if (root / "PCBData").is_dir() else root
        if str(split) in ("trainval", "test"):
            list_file = data / f"{split}.txt"
        else:
            list_file = Path(split)
        self.root, self.list_file, self.template, self.transform = data, list_file, template, transform
        self.cache: CacheMode = cache
        self._cached: list[np.ndarray] = []  # per record: the image (uint8) or its packed bits
        self._shapes: list[tuple[int, ...]] = []  # per record: the image's shape (to unpack)
        log = SkipLog(on_error, f"DeepPCB {list_file}")
        entries = read_deeppcb_list(list_file)
        if max_samples is not None:
            entries = entries[:max_samples]
        self.records: list[DeepPCBRecord] = []
        for line, image, temp, ann in entries:
            try:
                for path, what in ((image, "image"), (temp, "template"), (ann, "annotation")):
                    if not path.is_file():
                        raise DataError(list_file, f"listed {what} {str(path)!r} does not exist", line)
                record = DeepPCBRecord(image, temp, ann, *parse_deeppcb_annotation(ann), list_line=line)
                if check_images or cache != "none":
                    self._store(self._load(record))
            except DataError as exc:
                log.handle(exc)
                continue
            self.records.append(record)
        self.skipped = log.skipped
        log.warn()

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, record: DeepPCBRecord) -> np.ndarray:
        image = read_image(record.image)
        h, w = image.shape[:2]
        out = (record.boxes[:, 2] > w) | (record.boxes[:, 3] > h)
        if out.any():
            k = int(np.argmax(out))
            raise DataError(record.annotation, f"box outside the {w}x{h} image {record.image.name}: "
                                               f"{record.boxes[k].tolist()}", int(record.lines[k]))
        if not self.template:
            return image
        temp = read_image(record.template)
        if temp.shape != image.shape:
            raise DataError(record.template, f"template is {temp.shape[1]}x{temp.shape[0]} but its image "
                                             f"{record.image.name} is {w}x{h}")
        return np.concatenate((image, temp), axis=-1)

    def _store(self, image: np.ndarray) -> None:
        if self.cache == "none":
            return
        self._shapes.append(image.shape)
        kept = image if self.cache == "uint8" else np.packbits(image > BINARY_THRESHOLD)
        kept.flags.writeable = False
        self._cached.append(kept)

    def _image(self, index: int) -> np.ndarray:
        if self.cache == "none":
            return self._load(self.records[index])
        if self.cache == "uint8":
            return self._cached[index]
        shape = self._shapes[index]
        bits = np.unpackbits(self._cached[index], count=int(np.prod(shape)))
        bits *= 255
        return bits.reshape(shape)

    @property
    def cache_bytes(self) -> int:
        """RAM held by the image cache (0 with ``cache="none"``)."""
        return sum(a.nbytes for a in self._cached)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample at ``index`` (``image_id``: the pair's line in the list file; ``size``: ``(H, W)``).

        Raises:
            DataError: an unreadable image, or a box outside it.
        """
        record = self.records[index]
        image = self._image(index)
        sample = {"image": image, "boxes": record.boxes.copy(), "labels": record.labels.copy(),
                  "path": str(record.image), "template_path": str(record.template), "image_id": record.list_line,
                  "index": index, "size": image.shape[:2]}
        return self.transform(sample) if self.transform is not None else sample

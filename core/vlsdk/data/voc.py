"""Pascal VOC XML detection reader (what most labelling tools export; PKU-Market-PCB's layout too).

Finds every ``*.xml`` under ``<root>/Annotations`` (or under ``root``), recursively, so both the
flat VOC layout (``Annotations/*.xml`` + ``JPEGImages/*.jpg``) and the PKU-Market-PCB layout
(``Annotations/<Class>/*.xml`` + ``images/<Class>/*.jpg``) work. Boxes are read as written
(``xmin ymin xmax ymax`` pixels). Errors name the XML file, the line of the offending element and
the field; a non-finite coordinate or size (``nan``, ``inf``) is an error like any other bad value.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.parsers import expat

import numpy as np

from vlsdk.data.samples import DataError, OnError, SkipLog, read_image

__all__ = ["VOCDataset", "VOCRecord", "parse_voc_xml"]

_COORDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VOCRecord:
    """One parsed VOC annotation.

    Attributes:
        xml: the annotation file.
        filename: ``<filename>`` (or ``<path>``) as written.
        size: ``(width, height)`` from ``<size>`` or ``None``.
        names: class name of each object.
        boxes: ``(n, 4)`` float32 xyxy.
        lines: line of each ``<object>`` element.
        difficult: ``(n,)`` bool.
    """

    xml: Path
    filename: str
    size: tuple[int, int] | None
    names: list[str]
    boxes: np.ndarray
    lines: np.ndarray
    difficult: np.ndarray


def _parse_with_lines(path: Path) -> tuple[ET.Element, dict[int, int]]:
    """Parse XML keeping each element's line (``id(element) -> line``)."""
    parser = expat.ParserCreate()
    stack: list[ET.Element] = []
    lines: dict[int, int] = {}
    root: list[ET.Element] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        el = ET.Element(name, attrs)
        lines[id(el)] = parser.CurrentLineNumber
        (stack[-1].append(el) if stack else root.append(el))
        stack.append(el)

    def end(name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text = (stack[-1].text or "") + data

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as exc:
        raise DataError(path, f"malformed XML: {expat.errors.messages[exc.code]}", exc.lineno) from None
    except OSError as exc:
        raise DataError(path, f"cannot read annotation file: {exc}") from None
    return root[0], lines


def _pixels(path: Path, text: str, field: str, line: int | None) -> int:
    """A ``<size>`` value: a finite, positive whole number of pixels."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not np.isfinite(value) or value <= 0 or value != int(value):
        raise DataError(path, f"<size> <{field}> must be a positive whole number of pixels, got {text.strip()!r}",
                        line, field=field)
    return int(value)


def parse_voc_xml(path: str | Path) -> VOCRecord:
    """Parse one VOC annotation file.

    Args:
        path: the ``.xml`` file.

    Raises:
        DataError: naming the file, the line and the field, for malformed XML, an ``<object>``
            without a name or a complete numeric ``<bndbox>``, a non-finite coordinate, a box with
            ``xmax <= xmin`` or ``ymax <= ymin``, or a ``<size>`` that is not a positive whole number.
    """
    path = Path(path)
    root, lines = _parse_with_lines(path)
    line = lambda el: lines.get(id(el))  # noqa: E731
    filename = (root.findtext("filename") or root.findtext("path") or "").strip()
    if not filename:
        raise DataError(path, "no <filename> or <path>: cannot find the image", line(root))
    size = None
    size_el = root.find("size")
    if size_el is not None:
        size = tuple(_pixels(path, size_el.findtext(k, ""), k, line(size_el)) for k in ("width", "height"))
    names, rows, obj_lines, difficult = [], [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(path, "<object> without a <name>", line(obj))
        box = obj.find("bndbox")
        if box is None:
            raise DataError(path, f"<object> {name!r} without a <bndbox>", line(obj))
        try:
            rows.append([float(box.findtext(k, "")) for k in _COORDS])
        except ValueError:
            raise DataError(path, f"<bndbox> of {name!r} needs numeric xmin, ymin, xmax, ymax", line(box)) from None
        names.append(name)
        obj_lines.append(line(obj) or 0)
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    boxes = np.asarray(rows, np.float64).reshape(-1, 4)
    finite = np.isfinite(boxes)
    if not finite.all():
        k, j = (int(v[0]) for v in np.nonzero(~finite))
        raise DataError(path, f"object {k} {names[k]!r}: <bndbox> {_COORDS[j]} is {boxes[k, j]}; expected a finite "
                              "number", obj_lines[k], field=_COORDS[j])
    boxes = boxes.astype(np.float32)
    bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(path, f"empty box: expected xmax > xmin and ymax > ymin, got {boxes[k].tolist()}",
                        obj_lines[k])
    return VOCRecord(path, filename, size, names, boxes, np.asarray(obj_lines, np.int64), np.asarray(difficult, bool))


class VOCDataset:
    """Pascal VOC XML annotations as samples (see :mod:`vlsdk.data.samples`).

    Args:
        root: the dataset folder (``Annotations/`` inside it is used when present).
        classes: class names in label order, or a mapping ``name -> class name`` to merge names
            into ``target_classes`` (e.g. ``vlsdk_industrial.voc.PKU_MARKET_PCB_TO_DEEPPCB``); default: every name
            found, sorted.
        target_classes: label order when ``classes`` is a mapping (default the mapping's values,
            in first-seen order).
        image_dirs: folders to look for images in, in order (default ``JPEGImages``, ``images``,
            the root and the XML's own folder; a class subfolder of the XML is tried in each).
        channels: 1 (grayscale) or 3 (RGB).
        transform: ``transform(sample) -> sample``.
        on_error: ``"raise"`` or ``"skip"`` bad files (counted in :attr:`skipped`, one warning).
        keep_difficult: keep objects marked ``<difficult>1</difficult>`` (otherwise they are
            counted in :attr:`num_difficult` and left out).
        case_insensitive: match class names ignoring case.

    Raises:
        DataError: a bad annotation file or object (with ``on_error="raise"``).
        ValueError: bad arguments, or no ``.xml`` files under ``root``.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | Mapping[str, str] | None = None, *,
                 target_classes: Sequence[str] | None = None, image_dirs: Sequence[str | Path] | None = None,
                 channels: int = 1, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 on_error: OnError = "raise", keep_difficult: bool = True, case_insensitive: bool = True) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"VOC root {str(root)!r} is not a folder")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        ann_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
        xmls = sorted(ann_dir.rglob("*.xml"))
        if not xmls:
            raise ValueError(f"no .xml annotation files under {ann_dir}")
        norm = (lambda s: s.lower()) if case_insensitive else (lambda s: s)
        self.root, self.channels, self.transform = root, channels, transform
        dirs = [Path(d) for d in image_dirs] if image_dirs is not None else [root / "JPEGImages", root / "images", root]
        log = SkipLog(on_error, f"VOC {root}")
        parsed: list[VOCRecord] = []
        for xml in xmls:
            try:
                parsed.append(parse_voc_xml(xml))
            except DataError as exc:
                log.handle(exc)
        if isinstance(classes, Mapping):
            mapping = {norm(k): v for k, v in classes.items()}
            order = list(target_classes) if target_classes is not None else list(dict.fromkeys(classes.values()))
            missing = sorted(set(mapping.values()) - set(order))
            if missing:
                raise ValueError(f"classes maps to {missing}, which target_classes {order} lacks")
            label_of = {k: order.index(v) for k, v in mapping.items()}
        else:
            order = list(classes) if classes is not None else sorted({norm(n) for r in parsed for n in r.names})
            label_of = {norm(c): i for i, c in enumerate(order)}
        self.classes: tuple[str, ...] = tuple(order)
        self.samples: list[tuple[VOCRecord, Path, np.ndarray, np.ndarray]] = []
        self.num_difficult = 0
        for rec in parsed:
            try:
                labels = np.asarray([label_of.get(norm(n), -1) for n in rec.names], np.int64)
                if (labels < 0).any():
                    k = int(np.argmax(labels < 0))
                    raise DataError(rec.xml, f"unknown class {rec.names[k]!r}; known: {sorted(label_of)}",
                                    int(rec.lines[k]))
                keep = np.ones(len(labels), bool) if keep_difficult else ~rec.difficult
                self.num_difficult += int((~keep).sum())
                self.samples.append((rec, self._find_image(rec, ann_dir, dirs), rec.boxes[keep], labels[keep]))
            except DataError as exc:
                log.handle(exc)
        self.skipped = log.skipped
        log.warn()

    @staticmethod
    def _find_image(rec: VOCRecord, ann_dir: Path, dirs: list[Path]) -> Path:
        name = Path(rec.filename.replace("\\", "/"))
        sub = rec.xml.parent.relative_to(ann_dir)
        candidates = [name] if name.is_absolute() else []
        for d in [*dirs, rec.xml.parent]:
            candidates += [d / sub / name.name, d / name.name, d / name]
        for c in candidates:
            if c.is_file():
                return c
        raise DataError(rec.xml, f"image {rec.filename!r} not found (looked in {', '.join(str(d) for d in dirs)})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample at ``index`` (``image_id`` is the index).

        Raises:
            DataError: the image is unreadable or a box lies outside it.
        """
        rec, image_path, boxes, labels = self.samples[index]
        image = read_image(image_path, self.channels)
        h, w = image.shape[:2]
        out = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > w) | (boxes[:, 3] > h)
        if out.any():
            k = int(np.argmax(out))
            raise DataError(rec.xml, f"box outside the {w}x{h} image: {boxes[k].tolist()}", int(rec.lines[k]))
        sample = {"image": image, "boxes": boxes.copy(), "labels": labels.copy(), "path": str(image_path),
                  "annotation": str(rec.xml), "image_id": index, "index": index, "size": (h, w)}
        return self.transform(sample) if self.transform is not None else sample

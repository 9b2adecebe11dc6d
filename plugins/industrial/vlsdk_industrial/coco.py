"""COCO JSON detection reader (``images``, ``annotations`` with ``bbox = [x, y, w, h]``, ``categories``).

Categories are sorted by id and become labels ``0..K-1``. Crowd annotations (``iscrowd = 1``)
mark regions to ignore, which the detection losses and metrics here do not model: they are left
out and counted in :attr:`COCODataset.num_crowd`. Errors name the JSON file and the annotation
(by id and list index), since JSON has no useful line numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlsdk_industrial.samples import DataError, OnError, SkipLog, read_image

__all__ = ["COCODataset"]


class COCODataset:
    """A COCO-format detection file as industrial samples (see :mod:`vlsdk_industrial.samples`).

    Args:
        annotation_file: the ``.json`` file.
        image_dir: folder the images' ``file_name`` is relative to (default the JSON's folder).
        channels: 1 (grayscale) or 3 (RGB).
        transform: ``transform(sample) -> sample``.
        on_error: ``"raise"`` a :class:`DataError` or ``"skip"`` the image of a bad annotation
            (counted in :attr:`skipped`, one warning).
        include_empty: keep images without annotations (defect-free boards).
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path | None = None, *, channels: int = 1,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None, on_error: OnError = "raise",
                 include_empty: bool = True) -> None:
        path = Path(annotation_file)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(path, "COCO annotation file does not exist") from None
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON: {exc.msg}", exc.lineno) from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in
                                                 ("images", "annotations", "categories")):
            raise DataError(path, "expected a JSON object with lists 'images', 'annotations' and 'categories'")
        self.path, self.channels, self.transform = path, channels, transform
        self.image_dir = Path(image_dir) if image_dir is not None else path.parent
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.classes: tuple[str, ...] = tuple(str(c.get("name", c["id"])) for c in cats)
        label_of = {c["id"]: i for i, c in enumerate(cats)}
        images = {im["id"]: im for im in data["images"]}
        log = SkipLog(on_error, f"COCO {path}")
        per_image: dict[Any, list[tuple[list[float], int]]] = {i: [] for i in images}
        bad_images: set[Any] = set()
        self.num_crowd = 0
        for k, ann in enumerate(data["annotations"]):
            where = f"annotation id {ann.get('id')!r} (index {k})"
            try:
                if ann.get("image_id") not in images:
                    raise DataError(path, f"{where}: unknown image_id {ann.get('image_id')!r}")
                if ann.get("category_id") not in label_of:
                    raise DataError(path, f"{where}: unknown category_id {ann.get('category_id')!r}; "
                                          f"known: {sorted(label_of)}")
                bbox = ann.get("bbox")
                if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                    raise DataError(path, f"{where}: bbox must be [x, y, w, h] numbers, got {bbox!r}")
                x, y, w, h = (float(v) for v in bbox)
                if w <= 0 or h <= 0:
                    raise DataError(path, f"{where}: empty box (w, h) = ({w:g}, {h:g})")
                im = images[ann["image_id"]]
                iw, ih = im.get("width"), im.get("height")
                if x < 0 or y < 0 or (iw is not None and x + w > iw) or (ih is not None and y + h > ih):
                    raise DataError(path, f"{where}: box {bbox} outside the {iw}x{ih} image")
            except DataError as exc:
                log.handle(exc)
                bad_images.add(ann.get("image_id"))
                continue
            if ann.get("iscrowd", 0):
                self.num_crowd += 1
                continue
            per_image[ann["image_id"]].append(([x, y, x + w, y + h], label_of[ann["category_id"]]))
        self.samples: list[tuple[Path, np.ndarray, np.ndarray, Any]] = []
        for image_id, im in images.items():
            if image_id in bad_images or (not include_empty and not per_image[image_id]):
                continue
            rows = per_image[image_id]
            boxes = np.asarray([r[0] for r in rows], np.float32).reshape(-1, 4)
            labels = np.asarray([r[1] for r in rows], np.int64)
            self.samples.append((self.image_dir / im["file_name"], boxes, labels, image_id))
        self.skipped = log.skipped
        log.warn()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample at ``index`` (raises :class:`DataError` for a missing or unreadable image)."""
        image_path, boxes, labels, image_id = self.samples[index]
        sample = {"image": read_image(image_path, self.channels), "boxes": boxes.copy(), "labels": labels.copy(),
                  "path": str(image_path), "image_id": image_id, "index": index}
        return self.transform(sample) if self.transform is not None else sample

"""COCO JSON detection reader (``images``, ``annotations`` with ``bbox = [x, y, w, h]``, ``categories``).

Categories are sorted by id and become labels ``0..K-1`` (:attr:`COCODataset.category_ids` keeps
the original ids). Crowd annotations (``iscrowd = 1``) mark regions to ignore, which the detection
losses and metrics here do not model: they are left out and counted in
:attr:`COCODataset.num_crowd`. Errors name the JSON file, the record (``annotation id 7 (index
3)``, ``image id 10 (index 0)``) and the field, since JSON has no useful line numbers.

What is checked: image, annotation and category ids are unique (integers or strings; category ids
integers), ``bbox`` is four finite numbers with ``w, h > 0`` inside the image, ``width`` and
``height`` are finite and positive, ``category_id`` and ``image_id`` exist, ``iscrowd`` is 0 or
1. A repeated id or a bad category is always an error; a bad image or annotation is skipped
(with its image) under ``on_error="skip"``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlsdk.data.samples import DataError, OnError, SkipLog, read_image

__all__ = ["COCODataset"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _unique_ids(path: Path, items: list[Any], kind: str, integer: bool = False) -> list[Any]:
    """The ``id`` of every object in ``items``; wrong types and repeats are errors (never skipped)."""
    ids = []
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(path, f"expected a JSON object, got {type(item).__name__}", record=f"{kind} index {k}")
        value = item.get("id")
        if not _is_id(value) or (integer and isinstance(value, str)):
            raise DataError(path, f"id must be {'an integer' if integer else 'an integer or a string'}, got {value!r}",
                            record=f"{kind} index {k}", field="id")
        ids.append(value)
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        at = [k for k, i in enumerate(ids) if i == repeated[0]]
        raise DataError(path, f"{kind} id {repeated[0]!r} appears {len(at)} times (indexes {at}); "
                              f"{kind} ids must be unique", field="id")
    return ids


class COCODataset:
    """A COCO-format detection file as samples (see :mod:`vlsdk.data.samples`).

    Give either ``annotation_file`` (and optionally ``image_dir``), or, as a config does,
    ``root`` with ``annotations`` and ``images`` relative to it.

    Args:
        annotation_file: the ``.json`` file.
        image_dir: folder the images' ``file_name`` is relative to (default the JSON's folder).
        root: dataset folder that ``annotations`` and ``images`` are relative to.
        annotations: the JSON file, relative to ``root`` (default ``"annotations.json"``).
        images: the image folder, relative to ``root`` (default ``root`` itself).
        channels: 1 (grayscale) or 3 (RGB).
        transform: ``transform(sample) -> sample``.
        on_error: ``"raise"`` a :class:`DataError` or ``"skip"`` the image of a bad image record or
            annotation (counted in :attr:`skipped`, one warning).
        include_empty: keep images without annotations.

    Raises:
        DataError: the file is missing or malformed, or a record is bad (see the module).
        ValueError: bad arguments.

    Example:
        >>> ds = COCODataset(root="data/boards", annotations="annotations.json", images="images")  # doctest: +SKIP
        >>> ds[0]["boxes"].shape  # doctest: +SKIP
        (3, 4)
    """

    def __init__(self, annotation_file: str | Path | None = None, image_dir: str | Path | None = None, *,
                 root: str | Path | None = None, annotations: str | Path | None = None,
                 images: str | Path | None = None, channels: int = 1,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None, on_error: OnError = "raise",
                 include_empty: bool = True) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if annotation_file is not None and (root is not None or annotations is not None):
            raise ValueError("give annotation_file, or root= with annotations=, not both")
        if image_dir is not None and images is not None:
            raise ValueError("give image_dir or images=, not both")
        if annotation_file is None and root is None and annotations is None:
            raise ValueError("COCODataset needs annotation_file, or root= (with annotations=, default "
                             "'annotations.json')")
        base = Path(root) if root is not None else None
        if annotation_file is not None:
            path = Path(annotation_file)
        else:
            name = Path(annotations if annotations is not None else "annotations.json")
            path = base / name if base is not None else name
        folder = image_dir if image_dir is not None else images
        if folder is None:
            self.image_dir = base if base is not None else path.parent
        else:
            self.image_dir = base / folder if base is not None and images is not None else Path(folder)
        self.path, self.channels, self.transform = path, channels, transform
        data = self._load(path)
        log = SkipLog(on_error, f"COCO {path}")

        cats = data["categories"]
        cat_ids = _unique_ids(path, cats, "category", integer=True)
        order = np.argsort(cat_ids, kind="stable")
        for k in order:
            name = cats[k].get("name", cat_ids[k])
            if not isinstance(name, (str, int)) or isinstance(name, bool):
                raise DataError(path, f"expected a string, got {name!r}", record=f"category id {cat_ids[k]!r}",
                                field="name")
        self.category_ids: tuple[int, ...] = tuple(cat_ids[k] for k in order)
        self.classes: tuple[str, ...] = tuple(str(cats[k].get("name", cat_ids[k])) for k in order)
        label_of = {c: i for i, c in enumerate(self.category_ids)}

        image_ids = _unique_ids(path, data["images"], "image")
        index_of = {i: k for k, i in enumerate(image_ids)}
        sizes = np.full((len(image_ids), 2), np.inf)  # (width, height); inf when not given
        bad_image = np.zeros(len(image_ids), bool)
        for k, im in enumerate(data["images"]):
            try:
                sizes[k] = self._image_size(path, im, f"image id {image_ids[k]!r} (index {k})")
            except DataError as exc:
                log.handle(exc)
                bad_image[k] = True

        rows, bboxes = self._annotation_rows(path, data["annotations"], index_of, label_of, log, bad_image)
        box = np.asarray(bboxes, np.float64).reshape(-1, 4)
        box[:, 2:] += box[:, :2]  # xywh -> xyxy
        image_of, label, crowd, ann_ids = (rows[f] for f in ("image", "label", "crowd", "ann"))
        wh = sizes[image_of]
        checks = ((~np.isfinite(box).all(1), "bbox must be four finite numbers [x, y, w, h], got {bbox}"),
                  ((box[:, 2] <= box[:, 0]) | (box[:, 3] <= box[:, 1]), "empty box: expected w > 0 and h > 0, "
                                                                       "got bbox {bbox}"),
                  ((box[:, :2] < 0).any(1) | (box[:, 2] > wh[:, 0]) | (box[:, 3] > wh[:, 1]),
                   "bbox {bbox} is outside the {size} image"))
        ok = np.ones(len(box), bool)
        for bad, problem in checks:
            for r in np.flatnonzero(bad & ok):  # only the bad rows: error reporting, not the hot path
                w, h = sizes[image_of[r]]
                text = problem.format(bbox=bboxes[r], size=f"{w:g}x{h:g}")
                log.handle(DataError(path, text, record=f"annotation id {ann_ids[r]!r} (index {rows['index'][r]})",
                                     field="bbox"))
                bad_image[image_of[r]] = True
            ok &= ~bad
        self.num_crowd = int((ok & crowd).sum())
        keep = ok & ~crowd
        order = np.argsort(image_of[keep], kind="stable")
        counts = np.bincount(image_of[keep], minlength=len(image_ids))
        split = np.cumsum(counts)[:-1]
        per_boxes = np.split(box[keep][order].astype(np.float32), split)
        per_labels = np.split(label[keep][order], split)
        per_ids = np.split(ann_ids[keep][order], split)
        self.samples: list[tuple[Path, np.ndarray, np.ndarray, Any, np.ndarray, np.ndarray]] = [
            (self.image_dir / data["images"][k]["file_name"], per_boxes[k], per_labels[k], image_ids[k], sizes[k],
             per_ids[k])
            for k in range(len(image_ids)) if not bad_image[k] and (include_empty or counts[k])]
        self.skipped = log.skipped
        log.warn()

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(path, "COCO annotation file does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(path, f"cannot read COCO annotation file: {exc}") from None
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON: {exc.msg}", exc.lineno) from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in
                                                 ("images", "annotations", "categories")):
            raise DataError(path, "expected a JSON object with lists 'images', 'annotations' and 'categories'")
        return data

    @staticmethod
    def _image_size(path: Path, im: dict[str, Any], record: str) -> tuple[float, float]:
        name = im.get("file_name")
        if not isinstance(name, str) or not name:
            raise DataError(path, f"expected the image's file name (a string), got {name!r}", record=record,
                            field="file_name")
        out = []
        for key in ("width", "height"):
            value = im.get(key)
            if value is None:
                out.append(np.inf)
            elif not _is_number(value) or not np.isfinite(value) or value <= 0:
                raise DataError(path, f"expected a finite positive number of pixels, got {value!r}", record=record,
                                field=key)
            else:
                out.append(float(value))
        return out[0], out[1]

    @staticmethod
    def _annotation_rows(path: Path, anns: list[Any], index_of: dict[Any, int], label_of: dict[int, int],
                         log: SkipLog, bad_image: np.ndarray) -> tuple[dict[str, np.ndarray], list[list[float]]]:
        """Type checks per annotation (JSON values); the numeric checks run on arrays afterwards."""
        cols: dict[str, list[Any]] = {"index": [], "image": [], "label": [], "crowd": [], "ann": []}
        bboxes: list[list[float]] = []
        ids = [a.get("id") if isinstance(a, dict) else None for a in anns]
        given = [i for i in ids if i is not None]
        repeated = [i for i, n in Counter(i for i in given if _is_id(i)).items() if n > 1]
        if repeated:
            at = [k for k, i in enumerate(ids) if i == repeated[0]]
            raise DataError(path, f"annotation id {repeated[0]!r} appears {len(at)} times (indexes {at}); "
                                  "annotation ids must be unique", field="id")
        for k, ann in enumerate(anns):
            record = f"annotation id {ids[k]!r} (index {k})"
            image = ann.get("image_id") if isinstance(ann, dict) else None
            try:
                if not isinstance(ann, dict):
                    raise DataError(path, f"expected a JSON object, got {type(ann).__name__}", record=record)
                if ids[k] is not None and not _is_id(ids[k]):
                    raise DataError(path, f"id must be an integer or a string, got {ids[k]!r}", record=record,
                                    field="id")
                if not _is_id(image) or image not in index_of:
                    raise DataError(path, f"unknown image_id {image!r}", record=record, field="image_id")
                cat = ann.get("category_id")
                if not _is_id(cat) or cat not in label_of:
                    raise DataError(path, f"unknown category_id {cat!r}; known: {sorted(label_of)}", record=record,
                                    field="category_id")
                bbox = ann.get("bbox")
                if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                    raise DataError(path, f"bbox must be [x, y, w, h] numbers, got {bbox!r}", record=record,
                                    field="bbox")
                crowd = ann.get("iscrowd", 0)
                if crowd not in (0, 1) or isinstance(crowd, float):
                    raise DataError(path, f"iscrowd must be 0 or 1, got {crowd!r}", record=record, field="iscrowd")
            except DataError as exc:
                log.handle(exc)
                if _is_id(image) and image in index_of:
                    bad_image[index_of[image]] = True
                continue
            for key, value in (("index", k), ("image", index_of[image]), ("label", label_of[cat]),
                               ("crowd", bool(crowd)), ("ann", ids[k])):
                cols[key].append(value)
            bboxes.append(bbox)
        rows = {k: np.asarray(v, dtype=object if k == "ann" else None) for k, v in cols.items()}
        rows["image"], rows["label"] = rows["image"].astype(np.int64), rows["label"].astype(np.int64)
        rows["index"], rows["crowd"] = rows["index"].astype(np.int64), rows["crowd"].astype(bool)
        return rows, bboxes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample at ``index``.

        Raises:
            DataError: the image is missing or unreadable, its size differs from the JSON's
                ``width``/``height``, or (without them) a box lies outside it.
        """
        image_path, boxes, labels, image_id, (w, h), ann_ids = self.samples[index]
        image = read_image(image_path, self.channels)
        ih, iw = image.shape[:2]
        record = f"image id {image_id!r}"
        if (np.isfinite(w) and w != iw) or (np.isfinite(h) and h != ih):
            raise DataError(self.path, f"says {w:g}x{h:g} but {image_path} is {iw}x{ih}", record=record,
                            field="width/height")
        out = (boxes[:, 2] > iw) | (boxes[:, 3] > ih)
        if out.any():
            k = int(np.argmax(out))
            raise DataError(self.path, f"box {boxes[k].tolist()} (xyxy) is outside the {iw}x{ih} image {image_path}",
                            record=f"annotation id {ann_ids[k]!r}", field="bbox")
        sample = {"image": image, "boxes": boxes.copy(), "labels": labels.copy(), "path": str(image_path),
                  "image_id": image_id, "index": index, "size": (ih, iw)}
        return self.transform(sample) if self.transform is not None else sample

"""Standard COCO output for any detection dataset, and pycocotools' COCOeval on it.

- :func:`coco_results`: predictions -> the COCO results JSON (``image_id``, ``category_id``,
  ``bbox = [x, y, w, h]`` in the pixels of the image as read, ``score``), which
  ``pycocotools.coco.COCO.loadRes`` loads;
- :func:`coco_ground_truth`: a detection dataset (COCO, VOC, DeepPCB, ...) or its samples -> a
  COCO ground-truth dict (what the dataset yields: crowd regions a reader left out are not in it);
- :func:`cocoeval_summary`: run ``COCOeval`` (``bbox``) and name its 12 stats.

Image ids are each sample's ``"image_id"`` (an int or a string; its ``"index"`` when it has none);
category ids are ``label + 1`` unless ``category_ids`` maps labels to others (pass a COCO dataset's
:attr:`~vlsdk.data.coco.COCODataset.category_ids` to both functions to keep its own ids). Boxes are
mapped from the pixels of ``sample["image"]`` back to ``sample["size"]`` (the size as read), so
predictions on resized inputs come out in original pixels; a transform that crops or pads breaks
that mapping.

How :class:`vlsdk.metrics.detection.DetectionMAP` relates: on the same predictions and ground
truth its ``map``/``map50``/``map75`` equal COCOeval's ``AP``/``AP50``/``AP75`` (``area=all``,
``maxDets=100``), provided equal scores in different images are ranked alike: pycocotools ranks
them by image id, DetectionMAP by the order images were added, so add images in increasing
image id order (dataset order does it for the ids :func:`coco_ground_truth` takes from the
readers here).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COCOEVAL_STATS", "coco_ground_truth", "coco_results", "cocoeval_summary"]

#: The names of ``COCOeval.stats``, in order.
COCOEVAL_STATS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
                                   "ARl")


def _image_id(sample: Mapping[str, Any], position: int) -> int | str:
    value = sample.get("image_id", sample.get("index", position))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"sample {position}: image_id must be an int or a string, got {value!r}")


def _scale(sample: Mapping[str, Any], position: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``[sx, sy, sx, sy]`` from the sample's image pixels to its original size, and that size ``(h, w)``."""
    image = sample.get("image")
    shape = tuple(np.shape(image))[:2] if image is not None else sample.get("input_size")  # (h, w) of the boxes
    size = sample.get("size", shape)
    if size is None:
        raise ValueError(f"sample {position} has neither 'size' nor 'image': cannot tell its pixel size")
    h, w = (int(v) for v in size)
    ih, iw = shape if shape is not None else (h, w)
    return np.array([w / iw, h / ih, w / iw, h / ih]), (h, w)


def _array(value: Any, what: str) -> np.ndarray:
    out = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{what}: {int((~np.isfinite(out)).sum())} non-finite value(s); expected finite numbers")
    return out


def _category_map(category_ids: Sequence[int] | None) -> np.ndarray | None:
    return None if category_ids is None else np.asarray(list(category_ids), np.int64)


def _categories(labels: np.ndarray, category_ids: np.ndarray | None, what: str) -> np.ndarray:
    if category_ids is None:
        return labels + 1
    bad = (labels < 0) | (labels >= len(category_ids))
    if bad.any():
        raise ValueError(f"{what}: label(s) {np.unique(labels[bad]).tolist()} have no entry in category_ids "
                         f"({len(category_ids)} given)")
    return category_ids[labels]


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), axis=1)


def coco_results(predictions: Sequence[Any], samples: Sequence[Mapping[str, Any]], *,
                 category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Predictions as the COCO results JSON (a list of dicts, ``json.dump`` it).

    Args:
        predictions: per image, ``Detections`` or a mapping with ``boxes (n, 4)`` xyxy in the
            pixels of ``sample["image"]``, ``scores (n,)`` and ``labels (n,)`` (tensors or arrays).
        samples: the samples the predictions were made on (e.g. the third value of
            :func:`vlsdk.data.samples.collate`), for ``image_id``, ``size`` and the input shape.
        category_ids: category id of each label (default ``label + 1``).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` in original pixels.

    Raises:
        ValueError: counts or lengths that do not fit, non-finite boxes or scores, labels without
            a category id.

    Example:
        >>> coco_results([{"boxes": [[10, 10, 20, 30]], "scores": [0.9], "labels": [0]}],
        ...              [{"image_id": 7, "size": (100, 100), "image": np.zeros((50, 50, 1), np.uint8)}])
        [{'image_id': 7, 'category_id': 1, 'bbox': [20.0, 20.0, 20.0, 40.0], 'score': 0.9}]
    """
    if len(predictions) != len(samples):
        raise ValueError(f"got {len(predictions)} predictions but {len(samples)} samples; one each per image")
    cats = _category_map(category_ids)
    out: list[dict[str, Any]] = []
    for i, (pred, sample) in enumerate(zip(predictions, samples, strict=True)):
        get = pred.get if isinstance(pred, Mapping) else lambda k, p=pred: getattr(p, k, None)
        boxes = _array(get("boxes"), f"prediction {i} boxes").reshape(-1, 4)
        scores = _array(get("scores"), f"prediction {i} scores").reshape(-1)
        labels = np.asarray(_array(get("labels"), f"prediction {i} labels"), np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"prediction {i}: boxes, scores, labels have different lengths "
                             f"{[len(boxes), len(scores), len(labels)]}")
        scale, _ = _scale(sample, i)
        image_id = _image_id(sample, i)
        xywh = _xywh(boxes * scale).tolist()
        out += [{"image_id": image_id, "category_id": int(c), "bbox": b, "score": float(s)}
                for b, c, s in zip(xywh, _categories(labels, cats, f"prediction {i}"), scores, strict=True)]
    return out


def coco_ground_truth(data: Iterable[Mapping[str, Any]], classes: Sequence[str] | None = None, *,
                      category_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """A COCO ground-truth dict from a detection dataset or its samples.

    Args:
        data: a dataset (``len`` and ``[i]``, e.g. :class:`~vlsdk.data.coco.COCODataset`,
            :class:`~vlsdk.data.voc.VOCDataset`, ``vlsdk_industrial.deeppcb.DeepPCBDataset``) or
            samples with ``boxes``, ``labels``, ``size`` (or ``image``) and ``image_id`` (or ``index``).
        classes: class names in label order (default ``data.classes``).
        category_ids: category id of each label (default ``label + 1``).

    Returns:
        ``{"images": [{"id", "width", "height", "file_name"}], "annotations": [{"id", "image_id",
        "category_id", "bbox", "area", "iscrowd": 0}], "categories": [{"id", "name"}]}``.

    Raises:
        ValueError: no class names, a repeated image id, non-finite boxes, or labels out of range.
    """
    classes = list(classes if classes is not None else getattr(data, "classes", None) or [])
    if not classes:
        raise ValueError("coco_ground_truth needs the class names (classes=[...] or a dataset with .classes)")
    cats = _category_map(category_ids)
    if cats is not None and len(cats) != len(classes):
        raise ValueError(f"category_ids has {len(cats)} ids for {len(classes)} classes")
    ids = cats if cats is not None else np.arange(1, len(classes) + 1)
    samples = (data[i] for i in range(len(data))) if hasattr(data, "__getitem__") and hasattr(data, "__len__") \
        else iter(data)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[int | str] = set()
    for i, sample in enumerate(samples):
        image_id = _image_id(sample, i)
        if image_id in seen:
            raise ValueError(f"sample {i}: image_id {image_id!r} repeats an earlier sample's; image ids must be unique")
        seen.add(image_id)
        scale, (h, w) = _scale(sample, i)
        boxes = _array(sample["boxes"], f"sample {i} boxes").reshape(-1, 4) * scale
        labels = np.asarray(sample["labels"], np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"sample {i}: labels {np.unique(labels).tolist()} outside [0, {len(classes)})")
        images.append({"id": image_id, "width": w, "height": h, "file_name": str(sample.get("path", image_id))})
        xywh = _xywh(boxes)
        start = len(annotations) + 1
        annotations += [{"id": start + k, "image_id": image_id, "category_id": int(c), "bbox": b,
                         "area": float(a), "iscrowd": 0}
                        for k, (b, c, a) in enumerate(zip(xywh.tolist(), _categories(labels, cats, f"sample {i}"),
                                                          xywh[:, 2] * xywh[:, 3], strict=True))]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": int(c), "name": str(n)} for c, n in zip(ids, classes, strict=True)]}


def _load(value: Any, what: str) -> Any:
    if isinstance(value, (str, Path)):
        try:
            return json.loads(Path(value).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the {what} JSON {str(value)!r}: {exc}") from None
    return value


def cocoeval_summary(gt: Mapping[str, Any] | str | Path, results: Sequence[Mapping[str, Any]] | str | Path
                     ) -> dict[str, float]:
    """Run pycocotools' ``COCOeval`` (``bbox``) and return its 12 stats by name.

    Args:
        gt: a COCO ground-truth dict (e.g. from :func:`coco_ground_truth`) or its JSON file.
        results: the results list (e.g. from :func:`coco_results`) or its JSON file.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}``
        as fractions; ``-1`` where COCOeval has nothing to average (no ground truth in that range).

    Raises:
        ImportError: pycocotools is not installed (with the install line).
        ValueError: results naming images or categories the ground truth lacks, or a non-finite
            ``bbox`` or ``score``.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise ImportError('cocoeval_summary needs pycocotools: pip install "vlsdk[industrial]" '
                          f"(or pip install pycocotools); {exc}") from None
    gt, results = _load(gt, "ground truth"), _load(results, "results")
    if not isinstance(gt, Mapping) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations",
                                                                                     "categories")):
        raise ValueError("gt must be a COCO dict with lists 'images', 'annotations' and 'categories'")
    if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
        raise ValueError("results must be a list of {'image_id', 'category_id', 'bbox', 'score'} dicts")
    image_ids = {im["id"] for im in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    for key, known in (("image_id", image_ids), ("category_id", cat_ids)):
        unknown = sorted({r.get(key) for r in results} - known, key=repr)
        if unknown:
            raise ValueError(f"results name {key}(s) {unknown[:5]} that the ground truth lacks")
    if results:
        values = np.asarray([[*r["bbox"], r["score"]] for r in results], np.float64)
        bad = ~np.isfinite(values).all(1)
        if bad.any():
            raise ValueError(f"result {int(np.argmax(bad))}: non-finite bbox or score {values[bad][0].tolist()} "
                             f"({int(bad.sum())} such results)")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dict(gt))  # COCOeval writes an 'ignore' key into each annotation
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "categories": list(gt["categories"]),
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(COCOEVAL_STATS, ev.stats, strict=True)}

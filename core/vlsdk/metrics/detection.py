"""Detection mAP: COCO-style mAP@0.5 and mAP@0.5:0.95, and a loose criterion (IoU > 0.33, DeepPCB's).

Average precision follows pycocotools' COCOeval exactly for ``area=all`` and ``maxDets=100`` (its
first stat; :func:`vlsdk.data.coco_results.cocoeval_summary` runs pycocotools itself):
per image and class, detections sorted by score (stable) are kept up to ``max_detections`` and
matched greedily to the unmatched ground-truth box of highest IoU at or above each threshold;
then, per class over all images, the precision envelope is sampled at the 101 recall points
``0, 0.01, ..., 1``. A class without ground truth has no AP and is left out of the mean.

DeepPCB's criterion counts a detection as a hit at IoU *strictly above* 0.33 (its paper reports
mAP and F-score under it); ``map_deeppcb`` is the AP at that criterion with the same 101-point
interpolation, and ``precision``/``recall``/``f1`` are computed at it for detections scoring at
least ``score_threshold``. Greedy matching runs on whole arrays per image and class (see
:func:`greedy_match`); there is no Python loop over boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["COCO_IOU_THRESHOLDS", "DetectionMAP", "MAPResult", "average_precision", "greedy_match", "iou_matrix"]

#: 0.50, 0.55, ..., 0.95, as pycocotools builds them.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
_RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of xyxy boxes in float64 (as pycocotools computes it).

    Args:
        a: ``(N, 4)`` boxes.
        b: ``(M, 4)`` boxes.
    """
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def greedy_match(iou: np.ndarray, thresholds: np.ndarray, strict: bool = False) -> np.ndarray:
    """COCO's greedy matching, for every threshold at once, without a loop over detections.

    Detection ``d`` (in the given order, i.e. by decreasing score) takes, among the ground-truth
    boxes not taken by an earlier detection, the one of highest IoU ``>= t`` (``> t`` when
    ``strict``; on a tie the last, as pycocotools). Each round decides every detection whose
    candidate boxes no earlier undecided detection shares (the first undecided one always
    qualifies), on whole ``(T, D, G)`` arrays; rounds repeat only along chains of conflicts.

    Args:
        iou: ``(D, G)`` IoU of detections (sorted by score) and ground truth.
        thresholds: ``(T,)`` IoU thresholds.
        strict: match at IoU strictly above the threshold (DeepPCB) instead of at or above (COCO).

    Returns:
        ``(T, D)`` index of the matched ground-truth box, ``-1`` for a false positive.

    Example:
        >>> greedy_match(np.array([[0.9, 0.6], [0.8, 0.0]]), np.array([0.5, 0.7])).tolist()
        [[0, -1], [0, -1]]
    """
    iou = np.asarray(iou, np.float64)
    thr = np.asarray(thresholds, np.float64).reshape(-1)
    d, g = iou.shape
    matched = np.full((thr.size, d), -1, np.int64)
    if d == 0 or g == 0:
        return matched
    ok = iou[None] > thr[:, None, None] if strict else iou[None] >= np.minimum(thr, 1 - 1e-10)[:, None, None]
    earlier = np.triu(np.ones((d, d), bool), k=1)  # earlier[e, d]: e ranks before d
    undecided = ok.any(-1)  # detections without any candidate are false positives from the start
    taken = np.zeros((thr.size, g), bool)
    while undecided.any():
        cand = ok & ~taken[:, None, :] & undecided[..., None]
        has = cand.any(-1)
        c = cand.astype(np.float32)
        shared = np.einsum("teg,tdg->ted", c, c) > 0  # (T, D, D) candidate sets intersect
        blocked = (shared & earlier[None] & has[:, :, None]).any(1)
        decide = undecided & (~has | ~blocked)
        pick = decide & has
        best = g - 1 - np.argmax(np.where(cand, iou[None], -1.0)[..., ::-1], axis=-1)
        matched[pick] = best[pick]
        tt, dd = np.nonzero(pick)
        taken[tt, best[tt, dd]] = True
        undecided &= ~decide
    return matched


def average_precision(scores: np.ndarray, hits: np.ndarray, num_gt: int) -> np.ndarray:
    """COCO 101-point interpolated AP of one class, per threshold.

    Args:
        scores: ``(D,)`` scores of every detection of the class, images concatenated in order.
        hits: ``(T, D)`` whether each detection matched at each threshold.
        num_gt: ground-truth boxes of the class.

    Returns:
        ``(T,)`` AP, ``-1`` when ``num_gt == 0``.
    """
    hits = np.asarray(hits, bool)
    hits = hits[None] if hits.ndim == 1 else hits
    if hits.shape[1] != len(scores):
        raise ValueError(f"hits must be (T, {len(scores)}), got {hits.shape}")
    if num_gt == 0:
        return np.full(hits.shape[0], -1.0)
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    tp = np.cumsum(hits[:, order], axis=1, dtype=np.float64)
    fp = np.cumsum(~hits[:, order], axis=1, dtype=np.float64)
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, np.spacing(1))
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros((hits.shape[0], _RECALL_POINTS.size))
    for t in range(hits.shape[0]):  # a loop over thresholds, vectorised over detections
        idx = np.searchsorted(recall[t], _RECALL_POINTS, side="left")
        valid = idx < recall.shape[1]
        out[t, valid] = envelope[t, idx[valid]]
    return out.mean(axis=1)


@dataclass
class MAPResult:
    """What :meth:`DetectionMAP.compute` returns (fractions in ``[0, 1]``; ``nan`` with no ground truth).

    Attributes:
        map: mAP@0.5:0.95 (COCO).
        map50: mAP@0.5.
        map75: mAP@0.75.
        map_deeppcb: mAP at the loose criterion, IoU > 0.33 (DeepPCB's).
        precision: precision at that criterion for detections scoring >= the score threshold.
        recall: recall, likewise.
        f1: F-score, likewise.
        per_class: class name -> ``{"ap", "ap50", "ap75", "ap_deeppcb", "num_gt", "num_det"}``.
    """

    map: float
    map50: float
    map75: float
    map_deeppcb: float
    precision: float
    recall: float
    f1: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"map": self.map, "map50": self.map50, "map75": self.map75, "map_deeppcb": self.map_deeppcb,
                "precision": self.precision, "recall": self.recall, "f1": self.f1, "per_class": self.per_class}

    def table(self) -> str:
        """The per-class table (percentages) with an overall row."""
        head = f"{'class':<10} {'gt':>5} {'det':>6} {'AP@.33':>7} {'AP@.5':>7} {'AP@.5:.95':>9}"
        rows = [head, "-" * len(head)]
        pct = lambda v: "   -" if np.isnan(v) else f"{100 * v:.1f}"  # noqa: E731
        for name, c in self.per_class.items():
            rows.append(f"{name:<10} {int(c['num_gt']):>5} {int(c['num_det']):>6} {pct(c['ap_deeppcb']):>7} "
                        f"{pct(c['ap50']):>7} {pct(c['ap']):>9}")
        gt = sum(int(c["num_gt"]) for c in self.per_class.values())
        det = sum(int(c["num_det"]) for c in self.per_class.values())
        rows.append("-" * len(head))
        rows.append(f"{'all':<10} {gt:>5} {det:>6} {pct(self.map_deeppcb):>7} {pct(self.map50):>7} {pct(self.map):>9}")
        rows.append(f"DeepPCB criterion (IoU > 0.33): precision {pct(self.precision)}  recall {pct(self.recall)}  "
                    f"F-score {pct(self.f1)}")
        return "\n".join(rows)


def _arrays(item: Any, what: str, index: int, scores: bool) -> tuple[np.ndarray, ...]:
    get = item.get if isinstance(item, Mapping) else lambda k: getattr(item, k, None)
    keys = ("boxes", "scores", "labels") if scores else ("boxes", "labels")
    values = [get(k) for k in keys]
    if any(v is None for v in values):
        raise ValueError(f"{what} {index} needs {', '.join(keys)}")
    out = [np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for v in values]
    out[0] = out[0].astype(np.float64).reshape(-1, 4)
    for i in range(1, len(out)):
        out[i] = out[i].reshape(-1)
    if any(len(v) != len(out[0]) for v in out):
        raise ValueError(f"{what} {index}: {', '.join(keys)} have different lengths {[len(v) for v in out]}")
    for key, v in zip(keys, out, strict=True):
        bad = ~np.isfinite(v.astype(np.float64)).all(axis=tuple(range(1, v.ndim)))
        if bad.any():
            raise ValueError(f"{what} {index}: {int(bad.sum())} {key} with a non-finite value (first: row "
                             f"{int(np.argmax(bad))}, {v[int(np.argmax(bad))].tolist()}); expected finite numbers")
    return tuple(out)


class DetectionMAP:
    """Accumulate detections and ground truth over images; compute mAP.

    Equal scores are ranked in the order the images were added (and, in one image, the order of
    its detections); pycocotools ranks them by image id, so the two agree when image ids increase
    in the order the images are added.

    Args:
        class_names: one name per class id.
        iou_thresholds: the COCO thresholds for ``map`` (default 0.50:0.05:0.95).
        deeppcb_iou: DeepPCB's hit criterion, IoU strictly above this.
        max_detections: detections kept per image and class, by score (COCO's ``maxDets``).
        score_threshold: detections scoring at least this count for precision/recall/F-score.

    Raises:
        ValueError: bad arguments.

    Example:
        >>> m = DetectionMAP(["a"])
        >>> m.update([{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}],
        ...          [{"boxes": [[0, 0, 10, 10]], "labels": [0]}])
        >>> m.compute().map50
        1.0
    """

    def __init__(self, class_names: Sequence[str], *, iou_thresholds: Sequence[float] | None = None,
                 deeppcb_iou: float = 0.33, max_detections: int = 100, score_threshold: float = 0.5) -> None:
        if not class_names:
            raise ValueError("class_names must name at least one class")
        thr = COCO_IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, np.float64)
        if thr.ndim != 1 or thr.size == 0 or ((thr < 0) | (thr > 1)).any():
            raise ValueError(f"iou_thresholds must be a non-empty list of values in [0, 1], got {iou_thresholds!r}")
        if not 0 <= deeppcb_iou < 1:
            raise ValueError(f"deeppcb_iou must be in [0, 1), got {deeppcb_iou!r}")
        if not isinstance(max_detections, int) or max_detections < 1:
            raise ValueError(f"max_detections must be an int >= 1, got {max_detections!r}")
        self.class_names = tuple(class_names)
        self.iou_thresholds, self.deeppcb_iou = thr, float(deeppcb_iou)
        self.max_detections, self.score_threshold = max_detections, float(score_threshold)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._images: list[tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]] = []

    def update(self, predictions: Sequence[Any], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add images.

        Args:
            predictions: per image, ``Detections`` or a mapping with ``boxes (n, 4)`` xyxy,
                ``scores (n,)`` and ``labels (n,)`` (tensors or arrays).
            targets: per image, ``{"boxes": (m, 4), "labels": (m,)}``.

        Raises:
            ValueError: counts, lengths or labels that do not fit.
        """
        if len(predictions) != len(targets):
            raise ValueError(f"got {len(predictions)} predictions but {len(targets)} targets; one each per image")
        k = len(self.class_names)
        for i, (p, t) in enumerate(zip(predictions, targets, strict=True)):
            pred, gt = _arrays(p, "prediction", i, True), _arrays(t, "target", i, False)
            for what, labels in (("prediction", pred[2]), ("target", gt[1])):
                if labels.size and (labels.min() < 0 or labels.max() >= k or (labels != np.round(labels)).any()):
                    raise ValueError(f"{what} {i}: labels must be class ids in [0, {k}), got {np.unique(labels)}")
            self._images.append(((pred[0], pred[1].astype(np.float64), pred[2].astype(np.int64)),
                                 (gt[0], gt[1].astype(np.int64))))

    def compute(self) -> MAPResult:
        """mAP over the images added since the last :meth:`reset`."""
        thr = np.concatenate((self.iou_thresholds, [self.deeppcb_iou]))
        n_coco = self.iou_thresholds.size
        per_class: dict[str, dict[str, float]] = {}
        aps = []
        tp_at = det_at = gt_total = 0
        for c, name in enumerate(self.class_names):
            scores_c, hits_c, num_gt = [], [], 0
            for (pb, ps, pl), (gb, gl) in self._images:
                dsel, gsel = pl == c, gl == c
                db, ds, g = pb[dsel], ps[dsel], gb[gsel]
                order = np.argsort(-ds, kind="mergesort")[: self.max_detections]
                db, ds = db[order], ds[order]
                iou = iou_matrix(db, g)
                m = np.concatenate((greedy_match(iou, self.iou_thresholds), greedy_match(iou, [self.deeppcb_iou],
                                                                                       strict=True)))
                scores_c.append(ds)
                hits_c.append(m >= 0)
                num_gt += len(g)
            scores = np.concatenate(scores_c) if scores_c else np.zeros(0)
            hits = np.concatenate(hits_c, axis=1) if hits_c else np.zeros((thr.size, 0), bool)
            ap = average_precision(scores, hits, num_gt)
            ap = np.where(ap < 0, np.nan, ap)
            aps.append(ap)
            above = scores >= self.score_threshold
            tp_at += int(hits[-1][above].sum())
            det_at += int(above.sum())
            gt_total += num_gt
            i50, i75 = (np.flatnonzero(np.isclose(self.iou_thresholds, v)) for v in (0.5, 0.75))
            per_class[name] = {"ap": float(np.mean(ap[:n_coco])), "ap50": float(ap[i50[0]]) if i50.size else np.nan,
                               "ap75": float(ap[i75[0]]) if i75.size else np.nan, "ap_deeppcb": float(ap[-1]),
                               "num_gt": float(num_gt), "num_det": float(len(scores))}
        table = np.stack(aps)  # (C, T + 1); a class without ground truth is a row of nan
        mean = lambda col: float(np.mean(col[~np.isnan(col)])) if (~np.isnan(col)).any() else float("nan")  # noqa: E731
        coco = mean(np.array([v["ap"] for v in per_class.values()]))
        precision = tp_at / det_at if det_at else float("nan")
        recall = tp_at / gt_total if gt_total else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if det_at and gt_total and tp_at else 0.0
        return MAPResult(map=coco, map50=mean(np.array([v["ap50"] for v in per_class.values()])),
                         map75=mean(np.array([v["ap75"] for v in per_class.values()])),
                         map_deeppcb=mean(table[:, -1]), precision=precision, recall=recall, f1=f1,
                         per_class=per_class)

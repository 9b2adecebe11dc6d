"""mAP against pycocotools on the same predictions; the vectorised greedy matching against a loop."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vlsdk_industrial.metrics import DetectionMAP, greedy_match


def _scene(seed: int, n_images: int = 40, n_classes: int = 6):
    """Ground truth and noisy predictions: jittered hits, duplicates, wrong classes, false positives."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for i in range(n_images):
        m = int(rng.integers(0, 8)) if i % 7 else 0  # some defect-free boards
        xy = rng.uniform(0, 560, (m, 2))
        wh = rng.uniform(8, 60, (m, 2))
        gt = np.concatenate((xy, xy + wh), 1)
        gl = rng.integers(0, n_classes - 1, m)  # the last class never has ground truth
        keep = rng.random(m) < 0.85
        jitter = rng.normal(0, 0.12, (m, 4)) * np.concatenate((wh, wh), 1)
        pb = (gt + jitter)[keep]
        pl = np.where(rng.random(m) < 0.1, rng.integers(0, n_classes, m), gl)[keep]
        dup = rng.random(len(pb)) < 0.3
        pb = np.concatenate((pb, pb[dup] + rng.normal(0, 4, (int(dup.sum()), 4))))
        pl = np.concatenate((pl, pl[dup]))
        f = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 580, (f, 2))
        pb = np.concatenate((pb, np.concatenate((fxy, fxy + rng.uniform(5, 50, (f, 2))), 1)))
        pl = np.concatenate((pl, rng.integers(0, n_classes, f)))
        pb = np.concatenate((np.minimum(pb[:, :2], pb[:, 2:] - 1), pb[:, 2:]), 1)
        preds.append({"boxes": pb, "scores": rng.random(len(pb)), "labels": pl})
        targets.append({"boxes": gt, "labels": gl})
    return preds, targets


def _pycocotools(preds, targets, n_classes: int, iou_thrs: np.ndarray | None = None, max_dets: int = 100):
    images = [{"id": i + 1, "width": 640, "height": 640} for i in range(len(targets))]
    anns, res = [], []
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        for b, lab in zip(t["boxes"], t["labels"], strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, s, lab in zip(p["boxes"], p["scores"], p["labels"], strict=True):
            res.append({"image_id": i + 1, "category_id": int(lab) + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                        "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": k + 1, "name": str(k)} for k in range(n_classes)]}
        gt.createIndex()
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, "bbox")
        if iou_thrs is not None:
            ev.params.iouThrs = iou_thrs
        ev.params.maxDets = sorted({1, 10, max_dets})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1])
def test_map_matches_pycocotools(seed: int) -> None:
    preds, targets = _scene(seed)
    metric = DetectionMAP(max_detections=100)
    metric.update(preds[:20], targets[:20])
    metric.update(preds[20:], targets[20:])
    ours = metric.compute()
    ev = _pycocotools(preds, targets, 6)
    assert ours.map == pytest.approx(ev.stats[0], abs=1e-9)
    assert ours.map50 == pytest.approx(ev.stats[1], abs=1e-9)
    assert ours.map75 == pytest.approx(ev.stats[2], abs=1e-9)
    assert 0.1 < ours.map < ours.map50 < 1  # a non-trivial scene
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K) at area=all, maxDets=100
    for k, name in enumerate(metric.class_names):
        if k == 5:  # no ground truth: no AP, like pycocotools' -1
            assert np.isnan(ours.per_class[name]["ap"]) and (precision[:, :, k] == -1).all()
            continue
        assert ours.per_class[name]["ap50"] == pytest.approx(precision[0, :, k].mean(), abs=1e-9)
        assert ours.per_class[name]["ap"] == pytest.approx(precision[:, :, k].mean(), abs=1e-9)
    # DeepPCB's criterion: pycocotools at the single threshold 0.33 (no IoU is exactly 0.33 here)
    ev33 = _pycocotools(preds, targets, 6, np.array([0.33]))
    p33 = ev33.eval["precision"][0, :, :5, 0, -1]
    assert ours.map_deeppcb == pytest.approx(p33.mean(), abs=1e-9)
    assert ours.map_deeppcb >= ours.map50


def test_max_detections_and_perfect_and_empty() -> None:
    preds, targets = _scene(3, n_images=12)
    m = DetectionMAP(max_detections=2)
    m.update(preds, targets)
    ev = _pycocotools(preds, targets, 6, max_dets=2)
    capped = ev.eval["precision"][:, :, :5, 0, ev.params.maxDets.index(2)]  # pycocotools sorts maxDets
    assert m.compute().map == pytest.approx(capped.mean(), abs=1e-9)
    full = DetectionMAP()
    full.update(preds, targets)
    assert m.compute().map != full.compute().map  # the cap really applied
    perfect = DetectionMAP()
    perfect.update([{"boxes": t["boxes"], "scores": np.ones(len(t["labels"])), "labels": t["labels"]}
                    for t in targets], targets)
    r = perfect.compute()
    assert r.map == r.map50 == r.map_deeppcb == r.f1 == 1.0
    assert "pin-hole" in r.table() and "all" in r.table()
    empty = DetectionMAP()
    empty.update([{"boxes": np.zeros((0, 4)), "scores": [], "labels": []}], [{"boxes": [[0, 0, 5, 5]], "labels": [1]}])
    assert empty.compute().map50 == 0.0
    with pytest.raises(ValueError, match="labels must be class ids"):
        empty.update([{"boxes": [[0, 0, 1, 1]], "scores": [1], "labels": [6]}], [{"boxes": np.zeros((0, 4)),
                                                                                   "labels": []}])
    with pytest.raises(ValueError, match="one each per image"):
        empty.update([], [{"boxes": np.zeros((0, 4)), "labels": []}])
    with pytest.raises(ValueError, match="deeppcb_iou"):
        DetectionMAP(deeppcb_iou=1.5)


def _loop_match(iou: np.ndarray, t: float, strict: bool) -> list[int]:
    """pycocotools' loop, as reference."""
    taken, out = set(), []
    for d in range(iou.shape[0]):
        best, m = (t if strict else min(t, 1 - 1e-10)), -1
        for g in range(iou.shape[1]):
            if g in taken:
                continue
            if (iou[d, g] <= best) if strict and m == -1 else (iou[d, g] < best):
                continue
            best, m = iou[d, g], g
        if m >= 0:
            taken.add(m)
        out.append(m)
    return out


def test_greedy_match_equals_the_loop() -> None:
    rng = np.random.default_rng(0)
    thresholds = np.array([0.1, 0.3, 0.5, 0.7])
    for _ in range(200):
        d, g = rng.integers(0, 9, 2)
        iou = np.round(rng.random((d, g)), 1) * (rng.random((d, g)) < 0.6)  # ties and zeros on purpose
        got = greedy_match(iou, thresholds)
        got_strict = greedy_match(iou, thresholds, strict=True)
        for k, t in enumerate(thresholds):
            assert got[k].tolist() == _loop_match(iou, t, False)
            assert got_strict[k].tolist() == _loop_match(iou, t, True)

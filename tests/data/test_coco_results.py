"""COCO results and ground truth from real DeepPCB boards; pycocotools against DetectionMAP."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from vlsdk.data.coco_results import COCOEVAL_STATS, coco_ground_truth, coco_results, cocoeval_summary
from vlsdk.data.transforms import Resize
from vlsdk.metrics.detection import DetectionMAP

COCO = pytest.importorskip("pycocotools.coco").COCO


def _predictions(samples: list[dict], seed: int, ties: bool = False) -> list[dict]:
    """Jittered ground truth (20 % missed, 10 % wrong class), 0-3 false positives a board, random scores."""
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        gt, gl = s["boxes"].astype(np.float64), s["labels"]
        m = len(gt)
        keep = rng.random(m) < 0.8
        wh = np.concatenate([gt[:, 2:] - gt[:, :2]] * 2, axis=1)
        boxes = (gt + rng.normal(0, 0.1, (m, 4)) * wh)[keep]
        labels = np.where(rng.random(m) < 0.1, rng.integers(0, 6, m), gl)[keep]
        f = int(rng.integers(0, 4))
        xy = rng.uniform(0, 580, (f, 2))
        boxes = np.concatenate((boxes, np.concatenate((xy, xy + rng.uniform(5, 50, (f, 2))), axis=1)))
        labels = np.concatenate((labels, rng.integers(0, 6, f)))
        boxes = np.concatenate((np.minimum(boxes[:, :2], boxes[:, 2:] - 1), boxes[:, 2:]), axis=1)
        scores = rng.random(len(boxes))
        out.append({"boxes": boxes, "scores": np.round(scores, 1) if ties else scores, "labels": labels})
    return out


@pytest.fixture(scope="module")
def boards(shared_data: Path) -> tuple[list[dict], tuple[str, ...]]:
    from vlsdk_industrial.deeppcb import DeepPCBDataset

    root = shared_data / "deeppcb"
    if not (root / "PCBData" / "test.txt").is_file():
        pytest.skip(f"{root} holds no PCBData/test.txt")
    ds = DeepPCBDataset(root, "test")
    return [ds[i] for i in range(len(ds))], ds.classes


@pytest.mark.parametrize("ties", [False, True])
def test_pycocotools_ap_equals_detection_map_on_deeppcb(boards, tmp_path: Path, ties: bool) -> None:
    samples, classes = boards
    preds = _predictions(samples, seed=0, ties=ties)
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(coco_ground_truth(samples, classes)))
    res_path.write_text(json.dumps(coco_results(preds, samples)))
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(gt_path)).loadRes(str(res_path))  # pycocotools reads both JSON files itself
    assert len(loaded.getAnnIds()) == sum(len(p["scores"]) for p in preds)
    stats = cocoeval_summary(gt_path, res_path)
    assert list(stats) == list(COCOEVAL_STATS)
    metric = DetectionMAP(classes)
    metric.update(preds, [{"boxes": s["boxes"], "labels": s["labels"]} for s in samples])
    ours = metric.compute()
    assert 0.1 < stats["AP"] < 0.6  # misses, false positives and jitter keep it well below 1
    assert ours.map == pytest.approx(stats["AP"], abs=1e-6)
    assert ours.map50 == pytest.approx(stats["AP50"], abs=1e-6)
    assert ours.map75 == pytest.approx(stats["AP75"], abs=1e-6)
    if ties:  # scores rounded to 0.1: equal scores across boards rank by image id in pycocotools
        backwards = DetectionMAP(classes)
        backwards.update(preds[::-1], [{"boxes": s["boxes"], "labels": s["labels"]} for s in samples][::-1])
        assert abs(backwards.compute().map - stats["AP"]) > 1e-6


def test_ground_truth_and_results_match_pycocotools_loading(boards) -> None:
    samples, classes = boards
    gt = coco_ground_truth(samples, classes)
    assert len(gt["images"]) == 250 and len(gt["annotations"]) == sum(len(s["labels"]) for s in samples)
    assert [c["name"] for c in gt["categories"]] == list(classes)
    ids = [im["id"] for im in gt["images"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # list lines: increasing in dataset order
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    first = coco.loadAnns(coco.getAnnIds(imgIds=[ids[0]]))[0]
    x1, y1, x2, y2 = samples[0]["boxes"][0].tolist()
    assert first["bbox"] == [x1, y1, x2 - x1, y2 - y1] and first["category_id"] == samples[0]["labels"][0] + 1
    assert first["area"] == (x2 - x1) * (y2 - y1) and first["iscrowd"] == 0
    # perfect predictions score 1 everywhere COCOeval has ground truth
    perfect = [{"boxes": s["boxes"], "scores": np.ones(len(s["boxes"])), "labels": s["labels"]} for s in samples]
    stats = cocoeval_summary(gt, coco_results(perfect, samples))
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_results_on_resized_inputs_come_back_in_original_pixels(boards) -> None:
    samples, classes = boards
    resize = Resize((320, 480))
    small = [resize(s) for s in samples[:10]]
    preds = _predictions(samples[:10], seed=3)
    scaled = [{**p, "boxes": p["boxes"] * np.array([480 / 640, 320 / 640] * 2)} for p in preds]
    a, b = coco_results(preds, samples[:10]), coco_results(scaled, small)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose([r["bbox"] for r in b], [r["bbox"] for r in a], atol=1e-4)
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    gt_small, gt = coco_ground_truth(small, classes), coco_ground_truth(samples[:10], classes)
    assert [im["width"] for im in gt_small["images"]] == [640] * 10
    np.testing.assert_allclose([g["bbox"] for g in gt_small["annotations"]],
                               [g["bbox"] for g in gt["annotations"]], atol=1e-3)


def _tiny() -> tuple[dict, list[dict]]:
    sample = {"image_id": 5, "size": (100, 100), "boxes": np.array([[10, 10, 30, 40.0]]), "labels": np.array([1])}
    gt = coco_ground_truth([sample], ["a", "b"], category_ids=[3, 7])
    return gt, [sample]


def test_category_ids_and_bad_results_are_named() -> None:
    gt, samples = _tiny()
    assert gt["categories"] == [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    assert gt["annotations"][0]["category_id"] == 7
    res = coco_results([{"boxes": [[10, 10, 30, 40]], "scores": [0.5], "labels": [1]}], samples,
                       category_ids=[3, 7])
    assert res == [{"image_id": 5, "category_id": 7, "bbox": [10.0, 10.0, 20.0, 30.0], "score": 0.5}]
    assert cocoeval_summary(gt, res)["AP50"] == pytest.approx(1.0)
    assert cocoeval_summary(gt, [])["AP"] == 0.0  # no detections: AP 0, not a crash in loadRes
    with pytest.raises(ValueError, match=r"image_id\(s\) \[6\]"):
        cocoeval_summary(gt, [{**res[0], "image_id": 6}])
    with pytest.raises(ValueError, match=r"category_id\(s\) \[2\]"):
        cocoeval_summary(gt, [{**res[0], "category_id": 2}])
    with pytest.raises(ValueError, match="result 0: non-finite bbox or score"):
        cocoeval_summary(gt, [{**res[0], "score": float("nan")}])
    with pytest.raises(ValueError, match="prediction 0 boxes: 1 non-finite"):
        coco_results([{"boxes": [[10, 10, np.inf, 40]], "scores": [0.5], "labels": [1]}], samples)
    with pytest.raises(ValueError, match="image_id 5 repeats"):
        coco_ground_truth(samples * 2, ["a", "b"])
    with pytest.raises(ValueError, match=r"label\(s\) \[2\] have no entry in category_ids"):
        coco_results([{"boxes": [[1, 1, 2, 2]], "scores": [0.5], "labels": [2]}], samples, category_ids=[3, 7])

"""Center-distance AP through the devkit's accumulate/calc_ap, and the depth metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsdk_driving.depth import DepthMetrics, abs_rel, rmse
from vlsdk_driving.metrics import NuScenesDetectionAP, format_ap_table
from vlsdk_driving.sample import Boxes3D


def cars(xs, scores=None) -> Boxes3D:
    boxes = np.array([[x, 5.0, -1, 4.5, 1.9, 1.6, 0.3] for x in xs]).reshape(-1, 7)
    return Boxes3D(boxes, np.zeros(len(boxes), int), None if scores is None else np.array(scores, float))


def test_perfect_and_shifted_predictions():
    m = NuScenesDetectionAP()
    gt = cars([0.0, 10.0, 20.0])
    m.update(cars([0.0, 10.0, 20.0], [0.9, 0.8, 0.7]), gt, "a")
    res = m.compute()
    assert all(v == pytest.approx(1.0) for v in res["ap"]["car"].values())
    m.reset()
    shifted = Boxes3D(gt.boxes + [1.5, 0, 0, 0, 0, 0, 0], gt.labels, np.array([0.9, 0.8, 0.7]))
    m.update(shifted, gt, "a")
    ap = m.compute()["ap"]["car"]
    assert ap[0.5] == 0 and ap[1.0] == 0 and ap[2.0] == pytest.approx(1) and ap[4.0] == pytest.approx(1)


def test_false_positives_ranking_and_filters():
    m = NuScenesDetectionAP()
    # a confident false positive ranks first: precision drops at every recall level
    m.update(cars([0.0, 10.0, 30.0], [0.5, 0.4, 0.9]), cars([0.0, 10.0]), "a")
    # ground truth without LiDAR points and beyond the 50 m car range is ignored
    m.update(cars([], []), cars([60.0, 3.0]), "b", gt_num_points=np.array([10, 0]))
    res = m.compute()
    assert res["num_gt"] == {"car": 2}
    assert 0.3 < res["ap"]["car"][2.0] < 1.0
    assert "car" in format_ap_table(res, "t")
    with pytest.raises(ValueError, match="already added"):
        m.update(cars([], []), cars([]), "a")
    with pytest.raises(ValueError, match="scores"):
        m.update(cars([1.0]), cars([1.0]), "c")
    with pytest.raises(ValueError, match="dist_ths"):
        NuScenesDetectionAP(dist_ths=())


def test_matches_the_devkit_detection_eval_functions():
    """Same numbers as calling accumulate/calc_ap by hand on DetectionBox lists."""
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.common.utils import center_distance
    from nuscenes.eval.detection.algo import accumulate, calc_ap
    from nuscenes.eval.detection.data_classes import DetectionBox

    rng = np.random.default_rng(0)
    gt_x = rng.uniform(-30, 30, 12)
    pred_x = gt_x + rng.normal(0, 1.0, 12)
    scores = rng.uniform(0, 1, 12)
    m = NuScenesDetectionAP(class_range=None)
    m.update(cars(pred_x, scores), cars(gt_x), "s")
    ours = m.compute()["ap"]["car"]
    gt, pred = EvalBoxes(), EvalBoxes()
    gt.add_boxes("s", [DetectionBox("s", (x, 5.0, -1), (1.9, 4.5, 1.6), (1, 0, 0, 0)) for x in gt_x])
    pred.add_boxes("s", [DetectionBox("s", (x, 5.0, -1), (1.9, 4.5, 1.6), (1, 0, 0, 0), detection_score=float(c))
                         for x, c in zip(pred_x, scores, strict=True)])
    for th, value in ours.items():
        assert value == pytest.approx(calc_ap(accumulate(gt, pred, "car", center_distance, th), 0.1, 0.1))


def test_depth_metrics():
    pred = torch.tensor([[2.0, 5.0], [9.0, 3.0]])
    target = torch.tensor([[4.0, 0.0], [10.0, float("nan")]])
    assert abs_rel(pred, target) == pytest.approx((0.5 + 0.1) / 2)
    assert rmse(pred, target) == pytest.approx(((4 + 1) / 2) ** 0.5)
    m = DepthMetrics()
    m.update(pred[:1], target[:1])
    m.update(pred[1:], target[1:])
    assert m.compute() == pytest.approx({"abs_rel": 0.3, "rmse": 2.5**0.5, "delta1": 0.5, "pixels": 2})
    m.reset()
    assert m.compute()["pixels"] == 0
    assert np.isnan(abs_rel(pred, torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="same shape"):
        rmse(pred, target[0])

"""nuScenes detection AP with the devkit's own matching: center distance at 0.5, 1, 2 and 4 m.

Predictions and ground truth become ``nuscenes.eval.detection.data_classes.DetectionBox`` in
``EvalBoxes``; per class and threshold, ``nuscenes.eval.detection.algo.accumulate`` matches them
greedily by ``center_distance`` and ``calc_ap`` integrates the precision above the minimum recall
and precision of the official ``detection_cvpr_2019`` config. As in the devkit's
``filter_eval_boxes``, boxes beyond the class range and ground truth without LiDAR points are
left out. Boxes stay in the LiDAR frame: centre distances are frame-independent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from vlsdk_driving.sample import DETECTION_CLASSES, Boxes3D

__all__ = ["NuScenesDetectionAP", "DEFAULT_CLASS_RANGE", "format_ap_table"]

#: The official per-class evaluation ranges (metres from the ego car) of ``detection_cvpr_2019``.
DEFAULT_CLASS_RANGE: dict[str, float] = {
    "car": 50, "truck": 50, "bus": 50, "trailer": 50, "construction_vehicle": 50, "pedestrian": 40,
    "motorcycle": 40, "bicycle": 40, "traffic_cone": 30, "barrier": 30,
}


class NuScenesDetectionAP:
    """Per-class center-distance AP through ``nuscenes.eval.detection.algo`` (registered ``driving.nuscenes_ap``).

    Args:
        dist_ths: matching thresholds in metres.
        class_range: metres from the sensor within which boxes count, per class (default: the
            official ranges); ``None`` keeps all.
        min_recall: recall below which precision is ignored (official 0.1).
        min_precision: precision floor subtracted before averaging (official 0.1).
        max_boxes_per_sample: the devkit's cap on predictions per sample.

    Example:
        >>> metric = NuScenesDetectionAP()
        >>> gt = Boxes3D(np.array([[10.0, 0, 0, 4, 2, 1.5, 0]]), np.array([0]))
        >>> pred = Boxes3D(gt.boxes + [0.3, 0, 0, 0, 0, 0, 0], gt.labels, scores=np.array([0.9]))
        >>> metric.update(pred, gt, "s0")
        >>> round(metric.compute()["ap"]["car"][2.0], 6)
        1.0
    """

    def __init__(self, dist_ths: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
                 class_range: Mapping[str, float] | None = DEFAULT_CLASS_RANGE, min_recall: float = 0.1,
                 min_precision: float = 0.1, max_boxes_per_sample: int = 500) -> None:
        if not dist_ths or min(dist_ths) <= 0:
            raise ValueError(f"dist_ths must be positive metres, got {dist_ths!r}")
        if not (0 <= min_recall <= 1 and 0 <= min_precision < 1):
            raise ValueError(f"expected min_recall in [0, 1] and min_precision in [0, 1), got {min_recall}, "
                             f"{min_precision}")
        if class_range is not None and set(class_range) - set(DETECTION_CLASSES):
            raise ValueError(f"class_range keys must be detection classes, got {sorted(class_range)}")
        self.dist_ths = tuple(float(t) for t in dist_ths)
        self.class_range = None if class_range is None else dict(class_range)
        self.min_recall = float(min_recall)
        self.min_precision = float(min_precision)
        self.max_boxes_per_sample = int(max_boxes_per_sample)
        self.reset()

    def reset(self) -> None:
        """Forget all samples."""
        from nuscenes.eval.common.data_classes import EvalBoxes

        self.gt = EvalBoxes()
        self.pred = EvalBoxes()
        self._tokens: set[str] = set()

    def _in_range(self, boxes: Boxes3D) -> np.ndarray:
        if self.class_range is None:
            return np.ones(len(boxes), bool)
        limit = np.array([self.class_range.get(n, np.inf) for n in boxes.names])
        return np.hypot(boxes.centers[:, 0], boxes.centers[:, 1]) < limit

    @staticmethod
    def _to_devkit(boxes: Boxes3D, token: str, num_points: np.ndarray | None, score: bool) -> list:
        from nuscenes.eval.detection.data_classes import DetectionBox
        from pyquaternion import Quaternion

        out = []
        for i in range(len(boxes)):
            x, y, z, length, w, h, yaw = (float(v) for v in boxes.boxes[i])
            vel = (0.0, 0.0)
            if boxes.velocity is not None and np.isfinite(boxes.velocity[i]).all():
                vel = (float(boxes.velocity[i, 0]), float(boxes.velocity[i, 1]))
            out.append(DetectionBox(
                sample_token=token, translation=(x, y, z), size=(w, length, h),
                rotation=tuple(Quaternion(axis=[0, 0, 1], angle=yaw).elements), velocity=vel,
                ego_translation=(x, y, z), num_pts=-1 if num_points is None else int(num_points[i]),
                detection_name=DETECTION_CLASSES[int(boxes.labels[i])],
                detection_score=float(boxes.scores[i]) if score else -1.0))
        return out

    def update(self, predictions: Boxes3D, ground_truth: Boxes3D, sample_token: str,
               gt_num_points: np.ndarray | None = None) -> None:
        """Add one sample.

        Args:
            predictions: predicted boxes with ``scores``.
            ground_truth: the annotated boxes.
            sample_token: a unique id of the sample.
            gt_num_points: LiDAR points inside each ground-truth box; boxes with 0 are ignored
                (as the devkit does). ``None`` keeps every box.
        """
        if predictions.scores is None:
            raise ValueError(f"sample {sample_token}: predictions need scores")
        if sample_token in self._tokens:
            raise ValueError(f"sample {sample_token} was already added")
        if gt_num_points is not None and len(gt_num_points) != len(ground_truth):
            raise ValueError(f"sample {sample_token}: {len(gt_num_points)} point counts for {len(ground_truth)} boxes")
        self._tokens.add(sample_token)
        keep = self._in_range(ground_truth)
        if gt_num_points is not None:
            keep &= np.asarray(gt_num_points) > 0
        gt = ground_truth.select(keep)
        pred = predictions.select(self._in_range(predictions))
        order = np.argsort(-pred.scores, kind="stable")[: self.max_boxes_per_sample]
        pred = pred.select(order)
        self.gt.add_boxes(sample_token, self._to_devkit(gt, sample_token, None, False))
        self.pred.add_boxes(sample_token, self._to_devkit(pred, sample_token, None, True))

    def compute(self) -> dict:
        """``{"ap": {class: {threshold: AP}}, "class_ap": {class: mean AP}, "mAP", "num_gt": {class: n}}``.

        ``class_ap`` and ``mAP`` average only the classes that have ground truth (the devkit's
        mAP counts absent classes as 0 over the official 10).
        """
        from nuscenes.eval.common.utils import center_distance
        from nuscenes.eval.detection.algo import accumulate, calc_ap

        num_gt = {c: 0 for c in DETECTION_CLASSES}
        for box in self.gt.all:
            num_gt[box.detection_name] += 1
        ap: dict[str, dict[float, float]] = {}
        for cls in DETECTION_CLASSES:
            if not num_gt[cls]:
                continue
            ap[cls] = {}
            for th in self.dist_ths:
                md = accumulate(self.gt, self.pred, cls, center_distance, th)
                ap[cls][th] = calc_ap(md, self.min_recall, self.min_precision)
        class_ap = {c: float(np.mean(list(v.values()))) for c, v in ap.items()}
        return {"ap": ap, "class_ap": class_ap, "mAP": float(np.mean(list(class_ap.values()))) if class_ap else 0.0,
                "num_gt": {c: n for c, n in num_gt.items() if n}}


def format_ap_table(result: Mapping, title: str = "") -> str:
    """The AP table of :meth:`NuScenesDetectionAP.compute` as text, one row per class.

    Args:
        result: what ``compute()`` returned.
        title: a heading line.
    """
    ths = sorted({th for v in result["ap"].values() for th in v})
    lines = [title] if title else []
    lines.append(f"{'class':<22}{'gt':>5}" + "".join(f"{f'AP@{th:g}m':>9}" for th in ths) + f"{'mean':>8}")
    for cls, per in result["ap"].items():
        lines.append(f"{cls:<22}{result['num_gt'][cls]:>5}" + "".join(f"{per[th]:>9.3f}" for th in ths)
                     + f"{result['class_ap'][cls]:>8.3f}")
    lines.append(f"{'mAP (classes with gt)':<27}" + " " * 9 * len(ths) + f"{result['mAP']:>8.3f}")
    return "\n".join(lines)

"""Detection mAP for PCB defects: the core's :class:`vlsdk.metrics.detection.DetectionMAP` with
the six DeepPCB classes as its default (registered as ``industrial.map``).

Numbers are the core's: COCO 101-point mAP@0.5 and @0.5:0.95 as pycocotools computes them, and
DeepPCB's criterion (a hit at IoU > 0.33) with precision, recall and F-score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlsdk.metrics import detection as _detection
from vlsdk.metrics.detection import COCO_IOU_THRESHOLDS, MAPResult, average_precision, greedy_match, iou_matrix
from vlsdk_industrial.samples import DEEPPCB_CLASSES

__all__ = ["COCO_IOU_THRESHOLDS", "DetectionMAP", "MAPResult", "average_precision", "greedy_match", "iou_matrix"]


class DetectionMAP(_detection.DetectionMAP):
    """:class:`vlsdk.metrics.detection.DetectionMAP` defaulting to the DeepPCB classes.

    Args:
        class_names: one name per class id (default the six DeepPCB classes).
        **options: ``iou_thresholds``, ``deeppcb_iou``, ``max_detections``, ``score_threshold``.

    Raises:
        ValueError: bad arguments.
    """

    def __init__(self, class_names: Sequence[str] = DEEPPCB_CLASSES, **options: Any) -> None:
        super().__init__(class_names, **options)

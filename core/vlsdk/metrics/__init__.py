"""Generic task metrics: detection mAP (COCO's, checked against pycocotools) and segmentation Dice.

Names are imported on first use.
"""

from __future__ import annotations

from vlsdk._lazy import lazy_exports

_EXPORTS = {
    "DetectionMAP": "vlsdk.metrics.detection",
    "DiceMetric": "vlsdk.metrics.segmentation",
    "MAPResult": "vlsdk.metrics.detection",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

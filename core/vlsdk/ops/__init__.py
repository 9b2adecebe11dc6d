"""Vectorised tensor ops shared by heads and metrics."""

from vlsdk.ops.boxes import batched_nms, box_area, box_iou, clip_boxes, generalized_box_iou, nms

__all__ = ["batched_nms", "box_area", "box_iou", "clip_boxes", "generalized_box_iou", "nms"]

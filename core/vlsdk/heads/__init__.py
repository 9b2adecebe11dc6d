"""Task heads on the encoder's feature pyramid: detection, segmentation and depth.

Every head follows :class:`Head`: ``head(features) -> output``, ``head.loss(output, targets)`` and
``head.decode(output)``.
"""

from __future__ import annotations

from vlsdk.heads.base import ConvNormAct, Head, resolve_strides
from vlsdk.heads.depth import DepthHead, DepthOutput, silog_loss
from vlsdk.heads.detection import DetectionHead, DetectionOutput, Detections, assign_targets, pad_targets
from vlsdk.heads.segmentation import (
    SegmentationHead,
    SegmentationOutput,
    SegmentationPrediction,
    UNetDecoder,
    soft_dice,
)

__all__ = [
    "Head",
    "ConvNormAct",
    "resolve_strides",
    "UNetDecoder",
    "DetectionHead",
    "DetectionOutput",
    "Detections",
    "assign_targets",
    "pad_targets",
    "SegmentationHead",
    "SegmentationOutput",
    "SegmentationPrediction",
    "soft_dice",
    "DepthHead",
    "DepthOutput",
    "silog_loss",
]

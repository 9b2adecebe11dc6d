"""COCO JSON detection reader: the core's :class:`vlsdk.data.coco.COCODataset`, re-exported."""

from __future__ import annotations

from vlsdk.data.coco import COCODataset

__all__ = ["COCODataset"]

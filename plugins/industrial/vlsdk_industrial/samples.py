"""The industrial sample format: the core's (:mod:`vlsdk.data.samples`) plus the DeepPCB classes.

Every industrial dataset, synthesizer and transform speaks the core sample format, a plain
``dict``: ``"image"`` ``(H, W, C)`` ``uint8`` (``C = 1`` for binarised boards, ``2`` when the
defect-free template is stacked as a second channel, ``3`` for RGB), ``"boxes"`` ``(n, 4)``
``float32`` xyxy pixels (``n`` may be 0: a defect-free board), ``"labels"`` ``(n,)`` ``int64``
class ids from 0, ``"path"`` and optional metadata. Errors, skipping, image reading (Pillow) and
batching come from the core and are re-exported here so existing imports keep working.
"""

from __future__ import annotations

from vlsdk.data.samples import DataError, OnError, SkipLog, Skipped, collate, empty_targets, read_image

__all__ = [
    "DEEPPCB_CLASSES",
    "DataError",
    "OnError",
    "SkipLog",
    "Skipped",
    "collate",
    "empty_targets",
    "read_image",
]

#: The six DeepPCB defect classes, in label order (DeepPCB's type ``k`` is label ``k - 1``).
DEEPPCB_CLASSES: tuple[str, ...] = ("open", "short", "mousebite", "spur", "copper", "pin-hole")

"""Generic detection and segmentation data: readers, transforms and COCO output.

Readers (:class:`COCODataset`, :class:`VOCDataset`, :class:`MaskFolderDataset`) yield the sample
format of :mod:`vlsdk.data.samples`; :mod:`vlsdk.data.transforms` resizes and flips samples;
:mod:`vlsdk.data.coco_results` writes COCO results and ground truth and runs pycocotools. Names
are imported on first use.
"""

from __future__ import annotations

from vlsdk._lazy import lazy_exports

_EXPORTS = {
    "COCODataset": "vlsdk.data.coco",
    "Compose": "vlsdk.data.transforms",
    "DataError": "vlsdk.data.samples",
    "MaskFolderDataset": "vlsdk.data.mask_folder",
    "OnError": "vlsdk.data.samples",
    "RandomFlip": "vlsdk.data.transforms",
    "Resize": "vlsdk.data.transforms",
    "SkipLog": "vlsdk.data.samples",
    "Skipped": "vlsdk.data.samples",
    "VOCDataset": "vlsdk.data.voc",
    "coco_ground_truth": "vlsdk.data.coco_results",
    "coco_results": "vlsdk.data.coco_results",
    "cocoeval_summary": "vlsdk.data.coco_results",
    "collate": "vlsdk.data.samples",
    "empty_targets": "vlsdk.data.samples",
    "read_image": "vlsdk.data.samples",
    "read_mask": "vlsdk.data.mask_folder",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""The core plugin's task parts: generic datasets, transforms, metrics and tasks any domain can use.

Loaded by the plugin host as part of the core plugin ``vlsdk``; each object is imported inside its
hook, so listing plugins imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlsdk.plugins.markers import hookimpl

if TYPE_CHECKING:
    from vlsdk.plugins.registry import Registrar


@hookimpl
def vlsdk_register_datasets(register: Registrar) -> None:
    """Generic detection and segmentation adapters: ``coco``, ``voc``, ``mask_folder``."""
    from vlsdk.data.coco import COCODataset
    from vlsdk.data.mask_folder import MaskFolderDataset
    from vlsdk.data.voc import VOCDataset

    register("coco", COCODataset, description="COCO JSON detection annotations (images, annotations, categories)")
    register("voc", VOCDataset, description="Pascal VOC XML detection annotations")
    register("mask_folder", MaskFolderDataset, description="images/ and masks/ (PNG label maps) paired by file stem")


@hookimpl
def vlsdk_register_transforms(register: Registrar) -> None:
    """Generic box- and mask-aware transforms: ``resize``, ``flip``."""
    from vlsdk.data.transforms import RandomFlip, Resize

    register("resize", Resize, description="resize to size x size (boxes scaled, masks nearest)")
    register("flip", RandomFlip, description="random horizontal flip (boxes and masks follow)")


@hookimpl
def vlsdk_register_metrics(register: Registrar) -> None:
    """Generic metrics: ``detection.map`` (COCO mAP, DeepPCB criterion), ``segmentation.dice``."""
    from vlsdk.metrics.detection import DetectionMAP
    from vlsdk.metrics.segmentation import DiceMetric

    register("detection.map", DetectionMAP, description="COCO 101-point mAP@0.5:0.95, @0.5, @0.75, per class")
    register("segmentation.dice", DiceMetric, description="Dice per class and mean over the foreground classes")


@hookimpl
def vlsdk_register_tasks(register: Registrar) -> None:
    """Generic tasks: ``detection`` and ``segmentation`` composed from registered parts."""
    from vlsdk.tasks.detection import DetectionTask
    from vlsdk.tasks.segmentation import SegmentationTask

    register("detection", DetectionTask, description=DetectionTask.description)
    register("segmentation", SegmentationTask, description=SegmentationTask.description)

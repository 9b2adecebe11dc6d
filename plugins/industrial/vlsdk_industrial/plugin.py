"""The industrial plugin's hooks (entry point ``industrial = "vlsdk_industrial.plugin"``).

Importing this module checks the ``industrial`` extra first, so without it the plugin manager lists
the plugin as unavailable with the ``pip install "vlsdk[industrial]"`` hint.
"""

from __future__ import annotations

import os

from vlsdk.plugins.errors import require_extra

# albumentations asks PyPI for its latest version when imported (a network call, and a warning
# offline); vlsdk pins the 2.0.x line, so skip that unless the user set the variable.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
require_extra("industrial", "albumentations")

from vlsdk.plugins import hookimpl


@hookimpl
def vlsdk_register_experts(register):
    """Register the ``industrial.pcb_defect`` expert."""
    from vlsdk_industrial.experts import PcbDefectExpert

    register(
        "industrial.pcb_defect",
        PcbDefectExpert,
        description="1 x k and k x 1 strip depthwise convs + GELU FFN for PCB traces and defects",
    )


@hookimpl
def vlsdk_register_datasets(register):
    """Register the DeepPCB, Pascal VOC, COCO JSON and image-folder readers."""
    from vlsdk_industrial.coco import COCODataset
    from vlsdk_industrial.deeppcb import DeepPCBDataset
    from vlsdk_industrial.folder import ImageFolder
    from vlsdk_industrial.voc import VOCDataset

    register("industrial.deeppcb", DeepPCBDataset,
             description="DeepPCB pairs (trainval/test lists), optional template as a second channel")
    register("industrial.voc", VOCDataset, description="Pascal VOC XML (PKU-Market-PCB, labelling tools)")
    register("industrial.coco", COCODataset, description="COCO JSON detection annotations")
    register("industrial.folder", ImageFolder, description="a folder of board images for inference")


@hookimpl
def vlsdk_register_transforms(register):
    """Register the box-aware albumentations pipeline as ``industrial.default``."""
    from vlsdk_industrial.transforms import build_transforms

    register("industrial.default", build_transforms,
             description="flips, 90-degree rotations, small affine, brightness/contrast, noise, blur; box-aware")


@hookimpl
def vlsdk_register_metrics(register):
    """Register ``industrial.map`` (mAP@0.5, mAP@0.5:0.95 and DeepPCB's IoU > 0.33 criterion)."""
    from vlsdk_industrial.metrics import DetectionMAP

    register("industrial.map", DetectionMAP,
             description="COCO 101-point mAP@0.5 and @0.5:0.95, DeepPCB criterion (IoU > 0.33), per class")


@hookimpl
def vlsdk_register_synthesizers(register):
    """Register the synthetic PCB boards as ``industrial.boards``."""
    from vlsdk_industrial.synth import BoardSynthesizer

    register("industrial.boards", BoardSynthesizer,
             description="procedural PCB boards with the six DeepPCB defects at known boxes, and templates")


@hookimpl
def vlsdk_register_commands(register):
    """Register ``vlsdk pcb``: train and evaluate a PCB defect detector on DeepPCB."""
    from vlsdk_industrial.cli import configure, run

    register("pcb", run, configure=configure, help="train + evaluate PCB defect detection on DeepPCB",
             description="Train on DeepPCB trainval (optionally mixed with synthetic boards), evaluate on test "
                         "(mAP@0.5, mAP@0.5:0.95, DeepPCB IoU > 0.33), save the model and a PNG of predictions.")


@hookimpl
def vlsdk_register_demos(register):
    """Register the industrial part of ``vlsdk demo`` (synthetic boards only)."""
    from vlsdk_industrial.demo import run_demo

    register("industrial", run_demo,
             description="tiny detector + industrial.pcb_defect expert trained on synthetic boards; mAP@0.5, "
                         "DeepPCB criterion, predictions PNG")


@hookimpl
def vlsdk_register_tasks(register):
    """Register the ``industrial.pcb`` task (``vlsdk train``, ``vlsdk pcb``)."""
    from vlsdk_industrial.task import PcbTask

    register("industrial.pcb", PcbTask, description=PcbTask.description, extra="industrial")

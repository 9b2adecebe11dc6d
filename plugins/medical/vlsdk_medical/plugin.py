"""The medical plugin's hooks (entry point ``medical = "vlsdk_medical.plugin"``).

Importing this module checks the ``medical`` extra first, so without it the plugin manager lists
the plugin as unavailable with the ``pip install "vlsdk[medical]"`` hint.
"""

from __future__ import annotations

from vlsdk.plugins.errors import require_extra

require_extra("medical", "monai", "pydicom", "nibabel", "skimage")

from vlsdk.plugins import hookimpl


@hookimpl
def vlsdk_register_experts(register):
    """Register the ``medical.lesion`` expert."""
    from vlsdk_medical.experts import LesionExpert

    register(
        "medical.lesion",
        LesionExpert,
        description="local-contrast depthwise-conv FFN for small low-contrast lesions",
    )


@hookimpl
def vlsdk_register_input_readers(register):
    """Register ``medical.nifti`` and ``medical.dicom``: NIfTI volumes and DICOM series for ``vlsdk predict``."""
    from vlsdk_medical.predict import DICOM_KIND, DICOM_READER, NIFTI_KIND, NIFTI_READER

    register(NIFTI_KIND, NIFTI_READER, description=NIFTI_READER.description)
    register(DICOM_KIND, DICOM_READER, description=DICOM_READER.description)


@hookimpl
def vlsdk_register_output_writers(register):
    """Register ``medical.nifti_mask`` (NIfTI with the input's affine) and ``medical.dicom_seg`` (plus DICOM SEG)."""
    from vlsdk_medical.predict import DICOM_MASK_WRITER, NIFTI_MASK_WRITER

    register("medical.nifti_mask", NIFTI_MASK_WRITER, description=NIFTI_MASK_WRITER.description)
    register("medical.dicom_seg", DICOM_MASK_WRITER, description=DICOM_MASK_WRITER.description)


@hookimpl
def vlsdk_register_datasets(register):
    """Register ``medical.dicom``, ``medical.nifti`` and ``medical.lesion_slices``."""
    from vlsdk_medical.dataset import DicomDataset, NiftiDataset, lesion_slices

    register("medical.dicom", DicomDataset,
             description="DICOM series folders/files as volumes (HU, ordered along the slice normal), SEG labels")
    register("medical.nifti", NiftiDataset,
             description="NIfTI (any MONAI LoadImage format) volumes, MONAI Orientation to RAS, spacing in meta")
    register("medical.lesion_slices", lesion_slices,
             description="lesion image/label pairs as 2D slices or 3D patches with MONAI augmentation")


@hookimpl
def vlsdk_register_transforms(register):
    """Register the ``medical.default`` MONAI pipeline."""
    from vlsdk_medical.transforms import default_transforms

    register("medical.default", default_transforms,
             description="MONAI: intensity/windowing, lesion/background-balanced crops, flips, affine")


@hookimpl
def vlsdk_register_metrics(register):
    """Register ``medical.dice`` and ``medical.hd95`` (per case and overall)."""
    from vlsdk_medical.metrics import CaseDice, CaseHD95

    register("medical.dice", CaseDice, description="Dice per case and overall (monai.metrics.DiceMetric)")
    register("medical.hd95", CaseHD95,
             description="95th-percentile Hausdorff distance in mm per case (monai.metrics)")


@hookimpl
def vlsdk_register_synthesizers(register):
    """Register the ``medical.lesions`` synthesizer."""
    from vlsdk_medical.synth import LesionSynthesizer

    register("medical.lesions", LesionSynthesizer,
             description="random lesions on smooth tissue with randomised contrast, noise, size and count")


@hookimpl
def vlsdk_register_commands(register):
    """Register ``vlsdk medical-lesion`` (the ``medical.lesion`` task with its own flags) and ``vlsdk dicom-info``."""
    from vlsdk_medical.cli import add_arguments, configure_dicom_info, run_dicom_info, run_from_args

    register("medical-lesion", run_from_args, configure=add_arguments,
             help="train the lesion segmenter on BraTS and report held-out Dice (--quick for CI)")
    register("dicom-info", run_dicom_info, configure=configure_dicom_info,
             help="print geometry (ordered along the slice normal), HU range and skipped files of DICOM input")


@hookimpl
def vlsdk_register_demos(register):
    """Register the ``medical`` part of ``vlsdk demo`` (lesion segmentation on synthetic images)."""
    from vlsdk_medical.demo import run_demo

    register("medical", run_demo,
             description="tiny model + medical.lesion expert trained on synthetic lesions; MONAI Dice on held-out "
                         "images")


@hookimpl
def vlsdk_register_tasks(register):
    """Register the ``medical.lesion`` task (``vlsdk train``, ``vlsdk eval``): BraTS lesion segmentation."""
    from vlsdk_medical.task import LesionTask

    register("medical.lesion", LesionTask, description=LesionTask.description, extra="medical")

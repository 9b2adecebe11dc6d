"""``vlsdk predict`` for volumes: NIfTI files and DICOM series in; the mask as NIfTI (and DICOM SEG) out.

:data:`NIFTI_READER` reads ``.nii``/``.nii.gz`` files with nibabel as stored (no reorientation,
no resampling, intensities as on disk) and cuts them into slices along the third voxel axis;
:data:`DICOM_READER` reads a DICOM series folder (or one ``.dcm`` file) with
:func:`~vlsdk_medical.dicom.load_dicom` (slices ordered along the normal, modality rescale: HU for
CT). :data:`NIFTI_MASK_WRITER` segments the volume slice by slice
(:func:`~vlsdk_medical.inference.predict_volume`, sliding window in the slice plane) and writes the
label map as a ``uint8`` NIfTI with the input's affine, so it overlays the input in any viewer,
plus a PNG of the slice with the most foreground; :data:`DICOM_MASK_WRITER` writes the same for a
DICOM input plus ``<stem>_seg.dcm``, a DICOM SEG object referencing the source series
(:func:`~vlsdk_medical.dicom_seg.write_dicom_seg`). A model trained with 2.5D context
(``context_slices`` recorded in its ``config.json``) gets each slice with the same neighbouring
slices as channels.

NaN or inf in a volume (voxels, a NIfTI affine or scale factor, a DICOM rescale) is an error
naming the file, the field or how many voxels: one NaN voxel would otherwise erase its slice's
prediction.

Example::

    vlsdk predict scan.nii.gz --model runs/lesion/checkpoint --out preds
    # preds/scan.lesion.nii.gz (same shape and affine as scan.nii.gz), preds/scan.lesion.png
    vlsdk predict ct_series/ --model runs/lesion/checkpoint --out preds
    # preds/ct_series.lesion.nii.gz, preds/ct_series.lesion.png, preds/ct_series.lesion_seg.dcm
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsdk.predict_io import HeadPrediction, InputReader, OutputWriter, PredictInput, fit_channels

__all__ = ["read_nifti", "read_dicom", "write_nifti_mask", "write_dicom_mask", "check_finite_voxels",
           "NIFTI_READER", "NIFTI_MASK_WRITER", "NIFTI_KIND", "DICOM_READER", "DICOM_MASK_WRITER", "DICOM_KIND"]

#: The NIfTI reader's registered name (the inputs' ``kind``).
NIFTI_KIND = "medical.nifti"
#: The DICOM reader's registered name.
DICOM_KIND = "medical.dicom"
#: Voxel axis the volume is cut along (the third: axial for RAS/LPS volumes).
SLICE_AXIS = 2


def check_finite_voxels(data: np.ndarray, path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` and the count when ``data`` holds NaN or inf.

    Args:
        data: the volume's voxel values.
        path: its file or folder.

    Raises:
        ValueError: ``scan.nii.gz: 1 of 1920 voxel values are non-finite (NaN or inf) ...``.
    """
    bad = int(np.count_nonzero(~np.isfinite(data))) if np.issubdtype(data.dtype, np.floating) else 0
    if bad:
        raise ValueError(f"{path}: {bad} of {data.size} voxel values are non-finite (NaN or inf); vlsdk predict "
                         "does not guess values for them: fix or mask the volume")


def _model_input(data: np.ndarray, path: Path, model: Any,
                 model_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(C, X, Y, Z)`` voxels as the model's ``(Z, C', X, Y)`` slices: ``(volume, slices, context_slices)``."""
    from vlsdk_medical.inference import recorded_input, stack_context

    check_finite_voxels(data, path)
    recorded = recorded_input(model_dir) if model_dir is not None else None
    context = int(recorded["context_slices"]) if recorded else 0
    width = 2 * context + 1
    if int(model.config.in_chans) % width:
        raise ValueError(f"{model_dir}: the model takes {model.config.in_chans} channels, not a multiple of "
                         f"2 * context_slices + 1 = {width}")
    want = int(model.config.in_chans) // width
    modalities = recorded.get("modalities") if recorded else None
    names = (tuple(modalities) if modalities and len(modalities) == want
             else model.metadata.channels(want) if not context else tuple(f"modality_{i}" for i in range(want)))
    data = fit_channels(data, path, names)  # a missing modality is an error naming it, unless --repeat-channels
    volume = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))  # (C, X, Y, Z)
    slices = stack_context(volume, torch.arange(volume.shape[SLICE_AXIS + 1]), context, SLICE_AXIS)  # (Z, C', X, Y)
    return volume, slices, context


def read_nifti(path: Path, model: Any, model_dir: Path) -> PredictInput:
    """A NIfTI volume as ``(Z, C', X, Y)`` slices; ``meta`` keeps the volume, affine, header and context.

    ``C' = C * (2N + 1)`` with the ``N`` context slices the model records in its ``config.json``
    (:func:`~vlsdk_medical.inference.recorded_input`; 0 when it records none).

    Args:
        path: a ``.nii``/``.nii.gz`` file: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` voxels.
        model: the model (its ``in_chans`` must match ``C * (2N + 1)``; a missing modality is an error unless ``--repeat-channels``).
        model_dir: the model's folder (its recorded input).

    Raises:
        ValueError: an unreadable file or header, NaN/inf in the affine or scale factors (naming the
            field) or in voxels (counted), not a 3D/4D volume, or a channel count the model cannot take.
    """
    import nibabel as nib

    from vlsdk_medical.nifti import check_nifti_header

    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - any nibabel failure is an unreadable file
        raise ValueError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from None
    check_nifti_header(img, path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - voxels the header promises but the file lacks, a bad dtype
        raise ValueError(f"{path}: cannot read the NIfTI voxels ({type(err).__name__}: {err})") from None
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    else:
        raise ValueError(f"{path}: expected a 3D volume (X, Y, Z) or (X, Y, Z, C), got shape {data.shape}")
    volume, slices, context = _model_input(data, path, model, model_dir)
    return PredictInput(path, slices, NIFTI_KIND, {"volume": volume, "affine": np.asarray(img.affine),
                                                   "header": img.header, "axis": SLICE_AXIS,
                                                   "context_slices": context})


def read_dicom(path: Path, model: Any, model_dir: Path) -> PredictInput:
    """A DICOM series folder (or one file) as ``(Z, C', X, Y)`` slices, like :func:`read_nifti`.

    The volume is :func:`~vlsdk_medical.dicom.load_dicom`'s: ``(columns, rows, slices)`` ordered
    along the slice normal, values after ``RescaleSlope``/``RescaleIntercept``, RAS affine;
    ``meta["dicom"]`` keeps the :class:`~vlsdk_medical.dicom.DicomVolume` for the SEG writer.

    Args:
        path: a folder holding one image series, or a ``.dcm`` file.
        model: the model.
        model_dir: the model's folder.

    Files of the folder that are not images of the series are left out with one
    :class:`~vlsdk_medical.dicom.DicomSkipWarning` counting them.

    Raises:
        DicomError: an unreadable or truncated image file, a broken rescale or geometry (naming
            the file and tag), several series in the folder.
        ValueError: NaN/inf voxels (counted) or a channel count the model cannot take.
    """
    from vlsdk_medical.dicom import DicomSkipWarning, load_dicom

    vol = load_dicom(path, warn=False) if Path(path).is_dir() else load_dicom(path)
    if vol.skipped:  # counted, one warning for the folder
        reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in vol.skipped[:3])
        warnings.warn(f"{path}: {len(vol.skipped)} file(s) left out of the series ({reasons}"
                      f"{'; ...' if len(vol.skipped) > 3 else ''})", DicomSkipWarning, stacklevel=2)
    volume, slices, context = _model_input(vol.array[None], path, model, model_dir)
    return PredictInput(path, slices, DICOM_KIND, {"volume": volume, "affine": vol.affine, "header": None,
                                                   "axis": SLICE_AXIS, "context_slices": context, "dicom": vol,
                                                   "model_dir": Path(model_dir)})


def _segment_and_save(prediction: HeadPrediction) -> tuple[np.ndarray, int, dict[str, Any]]:
    """Segment, write ``<stem>.nii.gz`` and the PNG; returns the ``(X, Y, Z)`` labels, the head's outputs, the entry."""
    import nibabel as nib

    from vlsdk.predict import overlay_labels
    from vlsdk_medical.inference import predict_volume, probs_to_labels

    meta = prediction.input.meta
    volume = meta["volume"]
    probs = predict_volume(prediction.model, volume, head=prediction.name, axis=meta["axis"],
                           context_slices=meta.get("context_slices", 0), device=prediction.options.get("device"))
    labels = probs_to_labels(probs).numpy().astype(np.uint8)  # (X, Y, Z)
    affine = meta["affine"]
    out = nib.Nifti1Image(labels, affine)  # a fresh header: no scaling or dtype carried over from the input
    header = meta["header"]  # NIfTI-1 or -2: keep what the affine means (scanner/aligned) and the units
    if header is None:  # a DICOM series: scanner coordinates in mm
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
        out.header.set_xyzt_units("mm")
    else:
        out.set_qform(affine, code=int(header["qform_code"]) or 1)
        out.set_sform(affine, code=int(header["sform_code"]) or 1)
        out.header.set_xyzt_units(*header.get_xyzt_units())
    path = prediction.out_dir / f"{prediction.stem}.nii.gz"
    nib.save(out, str(path))
    z = int(labels.reshape(-1, labels.shape[-1]).astype(bool).sum(0).argmax())  # the slice with most foreground
    picture = overlay_labels(volume[..., z], torch.from_numpy(labels[..., z].astype(np.int64)),
                             prediction.out_dir / f"{prediction.stem}.png")
    entry = {"task": prediction.task, "mask": str(path), "shape": list(labels.shape), "affine": affine.tolist(),
             "voxels_per_label": np.bincount(labels.reshape(-1)).tolist(), "slice": z, "picture": picture}
    return labels, int(probs.shape[0]), entry


def write_nifti_mask(prediction: HeadPrediction) -> dict[str, Any]:
    """Segment the volume and write ``<stem>.nii.gz`` (``uint8`` labels, the input's affine) and a PNG.

    Returns:
        ``task``, ``mask`` (the NIfTI path), ``shape``, ``affine``, ``voxels_per_label``,
        ``slice`` (the slice drawn) and ``picture``.
    """
    return _segment_and_save(prediction)[2]


def write_dicom_mask(prediction: HeadPrediction) -> dict[str, Any]:
    """:func:`write_nifti_mask` for a DICOM series, plus ``<stem>_seg.dcm``: a DICOM SEG referencing it.

    Segments are named by the model's recorded ``class_names`` (``config.json``'s
    ``medical_input``) or ``"lesion"`` / ``"class k"``. A series whose files lack the UIDs a SEG
    must reference (anonymised exports blank them) gets the NIfTI only, one warning, and the
    reason in ``dicom_seg_skipped``.

    Returns:
        :func:`write_nifti_mask`'s entry with ``dicom_seg`` (the SEG path, or ``None``).
    """
    from vlsdk_medical.dicom import DicomError
    from vlsdk_medical.dicom_seg import segment_names, write_dicom_seg
    from vlsdk_medical.inference import recorded_input

    labels, num_classes, entry = _segment_and_save(prediction)
    model_dir = prediction.input.meta["model_dir"]
    recorded = recorded_input(model_dir)
    names = segment_names(num_classes, (recorded or {}).get("class_names"))
    path = prediction.out_dir / f"{prediction.stem}_seg.dcm"
    try:
        entry["dicom_seg"] = str(write_dicom_seg(labels, prediction.input.meta["dicom"], path, names,
                                                 model_dir=model_dir, head=prediction.name))
    except DicomError as err:
        warnings.warn(f"no DICOM SEG written for {prediction.input.path}: {err}", UserWarning, stacklevel=2)
        entry["dicom_seg"], entry["dicom_seg_skipped"] = None, str(err)
    entry["segments"] = names
    return entry


def _is_dicom_input(path: Path, model_dir: Path) -> bool:
    """A ``.dcm`` file, or a folder holding a file with the DICOM preamble (``DICM`` at byte 128)."""
    if not path.is_dir():
        return True
    for item in sorted(path.iterdir()):
        if item.is_file():
            with item.open("rb") as f:
                if f.read(132)[128:] == b"DICM":
                    return True
    return False



NIFTI_READER = InputReader(suffixes=(".nii", ".nii.gz"), read=read_nifti,
                           description="NIfTI volumes as stored (nibabel), cut into slices along the third axis")
DICOM_READER = InputReader(suffixes=(".dcm",), read=read_dicom, applies=_is_dicom_input, directories=True,
                           description="DICOM series folders (or .dcm files): slices ordered along the normal, "
                                       "modality rescale (HU), cut into slices")
NIFTI_MASK_WRITER = OutputWriter(task="segmentation", write=write_nifti_mask, inputs=(NIFTI_KIND,),
                                 description="the predicted label map as uint8 NIfTI with the input's affine, "
                                             "plus a PNG of the slice with most foreground")
DICOM_MASK_WRITER = OutputWriter(task="segmentation", write=write_dicom_mask, inputs=(DICOM_KIND,),
                                 description="the predicted label map as NIfTI (RAS affine) and as a DICOM SEG "
                                             "referencing the source series (highdicom), plus a PNG")

"""``vlsdk predict`` for volumes: NIfTI in, the predicted mask as NIfTI on the input's grid and affine out.

:data:`NIFTI_READER` reads ``.nii``/``.nii.gz`` files with nibabel as stored (no reorientation,
no resampling, intensities as on disk) and cuts them into slices along the third voxel axis;
:data:`NIFTI_MASK_WRITER` segments the volume slice by slice (:func:`~vlsdk_medical.inference.predict_volume`,
sliding window in the slice plane) and writes the label map as a ``uint8`` NIfTI with the
input's affine, so it overlays the input in any viewer, plus a PNG of the slice with the most
foreground. A model trained with 2.5D context (``context_slices`` recorded in its ``config.json``)
gets each slice with the same neighbouring slices as channels.

Example::

    vlsdk predict scan.nii.gz --model runs/lesion/checkpoint --out preds
    # preds/scan.lesion.nii.gz (same shape and affine as scan.nii.gz), preds/scan.lesion.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsdk.predict_io import HeadPrediction, InputReader, OutputWriter, PredictInput

__all__ = ["read_nifti", "write_nifti_mask", "NIFTI_READER", "NIFTI_MASK_WRITER", "NIFTI_KIND"]

#: The reader's registered name (the inputs' ``kind``).
NIFTI_KIND = "medical.nifti"
#: Voxel axis the volume is cut along (the third: axial for RAS/LPS volumes).
SLICE_AXIS = 2


def read_nifti(path: Path, model: Any, model_dir: Path) -> PredictInput:
    """A NIfTI volume as ``(Z, C', X, Y)`` slices; ``meta`` keeps the volume, affine, header and context.

    ``C' = C * (2N + 1)`` with the ``N`` context slices the model records in its ``config.json``
    (:func:`~vlsdk_medical.inference.recorded_input`; 0 when it records none).

    Args:
        path: a ``.nii``/``.nii.gz`` file: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` voxels.
        model: the model (its ``in_chans`` must match ``C * (2N + 1)``; one channel is repeated to fit).
        model_dir: the model's folder (its recorded input).

    Raises:
        ValueError: not a 3D/4D volume, or a channel count the model cannot take.
    """
    import nibabel as nib

    from vlsdk_medical.inference import recorded_input, stack_context

    recorded = recorded_input(model_dir) if model_dir is not None else None
    context = int(recorded["context_slices"]) if recorded else 0
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - any nibabel failure is an unreadable file
        raise ValueError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from None
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    else:
        raise ValueError(f"{path}: expected a 3D volume (X, Y, Z) or (X, Y, Z, C), got shape {data.shape}")
    width = 2 * context + 1
    if int(model.config.in_chans) % width:
        raise ValueError(f"{model_dir}: the model takes {model.config.in_chans} channels, not a multiple of "
                         f"2 * context_slices + 1 = {width}")
    want = int(model.config.in_chans) // width
    if data.shape[0] != want:
        if data.shape[0] != 1:
            raise ValueError(f"{path} has {data.shape[0]} channels but the model takes {want}"
                             + (f" (times {width} context slices)" if context else ""))
        data = np.repeat(data, want, 0)
    volume = torch.from_numpy(np.ascontiguousarray(data))  # (C, X, Y, Z)
    slices = stack_context(volume, torch.arange(volume.shape[SLICE_AXIS + 1]), context, SLICE_AXIS)  # (Z, C', X, Y)
    return PredictInput(path, slices, NIFTI_KIND, {"volume": volume, "affine": np.asarray(img.affine),
                                                   "header": img.header, "axis": SLICE_AXIS,
                                                   "context_slices": context})


def write_nifti_mask(prediction: HeadPrediction) -> dict[str, Any]:
    """Segment the volume and write ``<stem>.nii.gz`` (``uint8`` labels, the input's affine) and a PNG.

    Returns:
        ``task``, ``mask`` (the NIfTI path), ``shape``, ``affine``, ``voxels_per_label``,
        ``slice`` (the slice drawn) and ``picture``.
    """
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
    out.set_qform(affine, code=int(header["qform_code"]) or 1)
    out.set_sform(affine, code=int(header["sform_code"]) or 1)
    out.header.set_xyzt_units(*header.get_xyzt_units())
    path = prediction.out_dir / f"{prediction.stem}.nii.gz"
    nib.save(out, str(path))
    z = int(labels.reshape(-1, labels.shape[-1]).astype(bool).sum(0).argmax())  # the slice with most foreground
    picture = overlay_labels(volume[..., z], torch.from_numpy(labels[..., z].astype(np.int64)),
                             prediction.out_dir / f"{prediction.stem}.png")
    return {"task": prediction.task, "mask": str(path), "shape": list(labels.shape), "affine": affine.tolist(),
            "voxels_per_label": np.bincount(labels.reshape(-1)).tolist(), "slice": z, "picture": picture}


NIFTI_READER = InputReader(suffixes=(".nii", ".nii.gz"), read=read_nifti,
                           description="NIfTI volumes as stored (nibabel), cut into slices along the third axis")
NIFTI_MASK_WRITER = OutputWriter(task="segmentation", write=write_nifti_mask, inputs=(NIFTI_KIND,),
                                 description="the predicted label map as uint8 NIfTI with the input's affine, "
                                             "plus a PNG of the slice with most foreground")

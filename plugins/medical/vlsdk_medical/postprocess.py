"""Post-processing of predicted lesion label maps: brain-mask restriction and 3D connected components.

A slice-by-slice 2D segmenter scores each slice on its own, so it leaves isolated false-positive
specks far from the tumour; one speck 70 mm away dominates HD95. Two cheap, standard fixes,
applied per volume:

* ``"mask"``: zero every prediction outside the brain: the case's brain mask when it ships one
  (``brainmask.nii.gz`` beside the label, as in the BraTS data), else the image foreground: voxels
  where any channel differs from its constant background value, read at the corner voxel (0 for
  raw skull-stripped MRI; ``-mean/std`` for the z-scored BraTS files, where ``!= 0`` would keep
  the whole volume).
* ``"lcc"``: keep the largest 3D connected component of the whole-tumour mask (label > 0) with
  MONAI's ``KeepLargestConnectedComponent`` (full 26-connectivity); with ``min_size`` instead
  drop only the components smaller than ``min_size`` mm³ (MONAI ``RemoveSmallObjects``), which keeps
  a second real lesion of a multifocal tumour. Classes (``--classes brats``) are kept inside the
  surviving whole-tumour mask.

Both need ``scikit-image`` (MONAI's connected-component labelling on CPU).

Example:
    >>> brain = foreground_mask(image)                                  # (C, X, Y, Z) -> (X, Y, Z)
    >>> clean = postprocess_labels(pred, "mask+lcc", brain=brain)       # (X, Y, Z) labels
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["BRAIN_MASK_FILE", "POSTPROCESS_MODES", "case_brain_mask", "foreground_mask", "keep_largest_component",
           "parse_postprocess", "postprocess_labels", "remove_small_components"]

#: Post-processing choices of the pipeline's ``--postprocess``.
POSTPROCESS_MODES = ("none", "mask", "lcc", "mask+lcc")
#: The brain mask file of a BraTS patient folder (DeepMedic layout).
BRAIN_MASK_FILE = "brainmask.nii.gz"


def parse_postprocess(mode: str) -> tuple[bool, bool]:
    """``(restrict_to_brain, connected_components)`` of a :data:`POSTPROCESS_MODES` name.

    Args:
        mode: ``"none"``, ``"mask"``, ``"lcc"`` or ``"mask+lcc"``.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in POSTPROCESS_MODES:
        raise ValueError(f"postprocess must be one of {POSTPROCESS_MODES}, got {mode!r}")
    return "mask" in mode, "lcc" in mode


def _need_skimage() -> None:
    import importlib.util

    if importlib.util.find_spec("skimage") is None:
        raise ImportError("connected components on CPU need scikit-image (MONAI's labelling): "
                          "pip install scikit-image")


def _binary(mask: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D mask without channel axis, got shape {tuple(mask.shape)}")
    return mask > 0


def keep_largest_component(mask: torch.Tensor, connectivity: int | None = None) -> torch.Tensor:
    """The largest connected component of a binary mask (MONAI ``KeepLargestConnectedComponent``).

    Args:
        mask: ``(X, Y[, Z])`` mask (non-zero = foreground).
        connectivity: neighbours as in ``skimage.measure.label`` (1 = faces only; ``None`` = full,
            26-connectivity in 3D).

    Returns:
        A bool mask of the same shape; all False if ``mask`` is empty.
    """
    from monai.transforms import KeepLargestConnectedComponent

    fg = _binary(mask)
    if not fg.any():
        return fg
    _need_skimage()
    lcc = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=connectivity)
    return torch.as_tensor(lcc(fg[None].to(torch.uint8)))[0].bool()


def remove_small_components(mask: torch.Tensor, min_size: float, spacing: Sequence[float] | None = None
                            ) -> torch.Tensor:
    """Drop connected components smaller than ``min_size`` (MONAI ``RemoveSmallObjects``, full connectivity).

    Args:
        mask: ``(X, Y[, Z])`` mask (non-zero = foreground).
        min_size: smallest kept component: mm³ (mm² in 2D) when ``spacing`` is given, else voxels.
        spacing: voxel size per axis in mm.

    Returns:
        A bool mask of the same shape.
    """
    from monai.transforms import RemoveSmallObjects

    if not min_size > 0:
        raise ValueError(f"min_size must be > 0, got {min_size}")
    fg = _binary(mask)
    if spacing is not None and len(spacing) != fg.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {fg.ndim}-D mask")
    if not fg.any():
        return fg
    _need_skimage()
    import warnings

    remove = RemoveSmallObjects(min_size=min_size, connectivity=fg.ndim, by_measure=spacing is not None,
                                pixdim=list(spacing) if spacing is not None else None)
    with warnings.catch_warnings():  # skimage >= 0.26 renames min_size (MONAI still passes it)
        warnings.simplefilter("ignore", FutureWarning)
        return torch.as_tensor(remove(fg[None].to(torch.uint8)))[0].bool()


def foreground_mask(image: torch.Tensor, background: float | None = None) -> torch.Tensor:
    """Foreground of a channel-first image: voxels where any channel differs from its background value.

    For skull-stripped MRI (BraTS) this is the brain: the background is one constant per channel,
    0 in raw images and ``-mean/std`` once z-scored inside the brain (on the 4 BraTS patients of
    the shipped data this equals ``brainmask.nii.gz`` voxel for voxel).

    Args:
        image: ``(C, *spatial)`` image.
        background: the background intensity of every channel; ``None``: each channel's value at
            the first corner voxel (the image must not reach into that corner).
    """
    image = torch.as_tensor(image)
    if image.ndim < 3:
        raise ValueError(f"expected a channel-first (C, *spatial) image, got shape {tuple(image.shape)}")
    ref = (image[(slice(None),) + (slice(0, 1),) * (image.ndim - 1)] if background is None
           else torch.full((), float(background), dtype=image.dtype))
    return (image != ref).any(0)


def case_brain_mask(case: Any, image: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The brain mask of a case on its image grid (``(X, Y, Z)`` bool) and where it came from.

    A :class:`~vlsdk_medical.dataset.LesionCase` with a ``brainmask.nii.gz`` beside its label gets
    that file, loaded like the images (MONAI, reoriented to RAS); anything else gets
    :func:`foreground_mask` of ``image``.

    Args:
        case: a ``LesionCase`` (files) or ``LesionVolume`` (in memory).
        image: the case's ``(C, X, Y, Z)`` image as loaded by the dataset.

    Returns:
        ``(mask, source)`` with ``source`` the mask file or ``"foreground"``.

    Raises:
        VolumeError: a mask file whose grid differs from the image's.
    """
    label = getattr(case, "label", None)
    path = Path(label).parent / BRAIN_MASK_FILE if isinstance(label, str) else None
    if path is None or not path.is_file():
        return foreground_mask(image), "foreground"
    from vlsdk_medical.nifti import VolumeError, load_volume

    mask = load_volume(str(path)).as_tensor()[0] > 0
    if tuple(mask.shape) != tuple(image.shape[1:]):
        raise VolumeError(f"{path}: brain mask shape {tuple(mask.shape)} differs from the image's "
                          f"{tuple(image.shape[1:])}")
    return mask, str(path)


def postprocess_labels(labels: torch.Tensor, mode: str, *, brain: torch.Tensor | None = None,
                       min_size: float | None = None, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Post-process one case's label map (0 = background) as ``mode`` says (see the module doc).

    Args:
        labels: ``(X, Y[, Z])`` integer labels of one case (a whole volume: components are 3D).
        mode: one of :data:`POSTPROCESS_MODES`.
        brain: bool mask of the same shape (needed when ``mode`` contains ``"mask"``).
        min_size: with ``"lcc"``: instead of keeping only the largest component, drop components
            smaller than this (mm³ with ``spacing``, else voxels).
        spacing: voxel size in mm, for ``min_size``.

    Returns:
        The cleaned labels (same shape and dtype).
    """
    use_mask, use_cc = parse_postprocess(mode)
    labels = torch.as_tensor(labels)
    if use_mask:
        if brain is None:
            raise ValueError(f"postprocess {mode!r} needs the brain mask (brain=...)")
        if tuple(brain.shape) != tuple(labels.shape):
            raise ValueError(f"brain mask {tuple(brain.shape)} and labels {tuple(labels.shape)} differ in shape")
        labels = labels * brain.to(labels.device, labels.dtype)
    if use_cc:
        keep = (keep_largest_component(labels) if min_size is None
                else remove_small_components(labels, min_size, spacing))
        labels = labels * keep.to(labels.device, labels.dtype)
    return labels

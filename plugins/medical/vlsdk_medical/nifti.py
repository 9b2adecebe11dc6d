"""NIfTI (and whatever MONAI's ``LoadImage`` reads) with the orientation normalised by MONAI.

Volumes come back as channel-first MONAI ``MetaTensor`` ``(C, X, Y, Z)`` reoriented with
``monai.transforms.Orientation`` to ``axcodes`` (``"RAS"`` by default): a pure axis permutation and
flip, never a resampling. ``meta["spacing"]`` holds the voxel size in mm after reorientation and
``meta["original_axcodes"]`` the orientation on disk.

Example:
    >>> img = load_volume("Flair.nii.gz")                              # doctest: +SKIP
    >>> img.shape, img.meta["spacing"]                                 # doctest: +SKIP
    (torch.Size([1, 240, 240, 155]), (1.0, 1.0, 1.0))
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# MONAI >= 1.6 builds an NvImgCodecPydicomReader in every LoadImage(); without the optional
# nvImageCodec GPU decoder each construction logs and warns that it fell back to pydicom, which tells
# the user nothing. Both are silenced by their exact text, nothing else from MONAI.
_NVIMGCODEC_LOG = "nvImageCodec is not available; skipping pydicom decoder plugin registration."
_NVIMGCODEC_WARNING = r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully"
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").addFilter(lambda r: r.getMessage() != _NVIMGCODEC_LOG)

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = ["VolumeError", "check_nifti_header", "load_volume", "load_image_label", "volume_spacing", "axcodes_of"]

_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class VolumeError(ValueError):
    """An image or label volume that cannot be used as asked; the message names the file(s)."""


def _valid_axcodes(axcodes: object) -> bool:
    if not isinstance(axcodes, str) or len(axcodes) != 3 or any(c not in "LRPAIS" for c in axcodes.upper()):
        return False
    return sorted(next(i for i, pair in enumerate(_LABELS) if c in pair) for c in axcodes.upper()) == [0, 1, 2]


def axcodes_of(affine: Any) -> str:
    """Orientation codes of an affine, e.g. ``"RAS"`` or ``"LPS"``.

    Args:
        affine: ``(4, 4)`` array or tensor.
    """
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def check_nifti_header(img: Any, path: str | os.PathLike[str]) -> None:
    """Raise :class:`VolumeError` naming the field when a NIfTI header's geometry or scaling is NaN/inf.

    The sform (``srow_x/y/z``, when ``sform_code`` > 0), the qform (``quatern_b/c/d``,
    ``qoffset_x/y/z``, when ``qform_code`` > 0), the voxel sizes (``pixdim[1:4]``) and the
    ``scl_slope``/``scl_inter`` scaling are checked. A NaN ``scl_slope`` is NIfTI's (and nibabel's)
    "no scaling" and passes; an infinite one does not. Readers would otherwise fall back on another
    affine or on no scaling without a word.

    Args:
        img: a ``nibabel`` NIfTI-1/2 image loaded from ``path`` (its header is read again as
            stored: nibabel resets the scaling fields of the loaded one).
        path: its file, for the message.

    Raises:
        VolumeError: ``scan.nii: header field srow_x (sform) is [nan, 0.0, 0.0, 0.0]; expected finite numbers``.
    """
    import nibabel as nib

    holder = img.file_map.get("header") or img.file_map["image"]
    with nib.openers.ImageOpener(holder.filename or holder.fileobj) as f:
        header = type(img.header).from_fileobj(f, check=False)
    fields = []
    if int(header.get("sform_code", 0)):
        fields += ["srow_x", "srow_y", "srow_z"]
    if int(header.get("qform_code", 0)):
        fields += ["quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"]
    fields += ["pixdim", "scl_slope", "scl_inter"]
    for name in fields:
        if name not in header:
            continue
        value = np.asarray(header[name], dtype=np.float64)
        value = value[1:4] if name == "pixdim" else value
        bad = np.isinf(value) if name.startswith("scl_") else ~np.isfinite(value)
        if bad.any():
            where = " (sform)" if name.startswith("srow") else " (qform)" if name[:2] in ("qu", "qo") else ""
            raise VolumeError(f"{path}: header field {name}{where} is {value.tolist()}; expected finite numbers "
                              "(the voxels cannot be placed in space or scaled)")


def volume_spacing(affine: Any) -> tuple[float, ...]:
    """Voxel size in mm along each array axis, from the affine's column norms.

    Args:
        affine: ``(4, 4)`` array or tensor.
    """
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))


def _check_nifti_file(path: str) -> None:
    """:func:`check_nifti_header` on a file's header (nibabel reads no voxels for it)."""
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - any nibabel failure is a broken file
        raise VolumeError(f"{path}: cannot read NIfTI header ({type(exc).__name__}: {exc})") from None
    check_nifti_header(img, path)


def load_volume(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, axcodes: str | None = "RAS",
                dtype: Any = np.float32, reader: str | None = None) -> MetaTensor:
    """Load a volume (several files stack as channels) and reorient it to ``axcodes``.

    Args:
        path: a NIfTI file (or anything MONAI's ``LoadImage`` reads), or several files of the
            same grid, which become channels (e.g. FLAIR and T1c).
        axcodes: target orientation for ``monai.transforms.Orientation``; ``None`` keeps the
            orientation on disk.
        dtype: array dtype.
        reader: MONAI reader name (default: MONAI picks by extension).

    Raises:
        VolumeError: a file is missing or unreadable, or several files disagree in shape or affine.
    """
    from monai.transforms import LoadImage, Orientation

    if axcodes is not None and not _valid_axcodes(axcodes):
        raise ValueError(f"axcodes must be three orientation letters like 'RAS', got {axcodes!r}")
    paths = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]
    if not paths:
        raise ValueError("load_volume: got no files")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NVIMGCODEC_WARNING, category=UserWarning,
                                module=r"monai\.data\.image_reader")
        loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=dtype)
    images = []
    for p in paths:
        if not Path(p).exists():
            raise VolumeError(f"{p}: no such file")
        if p.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_file(p)
        try:
            images.append(loader(p))
        except Exception as exc:  # noqa: BLE001 - any reader failure is a broken file
            raise VolumeError(f"{p}: cannot read volume ({type(exc).__name__}: {exc})") from None
    first = images[0]
    for p, img in zip(paths[1:], images[1:], strict=True):
        if img.shape[1:] != first.shape[1:]:
            raise VolumeError(f"{p}: shape {tuple(img.shape[1:])} differs from {paths[0]} "
                              f"{tuple(first.shape[1:])}; not resampling")
        if not np.allclose(img.affine.numpy(), first.affine.numpy(), atol=1e-3):
            raise VolumeError(f"{p}: affine differs from {paths[0]}; the volumes are not on one grid")
    if len(images) > 1:
        from monai.data import MetaTensor

        first = MetaTensor(np.concatenate([i.numpy() for i in images], 0), affine=first.affine,
                           meta={k: v for k, v in first.meta.items() if k != "affine"})
    original = axcodes_of(first.affine)
    if axcodes is not None:
        first = Orientation(axcodes=axcodes.upper(), labels=_LABELS)(first)
    first.meta["spacing"] = volume_spacing(first.affine)
    first.meta["original_axcodes"] = original
    first.meta["filename_or_obj"] = paths[0] if len(paths) == 1 else paths
    return first


def load_image_label(image: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                     label: str | os.PathLike[str], *, axcodes: str | None = "RAS"
                     ) -> tuple[MetaTensor, MetaTensor]:
    """Load an image (one or more channels) and its label map on the same grid.

    Args:
        image: image file(s).
        label: label file.
        axcodes: target orientation (see :func:`load_volume`).

    Raises:
        VolumeError: the label's shape or affine differs from the image's (naming both files).
    """
    img = load_volume(image, axcodes=axcodes)
    lab = load_volume(label, axcodes=axcodes)
    if lab.shape[0] != 1:
        raise VolumeError(f"{label}: a label map must have one channel, got {lab.shape[0]}")
    first = image if isinstance(image, (str, os.PathLike)) else list(image)[0]
    if lab.shape[1:] != img.shape[1:]:
        raise VolumeError(f"image/label shape mismatch: {first} is {tuple(img.shape[1:])} but {label} is "
                          f"{tuple(lab.shape[1:])}; not resampling")
    if not np.allclose(lab.affine.numpy(), img.affine.numpy(), atol=1e-3):
        raise VolumeError(f"image/label affine mismatch between {first} and {label}: the label is not on the "
                          "image grid")
    return img, lab

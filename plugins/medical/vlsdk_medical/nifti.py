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

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = ["VolumeError", "load_volume", "load_image_label", "volume_spacing", "axcodes_of"]

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


def volume_spacing(affine: Any) -> tuple[float, ...]:
    """Voxel size in mm along each array axis, from the affine's column norms.

    Args:
        affine: ``(4, 4)`` array or tensor.
    """
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))


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
    loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=dtype)
    images = []
    for p in paths:
        if not Path(p).exists():
            raise VolumeError(f"{p}: no such file")
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

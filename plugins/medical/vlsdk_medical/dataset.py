"""Datasets: lesion image/label pairs as 2D slices or 3D patches, NIfTI volumes and DICOM series.

Registered as ``medical.lesion_slices`` (:func:`lesion_slices`), ``medical.nifti``
(:class:`NiftiDataset`) and ``medical.dicom`` (:class:`DicomDataset`).

A :class:`LesionSliceDataset` sample is a dict:

* ``"image"``: ``(C, H, W)`` (or ``(C, D, H, W)`` patches) float32 tensor;
* ``"label"``: ``(1, H, W)`` float tensor of class indices (MONAI's channel-first convention;
  ``sample["label"][0].long()`` is the ``(H, W)`` target of the core segmentation head);
* ``"case"``, ``"index"`` (slice index along the slice axis, ``-1`` for patches) and
  ``"spacing"`` (mm of the image axes).

With ``context_slices=N`` (2.5D) a slice's ``"image"`` holds ``C * (2N + 1)`` channels: every
modality at the ``N`` slices below and above it as well
(:func:`~vlsdk_medical.inference.stack_context`), so the MONAI transforms crop, flip and warp
them together.

Example:
    >>> cases = find_brats_cases("../shared/data/brats_lesion_mri", split="train")  # doctest: +SKIP
    >>> ds = LesionSliceDataset(cases, roi_size=128, seed=0)                          # doctest: +SKIP
    >>> ds[0]["image"].shape                                                          # doctest: +SKIP
    torch.Size([2, 128, 128])
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsdk_medical.dicom import DicomSkipWarning, load_dicom, load_dicom_seg
from vlsdk_medical.inference import stack_context
from vlsdk_medical.nifti import VolumeError, load_image_label, load_volume
from vlsdk_medical.transforms import default_transforms, seed_transforms

__all__ = [
    "LesionCase",
    "LesionVolume",
    "LesionSliceDataset",
    "NiftiDataset",
    "DicomDataset",
    "find_brats_cases",
    "lesion_slices",
    "collate_samples",
]

#: BraTS file names per modality in the DeepMedic layout of ``brats_lesion_mri``.
BRATS_FILES = {"flair": "Flair_subtrMeanDivStd.nii.gz", "t1c": "T1c_subtrMeanDivStd.nii.gz"}
BRATS_LABEL = "OTMultiClass.nii.gz"


@dataclass(frozen=True)
class LesionCase:
    """One patient: image file(s) (channels) and a label map file.

    Attributes:
        case_id: a name for reports, e.g. ``"brats_2013_pat0005_1"``.
        images: image files, one per channel, on one grid.
        label: the label map file.
    """

    case_id: str
    images: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class LesionVolume:
    """One patient already in memory (e.g. a DICOM series with its DICOM SEG labels).

    Attributes:
        case_id: a name for reports.
        image: ``(C, X, Y, Z)`` image.
        label: ``(1, X, Y, Z)`` label map on the same grid.
        spacing: voxel size in mm of the three spatial axes.

    Example:
        >>> vol = load_dicom_series("ct_dir"); seg = load_dicom_seg("seg.dcm", vol)  # doctest: +SKIP
        >>> LesionVolume("pat1", torch.from_numpy(vol.array)[None],
        ...              torch.from_numpy(seg.label_map())[None], vol.spacing)       # doctest: +SKIP
    """

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    spacing: tuple[float, float, float]

    def __post_init__(self) -> None:
        image, label = torch.as_tensor(self.image), torch.as_tensor(self.label)
        if image.ndim != 4 or label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(f"{self.case_id}: expected image (C, X, Y, Z) and label (1, X, Y, Z), got "
                             f"{tuple(image.shape)} and {tuple(label.shape)}")
        if image.shape[1:] != label.shape[1:]:
            raise VolumeError(f"{self.case_id}: image/label shape mismatch {tuple(image.shape[1:])} vs "
                              f"{tuple(label.shape[1:])}; not resampling")
        if len(self.spacing) != 3:
            raise ValueError(f"{self.case_id}: spacing must have 3 values, got {self.spacing!r}")


def find_brats_cases(root: str | os.PathLike[str], split: str | Sequence[str] | None = None,
                     modalities: Sequence[str] = ("flair", "t1c")) -> list[LesionCase]:
    """The BraTS patients under ``root`` (``brats_lesion_mri`` layout), sorted by name.

    Args:
        root: the ``brats_lesion_mri`` folder (or its ``brats2015TrainingData``).
        split: ``"train"``, ``"validation"``, ``"test"``, several of them, or ``None`` for all.
        modalities: channels, from ``"flair"`` and ``"t1c"``.

    Raises:
        ValueError: unknown modality or split, or no patients found.
    """
    bad = [m for m in modalities if m not in BRATS_FILES]
    if bad or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {sorted(BRATS_FILES)}, got {list(modalities)}")
    base = Path(root)
    if (base / "brats2015TrainingData").is_dir():
        base = base / "brats2015TrainingData"
    splits = ["train", "validation", "test"] if split is None else [split] if isinstance(split, str) else list(split)
    for s in splits:
        if s not in ("train", "validation", "test"):
            raise ValueError(f"split must be 'train', 'validation' or 'test', got {s!r}")
    cases = []
    for s in splits:
        for d in sorted((base / s).glob("*")) if (base / s).is_dir() else []:
            if (d / BRATS_LABEL).is_file():
                images = tuple(str(d / BRATS_FILES[m]) for m in modalities)
                cases.append(LesionCase(d.name, images, str(d / BRATS_LABEL)))
    if not cases:
        raise ValueError(f"no BraTS patients (folders with {BRATS_LABEL}) under {base} for splits {splits}")
    return sorted(cases, key=lambda c: c.case_id)


def collate_samples(batch: Sequence[dict[str, Any] | Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Collate samples (lists of crops are flattened) into a batch dict of stacked tensors.

    Args:
        batch: samples or lists of samples from a dataset.
    """
    flat: list[dict[str, Any]] = []
    for item in batch:
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    if not flat:
        raise ValueError("collate_samples: empty batch")
    out: dict[str, Any] = {}
    for key in flat[0]:
        values = [s[key] for s in flat]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack([torch.as_tensor(v) for v in values])
        else:
            out[key] = values
    return out


class LesionSliceDataset(torch.utils.data.Dataset):
    """Image/label volumes served as 2D slices or 3D patches through MONAI transforms.

    Volumes are loaded once (orientation normalised to RAS by MONAI, never resampled) and kept
    in memory. With ``spatial_dims=2`` each item is one slice along ``axis``; which slices are
    used is set by ``slices``. With ``spatial_dims=3`` each item is a patch of a volume
    (``patches_per_volume`` per case). Random transforms are re-seeded per item from
    ``(seed, epoch, index)``, so a sample depends only on those, not on worker order.

    Args:
        cases: the patients: files (:class:`LesionCase`, loaded with MONAI, reoriented to RAS)
            or volumes in memory (:class:`LesionVolume`, e.g. DICOM + SEG; used as given).
        spatial_dims: 2 (slices) or 3 (patches).
        transform: ``"default"`` (:func:`~vlsdk_medical.transforms.default_transforms` with
            ``roi_size`` and ``train``), ``None`` (raw slices) or any callable on sample dicts.
        roi_size: crop size for the default transform.
        train: random augmentation in the default transform.
        label_mode: ``"binary"`` (lesion = label > 0, e.g. whole tumour) or ``"multiclass"``
            (labels kept; ``label_values`` maps them to 0..K-1).
        label_values: for ``"multiclass"``: the label values in class order (0 = background
            first), e.g. ``(0, 1, 2, 3, 4)``; other values raise.
        slices: for 2D: ``"foreground"`` (slices with non-zero image), ``"lesion"`` (slices with
            lesion), ``"all"``.
        axis: slice axis of the ``(X, Y, Z)`` volume (2 = axial for RAS).
        patches_per_volume: for 3D: items per case.
        max_slices_per_case: keep at most this many slices per case, evenly spaced (quick runs).
        seed: base seed of the random transforms.
        repeats: the dataset lists every slice/patch this many times, each repeat with its own
            augmentation stream (item ``i`` is slice ``i % n`` augmented with seed ``(seed, i)``):
            a step-based trainer that shuffles indices then sees fresh crops on every visit.
        context_slices: for 2D: also feed the ``N`` slices below and above each slice (of every
            modality, the border slice repeated at the volume's edges) as channels:
            ``num_channels`` becomes ``C * (2N + 1)`` (0: the slice alone).
        transform_options: extra options for the default transform (``intensity``, ``pos``...).

    Raises:
        VolumeError: a label that does not match its image (shape or affine).
        ValueError: bad arguments.
    """

    def __init__(self, cases: Sequence[LesionCase | LesionVolume], *, spatial_dims: int = 2,
                 transform: str | Callable[..., Any] | None = "default", roi_size: Sequence[int] | int = 128,
                 train: bool = True, label_mode: str = "binary", label_values: Sequence[int] | None = None,
                 slices: str = "foreground", axis: int = 2, patches_per_volume: int = 4,
                 max_slices_per_case: int | None = None, seed: int = 0, repeats: int = 1,
                 context_slices: int = 0, transform_options: dict[str, Any] | None = None) -> None:
        if not cases:
            raise ValueError("LesionSliceDataset needs at least one case")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if label_mode not in ("binary", "multiclass"):
            raise ValueError(f"label_mode must be 'binary' or 'multiclass', got {label_mode!r}")
        if slices not in ("foreground", "lesion", "all"):
            raise ValueError(f"slices must be 'foreground', 'lesion' or 'all', got {slices!r}")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2 (of the X, Y, Z volume), got {axis!r}")
        if int(patches_per_volume) < 1:
            raise ValueError(f"patches_per_volume must be >= 1, got {patches_per_volume}")
        if max_slices_per_case is not None and int(max_slices_per_case) < 1:
            raise ValueError(f"max_slices_per_case must be >= 1 or None, got {max_slices_per_case}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
        if not isinstance(context_slices, int) or context_slices < 0:
            raise ValueError(f"context_slices must be an int >= 0, got {context_slices!r}")
        if context_slices and spatial_dims != 2:
            raise ValueError(f"context_slices is for 2D slices; got spatial_dims={spatial_dims}")
        self.repeats, self.context_slices = repeats, context_slices
        self.cases = list(cases)
        self.spatial_dims, self.axis, self.seed, self.epoch = spatial_dims, axis, seed, 0
        self.label_mode = label_mode
        self.label_values = None if label_values is None else np.asarray(label_values)
        if transform == "default":
            transform = default_transforms(train=train, spatial_dims=spatial_dims, roi_size=roi_size,
                                           **(transform_options or {}))
        elif isinstance(transform, str):
            raise ValueError(f"transform must be 'default', None or a callable, got {transform!r}")
        self.transform = transform
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.spacings: list[tuple[float, ...]] = []
        index: list[tuple[int, int]] = []
        for ci, case in enumerate(self.cases):
            if isinstance(case, LesionVolume):
                img_t, lab_t, spacing = torch.as_tensor(case.image).float(), torch.as_tensor(case.label), case.spacing
            else:
                img, lab = load_image_label(case.images, case.label)
                img_t, lab_t, spacing = img.as_tensor().float(), lab.as_tensor(), img.meta["spacing"]
            self.images.append(img_t)
            self.labels.append(self._labels(lab_t, case))
            self.spacings.append(tuple(float(v) for v in spacing))
            if spatial_dims == 3:
                index += [(ci, -1)] * int(patches_per_volume)
                continue
            if slices == "all":
                keep = torch.ones(img_t.shape[axis + 1], dtype=torch.bool)
            else:
                vol = self.labels[-1] > 0 if slices == "lesion" else self.images[-1] != 0
                keep = vol.movedim(axis + 1, 0).flatten(1).any(1)
            ks = torch.nonzero(keep).flatten()
            if max_slices_per_case is not None and len(ks) > max_slices_per_case:
                ks = ks[torch.linspace(0, len(ks) - 1, int(max_slices_per_case)).round().long()]
            index += [(ci, int(k)) for k in ks]
        if not index:
            raise ValueError(f"no slices selected (slices={slices!r}) in cases {[c.case_id for c in self.cases]}")
        self.index = index

    def _labels(self, lab: torch.Tensor, case: LesionCase | LesionVolume) -> torch.Tensor:
        if self.label_mode == "binary":
            return (lab > 0).float()
        values = torch.as_tensor(self.label_values if self.label_values is not None else np.unique(lab.numpy()))
        found = torch.unique(lab)
        unknown = found[~torch.isin(found, values.to(found.dtype))]
        if unknown.numel():
            where = case.label if isinstance(case, LesionCase) else case.case_id
            raise VolumeError(f"{where}: label values {unknown.tolist()} not in label_values {values.tolist()}")
        return torch.searchsorted(values.to(lab.dtype).contiguous(), lab.contiguous()).float()

    @property
    def num_channels(self) -> int:
        """Image channels of an item: modalities times ``2 * context_slices + 1``."""
        return int(self.images[0].shape[0]) * (2 * self.context_slices + 1)

    def slice_images(self, case: int, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """``(S, num_channels, a, b)`` model input of slices ``index`` of case ``case``, context included.

        Args:
            case: position of the case in ``cases``.
            index: slice indices along ``axis``.
        """
        return stack_context(self.images[case], index, self.context_slices, self.axis)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (call once per epoch for fresh random crops).

        Args:
            epoch: the epoch number (>= 0).
        """
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index) * self.repeats

    def raw(self, i: int) -> dict[str, Any]:
        """Item ``i`` before the transform."""
        ci, k = self.index[i % len(self.index)]
        img, lab = self.images[ci], self.labels[ci]
        spacing = self.spacings[ci]
        if k >= 0:
            img = self.slice_images(ci, [k])[0] if self.context_slices else img.select(self.axis + 1, k)
            lab = lab.select(self.axis + 1, k)
            spacing = tuple(s for d, s in enumerate(spacing) if d != self.axis)
        return {"image": img, "label": lab, "case": self.cases[ci].case_id, "index": k, "spacing": spacing}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        i %= len(self)
        sample = self.raw(i)
        if self.transform is None:
            return sample
        extra = {k: sample.pop(k) for k in ("case", "index", "spacing")}
        seed_transforms(self.transform, (self.seed * 1_000_003 + self.epoch * 7_919 + i) % (2**32))
        with warnings.catch_warnings():  # background-only slices: MONAI warns it cannot balance
            warnings.filterwarnings("ignore", message=".*unable to generate class balanced samples.*")
            out = self.transform(sample)
        if isinstance(out, list):
            if len(out) != 1:
                return [self._finish(o, extra) for o in out]  # type: ignore[return-value]
            out = out[0]
        return self._finish(out, extra)

    @staticmethod
    def _finish(out: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        res = {k: (v.as_tensor() if hasattr(v, "as_tensor") else v) for k, v in out.items()}
        res["image"] = torch.as_tensor(res["image"]).float()
        res["label"] = torch.as_tensor(res["label"]).round()
        res.update(extra)
        return res


def lesion_slices(root: str | os.PathLike[str] | None = None, *, cases: Sequence[LesionCase] | None = None,
                  split: str | Sequence[str] | None = None, modalities: Sequence[str] = ("flair", "t1c"),
                  **options: Any) -> LesionSliceDataset:
    """Factory registered as ``medical.lesion_slices``: BraTS-layout folder or explicit cases.

    Args:
        root: a ``brats_lesion_mri``-layout folder (ignored when ``cases`` is given).
        cases: explicit :class:`LesionCase` list.
        split: BraTS split(s) under ``root``.
        modalities: BraTS channels.
        **options: :class:`LesionSliceDataset` options.
    """
    if cases is None:
        if root is None:
            raise ValueError("lesion_slices needs root= (a BraTS-layout folder) or cases=")
        cases = find_brats_cases(root, split, modalities)
    return LesionSliceDataset(cases, **options)


class NiftiDataset(torch.utils.data.Dataset):
    """Image (and optional label) volumes read by MONAI, orientation normalised (``medical.nifti``).

    Args:
        items: dicts with ``"image"`` (a path or list of paths = channels) and optionally
            ``"label"``; or plain image paths.
        axcodes: target orientation (MONAI ``Orientation``).
        transform: callable applied to each sample dict.

    Each sample holds ``"image"`` (and ``"label"``) as MONAI ``MetaTensor`` ``(C, X, Y, Z)`` with
    ``meta["spacing"]``, plus ``"spacing"``.
    """

    def __init__(self, items: Sequence[dict[str, Any] | str | os.PathLike[str]], *, axcodes: str | None = "RAS",
                 transform: Callable[..., Any] | None = None) -> None:
        if not items:
            raise ValueError("NiftiDataset needs at least one item")
        self.items = [dict(i) if isinstance(i, dict) else {"image": os.fspath(i)} for i in items]
        for it in self.items:
            if "image" not in it:
                raise ValueError(f"each item needs an 'image' key, got {sorted(it)}")
        self.axcodes, self.transform = axcodes, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        if "label" in item:
            img, lab = load_image_label(item["image"], item["label"], axcodes=self.axcodes)
            sample: dict[str, Any] = {"image": img, "label": lab}
        else:
            sample = {"image": load_volume(item["image"], axcodes=self.axcodes)}
        sample["spacing"] = tuple(sample["image"].meta["spacing"])
        return self.transform(sample) if self.transform is not None else sample


class DicomDataset(torch.utils.data.Dataset):
    """DICOM series folders or files as volumes, optionally with DICOM SEG labels (``medical.dicom``).

    Args:
        items: series folders / files, or dicts ``{"image": folder_or_file, "label": seg_file}``.
        window: apply a window preset (``"soft_tissue"``, ``"lung"``, ``"bone"``...) or
            ``(center, width)`` and scale to [0, 1]; ``None`` keeps HU.
        transform: callable applied to each sample dict.
        **load_options: passed to :func:`~vlsdk_medical.dicom.load_dicom` (``space``,
            ``tolerance``...).

    Each sample holds ``"image"`` as a ``MetaTensor`` ``(1, X, Y, Z)``, ``"label"`` ``(1, X, Y, Z)``
    (segment numbers) when a SEG is given, ``"spacing"``, ``"skipped"`` (files left out) and
    ``"summary"``.
    """

    def __init__(self, items: Sequence[dict[str, Any] | str | os.PathLike[str]], *,
                 window: str | tuple[float, float] | None = None, transform: Callable[..., Any] | None = None,
                 **load_options: Any) -> None:
        if not items:
            raise ValueError("DicomDataset needs at least one item")
        self.items = [dict(i) if isinstance(i, dict) else {"image": os.fspath(i)} for i in items]
        self.window, self.transform, self.load_options = window, transform, load_options
        if window is not None:
            from vlsdk_medical.dicom import window_bounds

            window_bounds(window)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from vlsdk_medical.dicom import apply_window

        item = self.items[i]
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", DicomSkipWarning)
            vol = load_dicom(item["image"], **self.load_options)
        image = vol.to_metatensor()
        if self.window is not None:
            image = apply_window(image, self.window)
        sample: dict[str, Any] = {"image": image, "spacing": vol.spacing, "skipped": vol.skipped,
                                  "summary": vol.summary()}
        if "label" in item:
            seg = load_dicom_seg(item["label"], vol)
            sample["label"] = torch.from_numpy(seg.label_map(allow_overlap=True).astype(np.int64))[None]
            sample["segment_labels"] = seg.segment_labels
        return self.transform(sample) if self.transform is not None else sample


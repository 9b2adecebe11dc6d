"""DICOM with pydicom: single files, series folders, multi-frame files, windowing, DICOM SEG labels.

Geometry follows DICOM PS3.3 C.7.6.2 and MONAI's ``PydicomReader`` layout, so a volume drops into
MONAI transforms unchanged:

* the array is ``(X, Y, Z)`` = ``(columns, rows, slices)``, as MONAI's reader returns it
  (``swap_ij=True``);
* slices are ordered by ``ImagePositionPatient`` projected on the slice normal
  ``row x column`` (ascending), never by file name or ``InstanceNumber``;
* the affine maps ``(i, j, k, 1)`` to patient millimetres, RAS by default (MONAI's and nibabel's
  convention) or LPS (DICOM's), with the column spacing, row spacing and the measured slice step;
* stored values go through ``RescaleSlope``/``RescaleIntercept`` (Hounsfield units for CT).

Nothing is resampled or silently reordered: a series whose slice steps disagree, whose slices are
tilted or duplicated, or that mixes ``SeriesInstanceUID`` values raises :class:`DicomError` naming
the file(s) and the problem. In a folder, files that are not readable DICOM are skipped with a
:class:`DicomSkipWarning` and listed in :attr:`DicomVolume.skipped`.

Example:
    >>> vol = load_dicom_series("ct_dir")                          # doctest: +SKIP
    >>> vol.array.shape, vol.spacing                               # doctest: +SKIP
    ((512, 512, 20), (0.977, 0.977, 2.0))
    >>> lung = apply_window(vol.array, "lung")                     # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pydicom
    from monai.data import MetaTensor

__all__ = [
    "WINDOW_PRESETS",
    "DicomError",
    "DicomSkipWarning",
    "DicomVolume",
    "DicomSegmentation",
    "apply_window",
    "list_dicom_series",
    "load_dicom",
    "load_dicom_series",
    "read_dicom_file",
    "load_dicom_seg",
]

#: Window presets ``name -> (center, width)`` in Hounsfield units (common radiology defaults).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "stroke": (40.0, 40.0),
}

#: DICOM (LPS) <-> RAS: flip the first two world axes.
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class DicomError(ValueError):
    """A DICOM file or series that cannot be loaded as asked; the message names file and problem."""


class DicomSkipWarning(UserWarning):
    """A file in a DICOM folder was skipped (not DICOM, truncated header, other series...)."""


@dataclass
class DicomVolume:
    """A loaded DICOM image volume.

    Attributes:
        array: ``(X, Y, Z)`` float32 values after the modality rescale (HU for CT).
        affine: ``(4, 4)`` voxel -> patient-mm matrix (RAS unless loaded with ``space="LPS"``).
        spacing: ``(column spacing, row spacing, slice step)`` in mm.
        files: the source file of each slice along Z (one path repeated for a multi-frame file).
        series_uid: ``SeriesInstanceUID``.
        modality: ``Modality`` (``"CT"``, ``"MR"``...).
        space: ``"RAS"`` or ``"LPS"``.
        positions: ``(Z, 3)`` ``ImagePositionPatient`` of each slice (LPS, as stored).
        sop_uids: ``SOPInstanceUID`` of each slice (frames of one file share it).
        skipped: ``(path, reason)`` of every file of the folder that was left out.
        rescaled: whether a ``RescaleSlope``/``RescaleIntercept`` was applied.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    files: list[str]
    series_uid: str | None
    modality: str | None
    space: str = "RAS"
    positions: np.ndarray | None = None
    sop_uids: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rescaled: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """``(X, Y, Z)``."""
        return tuple(self.array.shape)

    @property
    def orientation(self) -> str:
        """Axis codes of the affine, e.g. ``"LPS"`` for an axial CT loaded in RAS space."""
        import nibabel as nib

        codes = nib.orientations.aff2axcodes(self._ras_affine())
        return "".join(codes)

    def _ras_affine(self) -> np.ndarray:
        return self.affine if self.space == "RAS" else _LPS_RAS @ self.affine

    def summary(self) -> str:
        """One line: shape, spacing, modality and how many files were skipped (and why)."""
        uid = self.series_uid or "<no SeriesInstanceUID>"
        text = (f"DICOM series {uid} ({self.modality}): {len(self.files)} slices, shape "
                f"{self.shape}, spacing {tuple(round(s, 4) for s in self.spacing)} mm, {self.orientation}")
        if self.skipped:
            reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in self.skipped[:5])
            more = f" (+{len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
            text += f"; skipped {len(self.skipped)} file(s): {reasons}{more}"
        return text

    def to_metatensor(self) -> MetaTensor:
        """A channel-first MONAI ``MetaTensor`` ``(1, X, Y, Z)`` with affine and ``spacing`` meta."""
        import torch
        from monai.data import MetaTensor

        meta = {
            "affine": torch.as_tensor(self._ras_affine(), dtype=torch.float64),
            "original_affine": torch.as_tensor(self._ras_affine(), dtype=torch.float64),
            "spacing": np.asarray(self.spacing),
            "space": "RAS",
            "spatial_shape": np.asarray(self.shape),
            "filename_or_obj": self.files[0] if self.files else "",
            "original_channel_dim": 0,
            "modality": self.modality,
        }
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(self.array))[None], meta=meta)


@dataclass
class DicomSegmentation:
    """Masks from a DICOM SEG object.

    Attributes:
        masks: ``(S, X, Y, Z)`` bool, one mask per segment, on the reference volume's grid when one
            was given, else on the SEG's own frame grid.
        segment_numbers: the ``SegmentNumber`` of each mask.
        segment_labels: ``SegmentLabel`` of each mask.
        affine: the grid's affine (same space as the reference).
        path: the SEG file.
    """

    masks: np.ndarray
    segment_numbers: list[int]
    segment_labels: list[str]
    affine: np.ndarray
    path: str

    def label_map(self, allow_overlap: bool = False) -> np.ndarray:
        """``(X, Y, Z)`` uint16 label map with each voxel set to its ``SegmentNumber`` (0 = none).

        Args:
            allow_overlap: where segments overlap, keep the highest segment number instead of
                raising.
        """
        if not allow_overlap:
            overlap = self.masks.sum(0) > 1
            if overlap.any():
                raise DicomError(f"{self.path}: segments overlap in {int(overlap.sum())} voxels; a label map "
                                 "cannot hold them (use .masks, or label_map(allow_overlap=True))")
        numbers = np.asarray(self.segment_numbers, dtype=np.uint16).reshape(-1, 1, 1, 1)
        return (self.masks * numbers).max(0) if len(numbers) else np.zeros(self.masks.shape[1:], np.uint16)


# -- reading ---------------------------------------------------------------------------------


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - the plugin checks the extra first
        raise ImportError('DICOM support needs pydicom: pip install "vlsdk[medical]"') from exc
    return pydicom


def _read_header(path: str | os.PathLike[str], *, stop_before_pixels: bool) -> pydicom.Dataset:
    """``dcmread`` with every failure turned into a :class:`DicomError` naming the file."""
    pydicom = _pydicom()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DicomError(f"{path}: no such file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except pydicom.errors.InvalidDicomError as exc:
        raise DicomError(f"{path}: not a DICOM file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a broken file
        raise DicomError(f"{path}: unreadable or truncated DICOM ({type(exc).__name__}: {exc})") from None
    for w in caught:  # pydicom warns (and drops the element) where encapsulated pixel data ends early
        if "End of file reached" in str(w.message):
            raise DicomError(f"{path}: truncated DICOM: the file ends inside its pixel data ({w.message})")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    short = _truncated_element(ds)
    if short is not None:
        what = "pixel data unusable: " if "PixelData" in short else ""
        raise DicomError(f"{path}: {what}truncated DICOM: the file ends inside element {short}")
    if not stop_before_pixels and "PixelData" not in ds and "FloatPixelData" not in ds:
        sop_class = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "?")
        raise DicomError(f"{path}: has no pixel data (SOP class {sop_class}, modality {ds.get('Modality', '?')}); "
                         "it is not an image, or the file is truncated")
    return ds


def _truncated_element(ds: pydicom.Dataset) -> str | None:
    """The last element's tag and keyword when the file ended before its value did (pydicom keeps it short)."""
    from pydicom.dataelem import RawDataElement

    tags = list(ds.keys())
    raw = ds.get_item(tags[-1]) if tags else None
    if (isinstance(raw, RawDataElement) and raw.value is not None and raw.length != 0xFFFFFFFF
            and len(raw.value) < raw.length):
        from pydicom.datadict import keyword_for_tag

        return f"{raw.tag} {keyword_for_tag(raw.tag) or 'private'} ({len(raw.value)} of {raw.length} bytes)"
    return None


def _pixels(ds: pydicom.Dataset, path: str) -> np.ndarray:
    """Decoded stored values, with a clear error for missing decoders and truncated pixel data."""
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        name = getattr(tsyntax, "name", tsyntax)
        raise DicomError(f"{path}: cannot decode pixel data in transfer syntax {name!r} ({tsyntax}): no "
                         f"decoder installed. Install one of the plugins pydicom lists: "
                         f"{str(exc).splitlines()[-1].strip()}") from None
    except Exception as exc:  # noqa: BLE001 - truncated or inconsistent pixel data
        raise DicomError(f"{path}: pixel data unusable ({type(exc).__name__}: {exc})") from None


def _floats(ds: Any, keyword: str, n: int, path: str, what: str) -> np.ndarray | None:
    value = ds.get(keyword) if ds is not None else None
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise DicomError(f"{path}: {keyword} ({what}) is not numeric: {value!r}") from None
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise DicomError(f"{path}: {keyword} ({what}) must be {n} finite numbers, got {list(value)!r}")
    return arr


def _pixel_spacing(ds: Any, path: str, require: bool) -> np.ndarray:
    spacing = _floats(ds, "PixelSpacing", 2, path, "row, column spacing")
    if spacing is None:
        if require:
            raise DicomError(f"{path}: missing PixelSpacing (0028,0030); cannot know the voxel size. Pass "
                             "require_spacing=False to assume 1 mm")
        return np.ones(2)
    if (spacing <= 0).any():
        raise DicomError(f"{path}: PixelSpacing must be positive, got {spacing.tolist()}")
    return spacing


def _normal(iop: np.ndarray, path: str) -> np.ndarray:
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DicomError(f"{path}: ImageOrientationPatient {iop.tolist()} is not two orthonormal directions")
    return normal


def _rescale(ds: Any, path: str) -> tuple[float, float] | None:
    """``(slope, intercept)`` of the modality rescale, or ``None`` when neither tag is present.

    Raises:
        DicomError: a slope that is not a finite non-zero number, or an intercept that is not finite
            (naming the file and the tag).
    """
    slope, inter = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None and inter is None:
        return None
    values = []
    for keyword, tag, value, default in (("RescaleSlope", "(0028,1053)", slope, 1.0),
                                         ("RescaleIntercept", "(0028,1052)", inter, 0.0)):
        try:
            number = float(value) if value is not None and value != "" else default
        except (TypeError, ValueError):
            raise DicomError(f"{path}: {keyword} {tag} is not a number: {value!r}") from None
        if not np.isfinite(number) or (keyword == "RescaleSlope" and number == 0.0):
            need = "a finite, non-zero number" if keyword == "RescaleSlope" else "a finite number"
            raise DicomError(f"{path}: {keyword} {tag} is {value!r}; expected {need} (stored values cannot be "
                             "turned into modality units)")
        values.append(number)
    return values[0], values[1]


def _sop_instance_uid(ds: Any) -> str:
    """``SOPInstanceUID``, or the file meta's ``MediaStorageSOPInstanceUID`` where an export blanked it."""
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID") if meta is not None else "")
               or "")


def _assemble(frames: np.ndarray, positions: np.ndarray, iop: np.ndarray, pixel_spacing: np.ndarray,
              files: Sequence[str], *, slice_step: float | None, space: str, tolerance: float
              ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray]:
    """Sort ``(Z, rows, cols)`` frames along the normal, check the steps and build the affine.

    Returns the ``(X, Y, Z)`` array, the affine, the spacing and the sort order.
    """
    normal = _normal(iop, files[0])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    sfiles = [files[i] for i in order]
    n = len(order)
    if n > 1:
        gaps = np.diff(along)
        dup = np.flatnonzero(gaps < 1e-4)
        if dup.size:
            i = int(dup[0])
            raise DicomError(f"{sfiles[i]} and {sfiles[i + 1]}: two slices at the same position "
                             f"{positions[i].tolist()} along the normal; duplicate or mixed acquisitions")
        step = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - step) > max(tolerance, 0.01 * step))
        if bad.size:
            i = int(bad[0])
            raise DicomError(
                f"inconsistent slice spacing: {Path(sfiles[i]).name} -> {Path(sfiles[i + 1]).name} is "
                f"{gaps[i]:.4f} mm but the series' step is {step:.4f} mm ({bad.size} uneven gap(s)); a missing "
                f"slice or a variable-spacing series. Not resampling (folder {Path(sfiles[0]).parent})")
        offsets = positions - positions[0]
        inplane = offsets - np.outer(offsets @ normal, normal)
        if np.abs(inplane).max() > max(tolerance, 0.01 * step):
            raise DicomError(f"{Path(sfiles[0]).parent}: slice positions do not lie along the slice normal "
                             f"(gantry tilt or sheared series, {np.abs(inplane).max():.3f} mm off); not supported")
    else:
        if slice_step is None:
            slice_step = 1.0
        step = float(slice_step)
    frames = frames[order]
    row, col = iop[:3], iop[3:]
    affine = np.eye(4)
    affine[:3, 0] = row * pixel_spacing[1]  # i runs along a row: column spacing
    affine[:3, 1] = col * pixel_spacing[0]  # j runs down a column: row spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = positions[0]
    if space == "RAS":
        affine = _LPS_RAS @ affine
    array = np.ascontiguousarray(np.transpose(frames, (2, 1, 0)))  # (Z, rows, cols) -> (X, Y, Z)
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), step)
    return array, affine, spacing, order


def _check_space(space: str) -> str:
    if space not in ("RAS", "LPS"):
        raise ValueError(f"space must be 'RAS' or 'LPS', got {space!r}")
    return space


def _frame_geometry(ds: Any, path: str, nframes: int, require_spacing: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-frame positions, orientation, pixel spacing and rescale of a (multi-frame) file.

    Returns ``positions (F, 3)``, ``iop (6,)``, ``pixel_spacing (2,)`` and per-frame
    ``(F, 2)`` slope/intercept or ``None``.
    """
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")

    def group(item: Any, name: str) -> Any:
        seq = item.get(name) if item is not None else None
        return seq[0] if seq else None

    iop = _floats(ds, "ImageOrientationPatient", 6, path, "orientation")
    if iop is None:
        iop = _floats(group(shared, "PlaneOrientationSequence"), "ImageOrientationPatient", 6, path, "orientation")
    if per_frame is not None and len(per_frame) == nframes:  # enhanced multi-frame / SEG
        positions = []
        rescales = []
        for item in per_frame:
            pos = _floats(group(item, "PlanePositionSequence"), "ImagePositionPatient", 3, path, "position")
            if pos is None:
                raise DicomError(f"{path}: a frame has no PlanePositionSequence/ImagePositionPatient")
            positions.append(pos)
            trans = group(item, "PixelValueTransformationSequence") or group(shared, "PixelValueTransformationSequence")
            rescales.append(_rescale(trans, path) if trans is not None else None)
            if iop is None:
                iop = _floats(group(item, "PlaneOrientationSequence"), "ImageOrientationPatient", 6, path,
                              "orientation")
        measures = group(shared, "PixelMeasuresSequence") or group(per_frame[0], "PixelMeasuresSequence")
        spacing = _pixel_spacing(measures if measures is not None else ds, path, require_spacing)
        resc = None if all(r is None for r in rescales) else np.asarray(
            [r if r is not None else (1.0, 0.0) for r in rescales])
        pos_arr = np.stack(positions)
    else:
        ipp = _floats(ds, "ImagePositionPatient", 3, path, "position")
        spacing = _pixel_spacing(ds, path, require_spacing)
        offsets = ds.get("GridFrameOffsetVector")
        if ipp is None or iop is None:
            if nframes > 1:
                raise DicomError(f"{path}: multi-frame file without per-frame positions (no "
                                 "PerFrameFunctionalGroupsSequence, ImagePositionPatient or GridFrameOffsetVector)")
            ipp = np.zeros(3) if ipp is None else ipp
            iop = np.array([1.0, 0, 0, 0, 1.0, 0]) if iop is None else iop
        if nframes > 1:
            if offsets is None or len(offsets) != nframes:
                raise DicomError(f"{path}: {nframes} frames but GridFrameOffsetVector has "
                                 f"{0 if offsets is None else len(offsets)} entries; frame positions unknown")
            normal = _normal(iop, path)
            pos_arr = ipp + np.outer(np.asarray(offsets, dtype=np.float64), normal)
        else:
            pos_arr = ipp[None]
        r = _rescale(ds, path)
        resc = None if r is None else np.tile(np.asarray(r), (nframes, 1))
    if iop is None:
        raise DicomError(f"{path}: missing ImageOrientationPatient; cannot orient the image")
    return pos_arr, iop, spacing, resc


def read_dicom_file(path: str | os.PathLike[str], *, space: str = "RAS", rescale: bool = True,
                    require_spacing: bool = True, tolerance: float = 0.01) -> DicomVolume:
    """Load one DICOM file (single- or multi-frame) as a volume.

    A single frame gives ``Z = 1`` with the slice step taken from ``SpacingBetweenSlices`` or
    ``SliceThickness``. Multi-frame files are placed with their per-frame positions (enhanced
    functional groups) or ``GridFrameOffsetVector`` (e.g. RT dose) and sorted along the normal.

    Args:
        path: the file.
        space: ``"RAS"`` (MONAI, nibabel) or ``"LPS"`` (DICOM) affine.
        rescale: apply ``RescaleSlope``/``RescaleIntercept`` (HU for CT).
        require_spacing: raise when ``PixelSpacing`` is missing (else assume 1 mm).
        tolerance: mm by which a frame step may differ from the median step.

    Raises:
        DicomError: not DICOM, truncated, no pixel data, no decoder for its transfer syntax,
            colour data, missing spacing or orientation, uneven frame spacing.
    """
    _check_space(space)
    path = os.fspath(path)
    ds = _read_header(path, stop_before_pixels=False)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(f"{path}: colour image (SamplesPerPixel={ds.SamplesPerPixel}, "
                         f"{ds.get('PhotometricInterpretation')}); volumes need one sample per pixel")
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = _pixels(ds, path)
    frames = pixels.reshape(nframes, *pixels.shape[-2:])
    positions, iop, pixel_spacing, resc = _frame_geometry(ds, path, nframes, require_spacing)
    step = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    data = frames.astype(np.float32)
    if rescale and resc is not None:
        data = data * resc[:, 0, None, None].astype(np.float32) + resc[:, 1, None, None].astype(np.float32)
    array, affine, spacing, order = _assemble(
        data, positions, iop, pixel_spacing, [path] * nframes,
        slice_step=float(step) if step else None, space=space, tolerance=tolerance)
    return DicomVolume(array, affine, spacing, [path] * nframes, ds.get("SeriesInstanceUID"),
                       ds.get("Modality"), space, positions[order], [_sop_instance_uid(ds)] * nframes,
                       rescaled=bool(rescale and resc is not None))


def _scan(folder: Path, recursive: bool) -> tuple[dict[str, list[tuple[str, Any]]], list[tuple[str, str]]]:
    """Headers of every readable DICOM image file, grouped by series, and the skipped files."""
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    series: dict[str, list[tuple[str, Any]]] = {}
    skipped: list[tuple[str, str]] = []
    for p in files:
        try:
            ds = _read_header(p, stop_before_pixels=True)
        except DicomError as exc:
            skipped.append((str(p), str(exc).split(": ", 1)[-1]))
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds and ds.get("Rows") is None:
            skipped.append((str(p), f"no image (modality {ds.get('Modality', '?')})"))
            continue
        if ds.get("Modality") == "SEG":
            skipped.append((str(p), "DICOM SEG object (load it with load_dicom_seg)"))
            continue
        # anonymised exports may blank the UID: those files form the series "" together
        series.setdefault(str(ds.get("SeriesInstanceUID") or ""), []).append((str(p), ds))
    return series, skipped


def list_dicom_series(folder: str | os.PathLike[str], *, recursive: bool = False) -> dict[str, list[str]]:
    """``SeriesInstanceUID -> files`` for every image series in ``folder``.

    Args:
        folder: a directory.
        recursive: also look in subdirectories.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a directory")
    series, _ = _scan(folder, recursive)
    return {uid: [p for p, _ in items] for uid, items in series.items()}


def load_dicom_series(folder: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                      series_uid: str | None = None, space: str = "RAS", rescale: bool = True,
                      require_spacing: bool = True, tolerance: float = 0.01, recursive: bool = False,
                      warn: bool = True) -> DicomVolume:
    """Load a DICOM series from a folder (or an explicit list of files) as one volume.

    Files are grouped by ``SeriesInstanceUID`` and slices ordered by ``ImagePositionPatient`` along
    the slice normal; spacing comes from ``PixelSpacing`` and the measured slice step.

    Args:
        folder: a directory, or a list of files that must form one series.
        series_uid: which series to load when the folder holds several.
        space: ``"RAS"`` (MONAI, nibabel) or ``"LPS"`` (DICOM) affine.
        rescale: apply ``RescaleSlope``/``RescaleIntercept`` (HU for CT).
        require_spacing: raise when ``PixelSpacing`` is missing (else assume 1 mm).
        tolerance: mm by which a slice step may differ from the median step.
        recursive: also read subdirectories.
        warn: emit a :class:`DicomSkipWarning` per skipped file (they are always listed in
            :attr:`DicomVolume.skipped`).

    Raises:
        DicomError: no image series; several series and no ``series_uid`` (a list of files that
            mixes series); uneven or duplicate slice positions; differing orientation, pixel
            spacing or size; missing spacing; a slice whose pixel data cannot be decoded.
    """
    _check_space(space)
    if isinstance(folder, (str, os.PathLike)):
        root = Path(folder)
        if not root.is_dir():
            raise DicomError(f"{root}: not a directory (use read_dicom_file for a single file)")
        series, skipped = _scan(root, recursive)
        where = str(root)
    else:
        paths = [os.fspath(p) for p in folder]
        if not paths:
            raise ValueError("load_dicom_series: got an empty list of files")
        series, skipped = {}, []
        for p in paths:
            ds = _read_header(p, stop_before_pixels=True)
            series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
        if len(series) > 1:
            counts = ", ".join(f"{uid} ({len(v)} files, e.g. {Path(v[0][0]).name})" for uid, v in series.items())
            raise DicomError(f"mixed SeriesInstanceUIDs in the given files: {counts}; pass one series")
        where = str(Path(paths[0]).parent)
    if warn:
        for p, reason in skipped:
            warnings.warn(f"skipped {p}: {reason}", DicomSkipWarning, stacklevel=2)
    if not series:
        raise DicomError(f"{where}: no readable DICOM image series ({len(skipped)} file(s) skipped: "
                         + "; ".join(f"{Path(p).name}: {r}" for p, r in skipped[:3]) + ")")
    if series_uid is None:
        if len(series) > 1:
            counts = ", ".join(f"{uid or '<empty>'} ({len(v)} files)" for uid, v in series.items())
            raise DicomError(f"{where}: holds {len(series)} series (mixed SeriesInstanceUIDs: {counts}); "
                             "choose one with series_uid=")
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise DicomError(f"{where}: no series {series_uid!r}; series here: {sorted(series)}")
    items = series[series_uid]
    for uid, other in series.items():
        if uid != series_uid:
            skipped += [(p, f"other series {uid}") for p, _ in other]
    if len(items) == 1 and int(items[0][1].get("NumberOfFrames", 1) or 1) > 1:  # one multi-frame file
        vol = read_dicom_file(items[0][0], space=space, rescale=rescale, require_spacing=require_spacing,
                              tolerance=tolerance)
        vol.skipped = skipped
        return vol

    first_path, first = items[0]
    iop = _floats(first, "ImageOrientationPatient", 6, first_path, "orientation")
    pixel_spacing = _pixel_spacing(first, first_path, require_spacing)
    size = (first.get("Rows"), first.get("Columns"))
    positions = []
    for p, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomError(f"{p}: multi-frame file among {len(items)} files of series {series_uid!r}; a "
                             "multi-frame file is a volume of its own (load it with read_dicom_file)")
        o = _floats(ds, "ImageOrientationPatient", 6, p, "orientation")
        pos = _floats(ds, "ImagePositionPatient", 3, p, "position")
        if len(items) > 1 and (o is None or pos is None):
            raise DicomError(f"{p}: missing ImagePositionPatient/ImageOrientationPatient; slices cannot be "
                             "ordered (refusing to fall back on file names or InstanceNumber)")
        if o is not None and iop is not None and not np.allclose(o, iop, atol=1e-4):
            raise DicomError(f"{p}: ImageOrientationPatient {o.tolist()} differs from {first_path} "
                             f"({iop.tolist()}); not one stack")
        if not np.allclose(_pixel_spacing(ds, p, require_spacing), pixel_spacing, rtol=1e-4):
            raise DicomError(f"{p}: PixelSpacing differs from {first_path}; not one stack")
        if (ds.get("Rows"), ds.get("Columns")) != size:
            raise DicomError(f"{p}: size {ds.get('Rows')}x{ds.get('Columns')} differs from {first_path} "
                             f"({size[0]}x{size[1]})")
        positions.append(pos if pos is not None else np.zeros(3))
    if iop is None:
        iop = np.array([1.0, 0, 0, 0, 1.0, 0])
    positions_arr = np.stack(positions)
    # order first (cheap, headers only) so that spacing errors come before decoding pixels
    files = [p for p, _ in items]
    normal = _normal(iop, first_path)
    order = np.argsort(positions_arr @ normal, kind="stable")
    files = [files[i] for i in order]
    positions_arr = positions_arr[order]
    step = first.get("SpacingBetweenSlices") or first.get("SliceThickness")
    _assemble(np.zeros((len(files), 1, 1), np.float32), positions_arr, iop, pixel_spacing, files,
              slice_step=float(step) if step else None, space=space, tolerance=tolerance)  # checks only

    datasets = [_read_header(p, stop_before_pixels=False) for p in files]
    frames = np.stack([_pixels(ds, p).reshape(size) for ds, p in zip(datasets, files, strict=True)])
    resc = [_rescale(ds, p) for ds, p in zip(datasets, files, strict=True)]
    data = frames.astype(np.float32)
    rescaled = rescale and any(r is not None for r in resc)
    if rescaled:
        coef = np.asarray([r if r is not None else (1.0, 0.0) for r in resc], dtype=np.float32)
        data = data * coef[:, 0, None, None] + coef[:, 1, None, None]
    array, affine, spacing, _ = _assemble(
        data, positions_arr, iop, pixel_spacing, files,
        slice_step=float(step) if step else None, space=space, tolerance=tolerance)
    return DicomVolume(array, affine, spacing, files, series_uid, first.get("Modality"), space, positions_arr,
                       [_sop_instance_uid(ds) for ds in datasets], skipped, bool(rescaled))


def load_dicom(path: str | os.PathLike[str], **options: Any) -> DicomVolume:
    """:func:`load_dicom_series` for a folder, :func:`read_dicom_file` for a file.

    Args:
        path: a DICOM file or a series folder.
        **options: passed on (``space``, ``rescale``, ``series_uid`` for folders...).
    """
    if Path(path).is_dir():
        return load_dicom_series(path, **options)
    options.pop("series_uid", None)
    return read_dicom_file(path, **options)


def apply_window(array: np.ndarray | Any, window: str | tuple[float, float] = "soft_tissue",
                 out_range: tuple[float, float] = (0.0, 1.0)) -> Any:
    """Clip values (HU) to a window and scale them linearly to ``out_range``.

    Args:
        array: numpy array or torch tensor of HU values.
        window: a :data:`WINDOW_PRESETS` name or ``(center, width)``.
        out_range: output ``(low, high)``.

    Example:
        >>> apply_window(np.array([-1000.0, 40.0, 1000.0]), "soft_tissue").tolist()
        [0.0, 0.5, 1.0]
    """
    center, width = window_bounds(window)
    lo, hi = center - width / 2, center + width / 2
    a, b = out_range
    scaled = (array - lo) / (hi - lo)
    clipped = scaled.clip(0.0, 1.0) if hasattr(scaled, "clip") else np.clip(scaled, 0.0, 1.0)
    return clipped * (b - a) + a


def window_bounds(window: str | tuple[float, float]) -> tuple[float, float]:
    """``(center, width)`` of a preset name or a pair; ``ValueError`` on an unknown name or width <= 0."""
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; presets: {sorted(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[window]
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a preset name or (center, width), got {window!r}") from None
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    return center, width


def load_dicom_seg(path: str | os.PathLike[str], reference: DicomVolume | None = None, *,
                   space: str = "RAS", tolerance: float = 0.05) -> DicomSegmentation:
    """Read a DICOM SEG object as per-segment masks, on a reference volume's grid if given.

    Each frame is placed by its ``PlanePositionSequence`` position: with ``reference``, onto the
    reference slice at the same position along the normal (the reference must have the SEG's
    orientation, pixel spacing and size); without, onto the SEG's own frame grid.

    Args:
        path: the SEG file (``Modality`` ``SEG``).
        reference: the image volume the segmentation was drawn on.
        space: affine space when there is no reference.
        tolerance: mm by which a frame position may miss a reference slice.

    Raises:
        DicomError: not a SEG, frames without positions, a frame off the reference grid, or
            geometry that does not match the reference.
    """
    _check_space(space)
    path = os.fspath(path)
    ds = _read_header(path, stop_before_pixels=False)
    if ds.get("Modality") != "SEG" or "SegmentSequence" not in ds:
        raise DicomError(f"{path}: not a DICOM SEG object (Modality {ds.get('Modality')!r})")
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = _pixels(ds, path).reshape(nframes, ds.Rows, ds.Columns)
    if ds.get("SegmentationType") == "FRACTIONAL":
        frames = pixels >= (float(ds.get("MaximumFractionalValue", 255)) / 2)
    else:
        frames = pixels > 0
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != nframes:
        raise DicomError(f"{path}: PerFrameFunctionalGroupsSequence missing or not one item per frame")
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_ident = shared[0].get("SegmentIdentificationSequence") if shared else None  # one segment: shared
    seg_of_frame = []
    for i, item in enumerate(per_frame):
        ident = item.get("SegmentIdentificationSequence") or shared_ident
        if not ident:
            raise DicomError(f"{path}: frame {i + 1} has no SegmentIdentificationSequence")
        seg_of_frame.append(int(ident[0].ReferencedSegmentNumber))
    numbers = [int(s.SegmentNumber) for s in ds.SegmentSequence]
    labels = [str(s.get("SegmentLabel", s.SegmentNumber)) for s in ds.SegmentSequence]
    positions, iop, pixel_spacing, _ = _frame_geometry(ds, path, nframes, require_spacing=True)
    normal = _normal(iop, path)
    along = positions @ normal
    if reference is not None:
        ref_iop = np.concatenate([_LPS_RAS[:3, :3] @ reference.affine[:3, 0], _LPS_RAS[:3, :3]
                                  @ reference.affine[:3, 1]]) if reference.space == "RAS" else \
            np.concatenate([reference.affine[:3, 0], reference.affine[:3, 1]])
        ref_iop = np.concatenate([ref_iop[:3] / np.linalg.norm(ref_iop[:3]), ref_iop[3:] / np.linalg.norm(ref_iop[3:])])
        if not np.allclose(ref_iop, iop, atol=1e-3):
            raise DicomError(f"{path}: SEG orientation {iop.tolist()} differs from the reference series "
                             f"({ref_iop.round(4).tolist()})")
        if reference.shape[:2] != (ds.Columns, ds.Rows) or not np.allclose(
                reference.spacing[:2], (pixel_spacing[1], pixel_spacing[0]), rtol=1e-3):
            raise DicomError(f"{path}: SEG grid {ds.Columns}x{ds.Rows} at {pixel_spacing.tolist()} mm does not "
                             f"match the reference {reference.shape[:2]} at {reference.spacing[:2]} mm")
        if reference.positions is None:
            raise DicomError(f"{path}: the reference volume has no slice positions")
        ref_along = reference.positions @ normal
        dist = np.abs(along[:, None] - ref_along[None, :])
        slice_of_frame = dist.argmin(1)
        off = dist[np.arange(nframes), slice_of_frame] > tolerance
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise DicomError(f"{path}: frame {i + 1} at {positions[i].tolist()} lies on no slice of the reference "
                             f"series {reference.series_uid} (nearest {dist[i].min():.3f} mm away)")
        inplane = (positions - reference.positions[slice_of_frame]) - np.outer(along - ref_along[slice_of_frame],
                                                                                normal)
        if np.abs(inplane).max() > max(tolerance, 0.5 * min(pixel_spacing)):
            raise DicomError(f"{path}: SEG frame origins are shifted in-plane from the reference slices")
        depth, affine = reference.shape[2], reference.affine
    else:
        uniq, slice_of_frame = np.unique(np.round(along / tolerance).astype(np.int64), return_inverse=True)
        first_of = np.zeros(len(uniq), dtype=np.int64)
        first_of[slice_of_frame[::-1]] = np.arange(nframes)[::-1]
        _, affine, _, _ = _assemble(np.zeros((len(uniq), 1, 1), np.float32), positions[first_of], iop,
                                    pixel_spacing, [path] * len(uniq), slice_step=None, space=space,
                                    tolerance=max(tolerance, 0.01))
        depth = len(uniq)
    seg_index = {n: i for i, n in enumerate(numbers)}
    try:
        seg_idx = np.asarray([seg_index[s] for s in seg_of_frame])
    except KeyError as exc:
        raise DicomError(f"{path}: a frame references segment {exc.args[0]} absent from SegmentSequence") from None
    masks = np.zeros((len(numbers), ds.Columns, ds.Rows, depth), dtype=bool)
    masks[seg_idx, :, :, slice_of_frame] |= frames.transpose(0, 2, 1)
    return DicomSegmentation(masks, numbers, labels, affine, path)

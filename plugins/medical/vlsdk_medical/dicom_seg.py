"""DICOM SEG output with highdicom: a label map drawn on a DICOM series, as a Segmentation object referencing it.

:func:`write_dicom_seg` turns an ``(X, Y, Z)`` label map on a :class:`~vlsdk_medical.dicom.DicomVolume`'s
grid (value ``k`` = segment ``k``, 0 = background) into a BINARY ``highdicom.seg.Segmentation``:
the series' own datasets are its source images (so it shares their study, patient and frame of
reference, and each frame references the slice it was drawn on), one segment per label with
the algorithm that made it (vlsdk's version, the model folder and head). Frames without
foreground are left out. :func:`~vlsdk_medical.dicom.load_dicom_seg` reads the file back onto
the series' grid.

Example:
    >>> vol = load_dicom_series("ct_dir")                                          # doctest: +SKIP
    >>> write_dicom_seg(labels, vol, "ct.lesion_seg.dcm", ["lesion"], model_dir="runs/lesion/model")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlsdk_medical.dicom import DicomError, DicomVolume, _read_header, _sop_instance_uid

__all__ = ["write_dicom_seg", "segment_names"]

#: Identifying attributes a SEG copies from its source series; blank ones (anonymised exports) cannot be referenced.
_REQUIRED_UIDS = (("StudyInstanceUID", "(0020,000D)"), ("SeriesInstanceUID", "(0020,000E)"),
                  ("FrameOfReferenceUID", "(0020,0052)"))


def segment_names(num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """The segment labels of a segmentation head: its class names, else ``"lesion"`` or ``"class k"``.

    Args:
        num_classes: the head's outputs (1 = binary foreground probability, ``K`` > 1 = classes
            ``0..K-1`` with 0 the background).
        class_names: names of the foreground labels ``1..`` when the model records them.

    Raises:
        ValueError: ``class_names`` of the wrong length.
    """
    count = 1 if num_classes == 1 else num_classes - 1
    if class_names is not None:
        if len(class_names) != count:
            raise ValueError(f"class_names must name the {count} foreground label(s), got {list(class_names)}")
        return [str(n) for n in class_names]
    return ["lesion"] if count == 1 else [f"class {k}" for k in range(1, count + 1)]


def _source_datasets(volume: DicomVolume) -> list:
    """The series' headers in the volume's slice order, checked for what a SEG must reference."""
    if len(set(volume.files)) != len(volume.files):
        raise DicomError(f"{volume.files[0]}: DICOM SEG output needs a series of single-frame images; this "
                         "volume comes from a multi-frame file")
    datasets = []
    for path in volume.files:
        ds = _read_header(path, stop_before_pixels=True)
        for keyword, tag in _REQUIRED_UIDS:
            if not ds.get(keyword):
                raise DicomError(f"{path}: {keyword} {tag} is empty (an anonymised export?); a DICOM SEG must "
                                 "reference its source series by it, so none is written")
        meta = ds.file_meta
        ds.SOPInstanceUID = _sop_instance_uid(ds)  # in memory only: blanked by some exports, kept in the file meta
        ds.SOPClassUID = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")
        if not ds.SOPInstanceUID or not ds.SOPClassUID:
            raise DicomError(f"{path}: SOPInstanceUID (0008,0018) / SOPClassUID (0008,0016) are empty in the "
                             "dataset and its file meta; a DICOM SEG cannot reference this slice")
        datasets.append(ds)
    return datasets


def write_dicom_seg(labels: np.ndarray, volume: DicomVolume, path: str | os.PathLike[str],
                    segment_labels: Sequence[str], *, model_dir: str | os.PathLike[str], head: str = "lesion",
                    series_description: str = "vlsdk segmentation") -> Path:
    """Write ``labels`` as a BINARY DICOM SEG object referencing ``volume``'s series.

    Args:
        labels: ``(X, Y, Z)`` integer label map on the volume's grid (as
            :attr:`DicomVolume.array`), value ``k`` for segment ``k``.
        volume: the series the labels were drawn on (single-frame slices, loaded by
            :func:`~vlsdk_medical.dicom.load_dicom_series`).
        path: the ``.dcm`` file to write.
        segment_labels: the label of segment ``1, 2, ...`` (see :func:`segment_names`).
        model_dir: the model folder, recorded in the algorithm identification.
        head: the model's head, recorded likewise.
        series_description: the SEG series' description.

    Returns:
        ``path``.

    Raises:
        ValueError: labels off the volume's grid or with values no segment describes.
        DicomError: a source slice without the UIDs a SEG must reference (naming the file and tag).
        ImportError: highdicom is not installed.
    """
    try:
        import highdicom as hd
    except ImportError as exc:
        raise ImportError('DICOM SEG output needs highdicom: pip install "vlsdk[medical]"') from exc
    from pydicom.sr.codedict import codes

    from vlsdk.version import __version__

    labels = np.asarray(labels)
    if labels.shape != volume.shape:
        raise ValueError(f"labels have shape {labels.shape}, the series {volume.series_uid} {volume.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or \
            labels.max(initial=0) > len(segment_labels):
        raise ValueError(f"labels must be integers in 0..{len(segment_labels)} (one per segment label "
                         f"{list(segment_labels)}), got {labels.dtype} in {labels.min()}..{labels.max()}")
    sources = _source_datasets(volume)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="vlsdk", version=__version__, family=codes.cid7162.ArtificialIntelligence, source="vlsdk",
        parameters={"model": str(model_dir), "head": head})
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=label[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for number, label in enumerate(segment_labels, start=1)]
    dtype = np.uint8 if len(segment_labels) < 256 else np.uint16
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.ascontiguousarray(labels.transpose(2, 1, 0), dtype=dtype),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=1000, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="vlsdk", manufacturer_model_name=Path(model_dir).name[:64] or "vlsdk",
        software_versions=__version__, device_serial_number="none", series_description=series_description[:64])
    path = Path(path)
    seg.save_as(path)
    return path

"""``vlsdk`` subcommands of the medical plugin: ``medical-lesion`` (the pipeline) and ``dicom-info``."""

from __future__ import annotations

import argparse
import warnings

__all__ = ["configure_dicom_info", "run_dicom_info"]


def configure_dicom_info(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vlsdk dicom-info``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("path", help="a DICOM file or series folder")
    parser.add_argument("--series-uid", default=None, help="series to load when the folder holds several")
    parser.add_argument("--seg", default=None, help="a DICOM SEG file to place on the series")


def run_dicom_info(args: argparse.Namespace) -> int:
    """Print geometry, value range and skipped files of a DICOM file or series (exit 1 on a bad input).

    Args:
        args: parsed :func:`configure_dicom_info` options.
    """
    from pathlib import Path

    from vlsdk_medical.dicom import DicomError, DicomSkipWarning, list_dicom_series, load_dicom, load_dicom_seg

    try:
        if Path(args.path).is_dir() and args.series_uid is None:
            series = list_dicom_series(args.path)
            if len(series) > 1:
                for uid, files in series.items():
                    print(f"series {uid or '<no SeriesInstanceUID>'}: {len(files)} file(s)")
                print("several series: choose one with --series-uid")
                return 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DicomSkipWarning)
            options = {"series_uid": args.series_uid} if args.series_uid else {}
            vol = load_dicom(args.path, **options)
        print(vol.summary())
        print(f"values {float(vol.array.min()):.1f} .. {float(vol.array.max()):.1f}"
              f"{' (rescaled)' if vol.rescaled else ''}; affine ({vol.space}):")
        for row in vol.affine:
            print("  " + " ".join(f"{v:10.4f}" for v in row))
        if args.seg:
            seg = load_dicom_seg(args.seg, vol)
            for n, label, mask in zip(seg.segment_numbers, seg.segment_labels, seg.masks, strict=True):
                print(f"segment {n} {label!r}: {int(mask.sum())} voxels on {int(mask.any((0, 1)).sum())} slice(s)")
    except DicomError as exc:
        print(f"error: {exc}")
        return 1
    return 0

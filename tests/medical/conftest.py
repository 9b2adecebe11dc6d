"""Fixtures of the medical tests: real data folders (skipping, named, when absent) and BraTS cases."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("monai", reason='the medical tests need the extra: pip install "vlsdk[medical]"')
pytest.importorskip("pydicom", reason='the medical tests need the extra: pip install "vlsdk[medical]"')


@pytest.fixture(scope="session")
def ct_series(shared_data: Path) -> Path:
    """The real 20-slice CT DICOM series (TotalSegmentator reference files)."""
    return shared_data / "ct_mr_organs" / "reference_files" / "example_ct_dicom"


@pytest.fixture(scope="session")
def seg_dir(shared_data: Path) -> Path:
    """dcmqi's 3-slice CT + DICOM SEG folder."""
    return shared_data / "dicom_seg" / "data" / "segmentations"


@pytest.fixture(scope="session")
def brats_root(shared_data: Path) -> Path:
    """The BraTS lesion MRI folder (4 patients)."""
    return shared_data / "brats_lesion_mri"


@pytest.fixture(scope="session")
def testdata():
    """``testdata(name)``: a file shipped inside pydicom (never downloaded; skips if absent)."""
    from pydicom.data import get_testdata_file

    def get(name: str) -> str:
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip(f"pydicom test file {name} is not bundled with this pydicom")
        return str(path)

    return get

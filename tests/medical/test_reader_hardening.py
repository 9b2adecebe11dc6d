"""Non-finite and damaged input to the medical readers: errors naming the file and the field, never a silent result.

Every file is written by the test: modified copies of real CT slices (pydicom) and NIfTI volumes
(nibabel) whose header the test then damages.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

import vlsdk
import vlsdk_medical.plugin as medical_plugin
from vlsdk.cli import main
from vlsdk_medical.dicom import DicomError, DicomSkipWarning, read_dicom_file
from vlsdk_medical.nifti import VolumeError, load_volume
from vlsdk_medical.predict import read_dicom, read_nifti


@pytest.fixture
def model():
    return vlsdk.VLModel("tiny", in_chans=1)


@pytest.fixture
def model_dir(register_plugin, tmp_path) -> Path:
    register_plugin(medical_plugin, "medical")
    torch.manual_seed(0)
    m = vlsdk.VLModel("tiny", in_chans=1)
    m.add_head("lesion", task="segmentation", num_classes=1)
    return Path(m.save_pretrained(tmp_path / "model"))


def _series_copy(seg_dir: Path, out: Path, edit=None) -> Path:
    """dcmqi's real 3-slice CT (uncompressed) copied to ``out``, the middle slice passed through ``edit(ds)``."""
    out.mkdir()
    for f in sorted((seg_dir / "ct-3slice").iterdir()):
        if f.name == "02.dcm" and edit is not None:
            ds = pydicom.dcmread(f)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns that 'NaN' is no valid DS value: that is the point
                edit(ds)
                ds.save_as(out / f.name)
        else:
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize(("keyword", "value", "tag"), [
    ("RescaleSlope", "NaN", r"\(0028,1053\)"), ("RescaleSlope", "0", r"\(0028,1053\)"),
    ("RescaleIntercept", "NaN", r"\(0028,1052\)")])
def test_a_nan_or_zero_rescale_names_the_file_and_tag(seg_dir, tmp_path, model, keyword, value, tag):
    folder = _series_copy(seg_dir, tmp_path / "ct", lambda ds: setattr(ds, keyword, value))
    with pytest.raises(DicomError, match=rf"ct/02\.dcm: {keyword} {tag} is '{value}'; expected a finite"):
        read_dicom(folder, model, tmp_path)
    with pytest.raises(DicomError, match=rf"02\.dcm: {keyword} {tag}"):
        read_dicom_file(folder / "02.dcm")  # the single-file path as well


def test_non_finite_voxels_in_a_dicom_volume_are_counted_and_name_the_file(seg_dir, tmp_path, model):
    ds = pydicom.dcmread(seg_dir / "ct-3slice" / "01.dcm")
    values = ds.pixel_array.astype(np.float32)
    values[10, 10], values[20, 30] = np.nan, np.inf
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation  # float pixel data (parametric maps)
    ds.FloatPixelData, ds.BitsAllocated = values.tobytes(), 32
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(tmp_path / "float.dcm", enforce_file_format=True)
    with pytest.raises(ValueError, match=rf"float\.dcm: 2 of {values.size} voxel values are non-finite"):
        read_dicom(tmp_path / "float.dcm", model, tmp_path)


def test_one_nan_voxel_in_a_nifti_fails_vlsdk_predict_naming_file_and_count(model_dir, tmp_path, capsys):
    data = np.random.default_rng(0).random((16, 12, 10)).astype(np.float32)
    data[3, 4, 5] = np.nan  # it used to erase slice 5's prediction with exit status 0
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "scan.nii.gz")
    status = main(["predict", str(tmp_path / "scan.nii.gz"), "--model", str(model_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1
    assert "scan.nii.gz: 1 of 1920 voxel values are non-finite (NaN or inf)" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "scan.lesion.nii.gz").exists()


def test_a_truncated_dicom_slice_names_the_file(seg_dir, tmp_path, model, model_dir, capsys):
    folder = _series_copy(seg_dir, tmp_path / "ct")
    whole = (folder / "02.dcm").read_bytes()
    (folder / "02.dcm").write_bytes(whole[:-4096])  # the pixel data ends early
    with pytest.raises(DicomError, match=r"ct/02\.dcm: pixel data unusable: truncated DICOM: the file ends inside "
                                         r"element \(7FE0,0010\) PixelData"):
        read_dicom(folder, model, tmp_path)
    (tmp_path / "head.dcm").write_bytes(whole[:1000])  # the header ends early
    status = main(["predict", str(tmp_path / "head.dcm"), "--model", str(model_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1 and "head.dcm: truncated DICOM: the file ends inside element" in err
    assert "Traceback" not in err


def test_files_left_out_of_a_series_folder_are_counted_in_one_warning(seg_dir, tmp_path, model):
    folder = _series_copy(seg_dir, tmp_path / "ct")
    (folder / "notes.txt").write_text("not DICOM")
    shutil.copy(seg_dir / "liver.dcm", folder / "liver.dcm")  # a SEG object is no slice of the image series
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = read_dicom(folder, model, tmp_path)
    skips = [str(w.message) for w in caught if issubclass(w.category, DicomSkipWarning)]
    assert len(skips) == 1 and "2 file(s) left out" in skips[0] and "notes.txt" in skips[0]
    assert item.images.shape == (3, 1, 512, 512) and item.meta["dicom"].shape == (512, 512, 3)


def _damaged_nifti(path: Path, **fields) -> Path:
    """A real NIfTI written by nibabel, then its 348-byte header rewritten with ``fields``."""
    img = nib.Nifti1Image(np.arange(8 * 8 * 3, dtype=np.int16).reshape(8, 8, 3), np.diag([0.9, 0.9, 2.5, 1]))
    nib.save(img, path)
    raw = bytearray(path.read_bytes())
    with path.open("rb") as f:
        header = nib.Nifti1Header.from_fileobj(f)
    for name, value in fields.items():
        header[name] = value
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(("fields", "predict_error", "load_error"), [
    ({"dim": [3, 8, 8, 50, 1, 1, 1, 1]}, r"cannot read the NIfTI voxels .*Expected 6400 bytes", r"cannot read volume"),
    ({"srow_x": [np.nan, 0, 0, 0], "sform_code": 1}, r"header field srow_x \(sform\) is \[nan", None),
    ({"scl_slope": np.inf}, r"header field scl_slope is inf; expected finite", None),
], ids=["dims-beyond-the-data", "nan-sform", "inf-scale"])
def test_a_nifti_with_a_bad_header_names_the_file_and_field(tmp_path, model, fields, predict_error, load_error):
    path = _damaged_nifti(tmp_path / "bad.nii", **fields)
    with pytest.raises(ValueError, match=rf"bad\.nii: {predict_error}"):
        read_nifti(path, model, tmp_path)
    with pytest.raises(VolumeError, match=rf"bad\.nii: {load_error or predict_error}"):
        load_volume(path)  # the training reader (MONAI) would use another affine or no scaling instead

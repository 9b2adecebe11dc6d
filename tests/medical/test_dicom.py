"""DICOM loading against MONAI's own reader, windowing, multi-frame, DICOM SEG and bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from vlsdk_medical.dicom import (
    WINDOW_PRESETS,
    DicomError,
    DicomSkipWarning,
    apply_window,
    list_dicom_series,
    load_dicom,
    load_dicom_seg,
    load_dicom_series,
    read_dicom_file,
)


@pytest.fixture(scope="module")
def ct(ct_series: Path):
    return load_dicom_series(ct_series)


def test_series_geometry_matches_monai_pydicom_reader(ct, ct_series):
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LoadImage(reader="PydicomReader", image_only=True)(str(ct_series))
    assert ct.shape == tuple(ref.shape) == (512, 512, 20)
    # spacing: MONAI reports it from the affine
    np.testing.assert_allclose(ct.spacing, np.asarray(ref.meta["spacing"], float), rtol=1e-6)
    np.testing.assert_allclose(ct.spacing, (0.9765625, 0.9765625, 2.0))
    # orientation: same axis directions up to the order of the slices
    a, b = ct.affine, ref.affine.numpy()
    np.testing.assert_allclose(a[:3, :2], b[:3, :2], atol=1e-6)
    np.testing.assert_allclose(np.abs(a[:3, 2]), np.abs(b[:3, 2]), atol=1e-6)
    assert ct.orientation == "LPS" and ct.space == "RAS"
    # slice order: every voxel sits at the same patient position in both volumes
    voxel_map = np.linalg.inv(b) @ a  # our voxel index -> MONAI voxel index
    # MONAI stacks by InstanceNumber, which runs down z here; we go up the slice normal: k -> 19 - k
    expected = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 19], [0, 0, 0, 1]], float)
    np.testing.assert_allclose(voxel_map, expected, atol=1e-6)
    np.testing.assert_array_equal(ct.array, np.flip(ref.numpy(), 2))
    assert ct.array.min() == -1024 and ct.array.max() == 1839  # HU after RescaleIntercept -1024
    assert np.all(np.diff(ct.positions[:, 2]) > 0)


def test_order_independent_of_file_order_and_instance_number(ct, ct_series):
    files = sorted(ct_series.iterdir(), reverse=True)
    again = load_dicom_series([files[i] for i in np.random.default_rng(0).permutation(len(files))])
    np.testing.assert_array_equal(again.array, ct.array)
    np.testing.assert_allclose(again.affine, ct.affine)
    assert again.files == ct.files
    assert ct.to_metatensor().shape == (1, 512, 512, 20)


def test_window_presets(ct):
    soft = apply_window(ct.array, "soft_tissue")
    assert soft.min() == 0.0 and soft.max() == 1.0
    lung = apply_window(ct.array, "lung")
    assert lung.dtype == np.float32 or lung.dtype == np.float64
    assert (apply_window(np.array([-1024.0, 40.0, 3000.0]), "soft_tissue") == [0.0, 0.5, 1.0]).all()
    assert set(WINDOW_PRESETS) >= {"soft_tissue", "lung", "bone"}
    with pytest.raises(ValueError, match="unknown window preset 'lungs'"):
        apply_window(ct.array, "lungs")
    with pytest.raises(ValueError, match="width must be > 0"):
        apply_window(ct.array, (40, 0))


def test_single_file_and_multiframe(testdata):
    small = read_dicom_file(testdata("CT_small.dcm"))
    assert small.shape == (128, 128, 1) and small.rescaled
    np.testing.assert_allclose(small.spacing, (0.661468, 0.661468, 5.0), rtol=1e-5)
    dose = load_dicom(testdata("rtdose.dcm"))  # 15 frames placed with GridFrameOffsetVector
    assert dose.shape == (10, 10, 15)
    np.testing.assert_allclose(dose.spacing, (10.0, 10.0, 5.0))
    assert np.all(np.diff(dose.positions[:, 2]) == 5.0)
    assert dose.array.dtype == np.float32 and dose.to_metatensor().meta["spacing"][2] == 5.0


def test_multiframe_file_alone_in_folder(tmp_path, testdata):
    (tmp_path / "dose.dcm").symlink_to(testdata("rtdose.dcm"))
    assert load_dicom_series(tmp_path).shape == (10, 10, 15)
    (tmp_path / "dose2.dcm").symlink_to(testdata("rtdose.dcm"))
    with pytest.raises(DicomError, match="multi-frame file among 2 files"):
        load_dicom_series(tmp_path)


def test_dicom_seg_on_reference_grid(seg_dir):
    ct = load_dicom_series(seg_dir / "ct-3slice")
    seg = load_dicom_seg(seg_dir / "liver.dcm", ct)
    assert seg.masks.shape == (1, 512, 512, 3) and seg.segment_labels == ["Liver"]
    # frames are stored top-down in the SEG; each lands on the CT slice at its own position
    counts = seg.masks.sum((1, 2))[0]
    assert (counts > 30000).all()
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_seg = LoadImage(reader="PydicomReader", image_only=True)(str(seg_dir / "liver.dcm"))
    np.testing.assert_allclose(monai_seg.affine.numpy(), ct.affine, atol=1e-4)  # same grid as MONAI's
    np.testing.assert_array_equal(seg.masks[0], monai_seg.numpy()[..., 0] > 0)
    alone = load_dicom_seg(seg_dir / "liver.dcm")
    np.testing.assert_array_equal(alone.masks, seg.masks)
    np.testing.assert_allclose(alone.affine, ct.affine, atol=1e-4)
    assert seg.label_map().max() == 1
    overlaps = load_dicom_seg(seg_dir / "partial_overlaps.dcm", ct)
    assert overlaps.masks.shape[0] == 5
    with pytest.raises(DicomError, match="segments overlap"):
        overlaps.label_map()
    assert overlaps.label_map(allow_overlap=True).max() == 5
    with pytest.raises(DicomError, match="not a DICOM SEG"):
        load_dicom_seg(ct.files[0])


def test_bad_files_name_file_and_problem(tmp_path, testdata):
    junk = tmp_path / "notes.dcm"
    junk.write_text("not dicom at all")
    with pytest.raises(DicomError, match=r"notes\.dcm: not a DICOM file"):
        read_dicom_file(junk)
    with pytest.raises(DicomError, match=r"MR_truncated\.dcm: pixel data unusable"):
        read_dicom_file(testdata("MR_truncated.dcm"))
    with pytest.raises(DicomError, match=r"rtplan_truncated\.dcm: truncated DICOM: .* \(300A,00B0\) BeamSequence"):
        read_dicom_file(testdata("rtplan_truncated.dcm"))
    # 12-bit JPEG Extended: Pillow declines it, and no pylibjpeg/GDCM plugin is installed (highdicom brings JPEG-LS)
    with pytest.raises(DicomError, match=r"JPGExtended\.dcm: cannot decode .*JPEG Extended.*no decoder"):
        read_dicom_file(testdata("JPGExtended.dcm"))
    with pytest.raises(DicomError, match="colour image"):
        read_dicom_file(testdata("SC_rgb_rle.dcm"))


def test_missing_spacing(tmp_path, testdata):
    import pydicom

    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    del ds.PixelSpacing
    path = tmp_path / "nospacing.dcm"
    ds.save_as(path)
    with pytest.raises(DicomError, match=r"nospacing\.dcm: missing PixelSpacing"):
        read_dicom_file(path)
    assert read_dicom_file(path, require_spacing=False).spacing[:2] == (1.0, 1.0)


def test_inconsistent_spacing_and_mixed_series(ct_series, testdata):
    files = sorted(ct_series.iterdir())
    with pytest.raises(DicomError, match="inconsistent slice spacing.*Not resampling"):
        load_dicom_series([files[0], files[1], files[2], files[4]])
    with pytest.raises(DicomError, match="mixed SeriesInstanceUIDs"):
        load_dicom_series(files[:3] + [Path(testdata("CT_small.dcm"))])
    with pytest.raises(DicomError, match="two slices at the same position"):
        load_dicom_series([files[0], files[0]])


def test_folder_skips_and_reports(tmp_path, seg_dir, testdata):
    for f in sorted((seg_dir / "ct-3slice").iterdir()):
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "README.txt").write_text("export notes")
    (tmp_path / "other.dcm").symlink_to(testdata("CT_small.dcm"))
    (tmp_path / "seg.dcm").symlink_to(seg_dir / "liver.dcm")
    series = list_dicom_series(tmp_path)
    assert sorted(len(v) for v in series.values()) == [1, 3]
    with pytest.raises(DicomError, match="holds 2 series.*series_uid="):
        load_dicom_series(tmp_path, warn=False)
    uid = next(u for u, v in series.items() if len(v) == 3)
    with pytest.warns(DicomSkipWarning, match="README.txt: not a DICOM file"):
        vol = load_dicom_series(tmp_path, series_uid=uid)
    assert vol.shape == (512, 512, 3)
    reasons = dict((Path(p).name, r) for p, r in vol.skipped)
    assert set(reasons) == {"README.txt", "other.dcm", "seg.dcm"}
    assert "skipped 3 file(s)" in vol.summary()
    with pytest.raises(DicomError, match="no readable DICOM image series"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "x.txt").write_text("x")
        load_dicom_series(empty, warn=False)
    with pytest.raises(ValueError, match="space must be"):
        load_dicom_series(tmp_path, space="XYZ")


def test_dicom_dataset_with_seg_labels(seg_dir):
    from vlsdk_medical.dataset import DicomDataset

    ds = DicomDataset([{"image": str(seg_dir / "ct-3slice"), "label": str(seg_dir / "liver.dcm")}],
                      window="soft_tissue")
    sample = ds[0]
    assert sample["image"].shape == (1, 512, 512, 3) and sample["label"].shape == (1, 512, 512, 3)
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["segment_labels"] == ["Liver"] and sample["spacing"][2] == pytest.approx(1.0)
    assert sample["image"].meta["spacing"][0] == pytest.approx(0.810547)
    with pytest.raises(ValueError, match="unknown window preset"):
        DicomDataset([str(seg_dir / "ct-3slice")], window="lungs")


def test_dicom_info_command(register_plugin, seg_dir, tmp_path, capsys, testdata):
    import vlsdk_medical.plugin as medical_plugin
    from vlsdk.cli import main

    register_plugin(medical_plugin, "medical")
    assert main(["dicom-info", str(seg_dir / "ct-3slice"), "--seg", str(seg_dir / "liver.dcm")]) == 0
    out = capsys.readouterr().out
    assert "3 slices, shape (512, 512, 3)" in out and "segment 1 'Liver'" in out and "(rescaled)" in out
    assert main(["dicom-info", testdata("MR_truncated.dcm")]) == 1
    assert "MR_truncated.dcm: pixel data unusable" in capsys.readouterr().out


def test_dicom_seg_as_lesion_label_source(seg_dir):
    import torch

    from vlsdk_medical.dataset import LesionSliceDataset, LesionVolume
    from vlsdk_medical.nifti import VolumeError

    ct = load_dicom_series(seg_dir / "ct-3slice")
    seg = load_dicom_seg(seg_dir / "liver.dcm", ct)
    volume = LesionVolume("ct3", torch.from_numpy(ct.array)[None], torch.from_numpy(seg.label_map())[None].long(),
                          ct.spacing)
    ds = LesionSliceDataset([volume], roi_size=64, seed=0, slices="lesion",
                            transform_options={"intensity": "window", "window": "liver", "pos": 1.0, "neg": 0.0})
    assert len(ds) == 3 and ds.raw(0)["spacing"] == pytest.approx(ct.spacing[:2])
    sample = ds[1]
    assert sample["image"].shape == (1, 64, 64) and 0.0 <= float(sample["image"].min())
    assert float(sample["image"].max()) <= 1.0 and sample["label"].sum() > 0
    with pytest.raises(VolumeError, match="shape mismatch"):
        LesionVolume("bad", torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 2), (1.0, 1.0, 1.0))

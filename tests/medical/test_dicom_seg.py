"""DICOM series in, DICOM SEG out: the highdicom writer's round trip on the real 20-slice CT, `vlsdk predict` on it."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import SegmentationStorage, generate_uid

import vlsdk
import vlsdk_medical.plugin as medical_plugin
from vlsdk.cli import main
from vlsdk.predict_io import HeadPrediction, InputReader
from vlsdk_medical.dicom import DicomError, load_dicom_seg, load_dicom_series
from vlsdk_medical.dicom_seg import segment_names, write_dicom_seg
from vlsdk_medical.inference import predict_volume, probs_to_labels, record_input
from vlsdk_medical.predict import read_dicom, write_dicom_mask

pytest.importorskip("highdicom", reason='DICOM SEG output needs highdicom: pip install "vlsdk[medical]"')

@pytest.fixture(scope="module")
def series(ct_series: Path, tmp_path_factory) -> Path:
    """The real CT series re-saved with the study/series UIDs a scanner export keeps.

    The shared copy is anonymised down to blank StudyInstanceUID, SeriesInstanceUID and
    SOPInstanceUID, which no DICOM SEG can reference (tested below); the SOP UIDs come from each
    file's own meta header.
    """
    out = tmp_path_factory.mktemp("ct_with_uids")
    study, series_uid = generate_uid(entropy_srcs=["vlsdk study"]), generate_uid(entropy_srcs=["vlsdk series"])
    for f in sorted(ct_series.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(out / f.name)
    return out


@pytest.fixture
def medical(register_plugin):
    register_plugin(medical_plugin, "medical")


@pytest.fixture
def lesion_model(medical, tmp_path) -> Path:
    """A tiny lesion segmenter as the pipeline builds it (lesion expert, binary head), trained 0 steps."""
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("lesion", task="segmentation", num_classes=1)
    model.add_expert("medical.lesion", init_bias=0.0)
    model_dir = model.save_pretrained(tmp_path / "model")
    record_input(model_dir, ["CT"], 0)
    return Path(model_dir)


def _frame_segments(ds: pydicom.Dataset) -> list[int]:
    shared = ds.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
    return [int((item.get("SegmentIdentificationSequence") or shared)[0].ReferencedSegmentNumber)
            for item in ds.PerFrameFunctionalGroupsSequence]


def test_seg_of_a_drawn_mask_references_the_series_and_reads_back_equal(series, tmp_path):
    vol = load_dicom_series(series)
    mask = np.zeros(vol.shape, np.uint8)  # (X, Y, Z): columns, rows, slices up the normal
    mask[200:240, 180:230, 6:10] = 1  # a cube over four slices
    mask[300:310, 100:104, 14] = 2  # a thin bar on one slice (not symmetric: a transposed frame would differ)
    path = write_dicom_seg(mask, vol, tmp_path / "ct.lesion_seg.dcm", ["lesion", "cyst"],
                           model_dir=tmp_path / "model", head="lesion")

    # the plugin's own SEG reader, on the series' grid
    seg = load_dicom_seg(path, vol)
    assert seg.segment_labels == ["lesion", "cyst"] and seg.segment_numbers == [1, 2]
    np.testing.assert_array_equal(seg.label_map(), mask)

    # pydicom: what a PACS or viewer sees
    ds = pydicom.dcmread(path)
    source = pydicom.dcmread(vol.files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == SegmentationStorage and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.NumberOfFrames == 4 + 1  # one frame per (segment, slice with its foreground)
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "vlsdk" and algorithm.AlgorithmVersion == vlsdk.__version__
    assert str(tmp_path / "model") in algorithm.AlgorithmParameters
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    slice_of = {uid: k for k, uid in enumerate(vol.sop_uids)}
    for frame, item, number in zip(frames, ds.PerFrameFunctionalGroupsSequence, _frame_segments(ds), strict=True):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = slice_of[ref]  # the frame's source slice ...
        np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                   vol.positions[k], atol=1e-3)  # ... is where the frame is placed
        np.testing.assert_array_equal(frame.astype(bool), (mask[:, :, k] == number).T)  # (rows, cols)


def test_seg_refuses_an_anonymised_series_and_labels_off_the_segments(ct_series, series, tmp_path):
    anonymised = load_dicom_series(ct_series)
    mask = np.zeros(anonymised.shape, np.uint8)
    mask[10:20, 10:20, 3] = 1
    with pytest.raises(DicomError, match=r"CT\.1\.3\.12.*StudyInstanceUID \(0020,000D\) is empty"):
        write_dicom_seg(mask, anonymised, tmp_path / "x.dcm", ["lesion"], model_dir=tmp_path)
    vol = load_dicom_series(series)
    mask[10:20, 10:20, 4] = 3
    with pytest.raises(ValueError, match=r"integers in 0\.\.2 .*got uint8 in 0\.\.3"):
        write_dicom_seg(mask, vol, tmp_path / "x.dcm", ["lesion", "cyst"], model_dir=tmp_path)
    assert not (tmp_path / "x.dcm").exists()
    assert segment_names(1) == ["lesion"] and segment_names(5) == ["class 1", "class 2", "class 3", "class 4"]
    assert segment_names(3, ["necrosis", "oedema"]) == ["necrosis", "oedema"]


def _predict_directly(model_dir: Path, folder: Path, out: Path) -> dict:
    """The medical reader and writer, as `vlsdk predict` calls them (for a core that refuses folders)."""
    model = vlsdk.VLModel.from_pretrained(model_dir).eval()
    item = read_dicom(folder, model, model_dir)
    out.mkdir(parents=True, exist_ok=True)
    prediction = HeadPrediction("lesion", "segmentation", model, item, out, f"{folder.name}.lesion",
                                {"device": "cpu"}, lambda: None)
    return write_dicom_mask(prediction)


def test_predict_writes_a_seg_equal_to_the_nifti_mask(lesion_model, series, tmp_path):
    import nibabel as nib

    entry = _predict_directly(lesion_model, series, tmp_path / "out")
    vol = load_dicom_series(series)
    nifti = nib.load(entry["mask"])
    np.testing.assert_allclose(nifti.affine, vol.affine, atol=1e-5)
    mask = np.asarray(nifti.dataobj)
    model = vlsdk.VLModel.from_pretrained(lesion_model).eval()
    expected = probs_to_labels(predict_volume(model, torch.from_numpy(vol.array)[None], head="lesion")).numpy()
    np.testing.assert_array_equal(mask, expected)  # HU as the reader gives them, slices in normal order
    assert entry["dicom_seg"] == str(tmp_path / "out" / f"{series.name}.lesion_seg.dcm")
    assert entry["segments"] == ["lesion"]
    np.testing.assert_array_equal(load_dicom_seg(entry["dicom_seg"], vol).label_map(), mask)
    ds = pydicom.dcmread(entry["dicom_seg"])
    foreground_slices = int(mask.any((0, 1)).sum())
    assert ds.NumberOfFrames == (foreground_slices or vol.shape[2])  # highdicom keeps every frame of an empty mask
    assert str(lesion_model) in ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters


def test_predict_on_an_anonymised_series_writes_the_nifti_and_warns_once_without_seg(lesion_model, ct_series,
                                                                                     tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry = _predict_directly(lesion_model, ct_series, tmp_path / "out")
    messages = [str(w.message) for w in caught if "DICOM SEG" in str(w.message)]
    assert len(messages) == 1 and "StudyInstanceUID (0020,000D) is empty" in messages[0]
    assert entry["dicom_seg"] is None and "StudyInstanceUID" in entry["dicom_seg_skipped"]
    assert Path(entry["mask"]).is_file() and not list((tmp_path / "out").glob("*.dcm"))


def test_vlsdk_predict_on_a_series_folder_writes_the_seg_and_exits_0(lesion_model, series, tmp_path, capsys):
    status = main(["predict", str(series), "--model", str(lesion_model), "--out", str(tmp_path / "out")])
    assert status == 0, capsys.readouterr().err
    seg = tmp_path / "out" / f"{series.name}.lesion_seg.dcm"
    assert pydicom.dcmread(seg).SOPClassUID == SegmentationStorage
    assert (tmp_path / "out" / f"{series.name}.lesion.nii.gz").is_file()

"""NIfTI through MONAI LoadImage + Orientation: orientation normalised, spacing kept, no resampling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from vlsdk_medical.nifti import VolumeError, axcodes_of, load_image_label, load_volume


def test_brats_reoriented_to_ras_without_resampling(brats_root):
    d = next((brats_root / "brats2015TrainingData" / "train").iterdir())
    flair = d / "Flair_subtrMeanDivStd.nii.gz"
    img = load_volume(flair)
    raw = nib.load(flair)
    assert "".join(nib.aff2axcodes(raw.affine)) == "LPS" == img.meta["original_axcodes"]
    assert axcodes_of(img.affine) == "RAS" and img.shape == (1, 240, 240, 155)
    assert img.meta["spacing"] == (1.0, 1.0, 1.0)
    # LPS -> RAS is a flip of the first two axes, values untouched
    np.testing.assert_array_equal(img[0].numpy(), np.asarray(raw.dataobj, np.float32)[::-1, ::-1])
    kept = load_volume(flair, axcodes=None)
    assert axcodes_of(kept.affine) == "LPS"


def test_channels_and_label_pairing(brats_root, shared_data):
    d = next((brats_root / "brats2015TrainingData" / "train").iterdir())
    img, lab = load_image_label([d / "Flair_subtrMeanDivStd.nii.gz", d / "T1c_subtrMeanDivStd.nii.gz"],
                                d / "OTMultiClass.nii.gz")
    assert img.shape == (2, 240, 240, 155) and lab.shape == (1, 240, 240, 155)
    assert set(np.unique(lab.numpy()).tolist()) <= {0, 1, 2, 3, 4}
    ct = shared_data / "ct_mr_organs" / "reference_files" / "example_ct_sm.nii.gz"
    assert load_volume(ct).meta["spacing"] == pytest.approx((3.0, 3.0, 3.0))
    with pytest.raises(VolumeError, match=r"shape mismatch: .*Flair_subtrMeanDivStd.* but .*example_ct_sm"):
        load_image_label(d / "Flair_subtrMeanDivStd.nii.gz", ct)
    with pytest.raises(VolumeError, match=r"T1c_subtrMeanDivStd.nii.gz: shape .* differs"):
        load_volume([ct, d / "T1c_subtrMeanDivStd.nii.gz"])
    with pytest.raises(VolumeError, match="no such file"):
        load_volume(d / "missing.nii.gz")
    with pytest.raises(ValueError, match="axcodes"):
        load_volume(ct, axcodes="RRS")


def test_nifti_dataset(shared_data):
    from vlsdk_medical.dataset import NiftiDataset

    ref = shared_data / "ct_mr_organs" / "reference_files"
    ds = NiftiDataset([{"image": str(ref / "example_ct_sm.nii.gz"), "label": str(ref / "example_seg.nii.gz")},
                       str(ref / "example_mr_sm.nii.gz")])
    ct, mr = ds[0], ds[1]
    assert ct["image"].shape == ct["label"].shape == (1, 122, 101, 30)
    assert ct["spacing"] == pytest.approx((3.0, 3.0, 3.0)) and axcodes_of(ct["image"].affine) == "RAS"
    assert "label" not in mr and mr["image"].shape[1:] == (117, 91, 20)
    with pytest.raises(ValueError, match="'image' key"):
        NiftiDataset([{"label": "x"}])

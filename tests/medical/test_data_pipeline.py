"""Lesion dataset (2D slices, 3D patches), MONAI transforms, synthetic lesions; determinism with a seed."""

from __future__ import annotations

import pytest
import torch

from vlsdk_medical.dataset import LesionSliceDataset, collate_samples, find_brats_cases
from vlsdk_medical.synth import LesionSynthesizer
from vlsdk_medical.transforms import default_transforms


@pytest.fixture(scope="module")
def slices(brats_root):
    cases = find_brats_cases(brats_root, split="train")
    return LesionSliceDataset(cases, roi_size=64, seed=3, max_slices_per_case=6, slices="lesion",
                              transform_options={"pos": 1.0, "neg": 0.0})


def test_brats_cases_and_splits(brats_root):
    names = [c.case_id for c in find_brats_cases(brats_root)]
    assert len(names) == 4 and "brats_2013_pat0001_1" in names
    test = find_brats_cases(brats_root, split="test", modalities=("flair",))
    assert [c.case_id for c in test] == ["brats_2013_pat0001_1"] and len(test[0].images) == 1
    with pytest.raises(ValueError, match="modalities"):
        find_brats_cases(brats_root, modalities=("t2",))


def test_slices_are_seeded_and_lesion_balanced(slices):
    assert len(slices) == 12 and slices.num_channels == 2
    a, b = slices[5], slices[5]
    assert a["image"].shape == (2, 64, 64) and a["label"].shape == (1, 64, 64)
    torch.testing.assert_close(a["image"], b["image"])
    assert set(a["label"].unique().tolist()) <= {0.0, 1.0}
    # pos=1, neg=0: every crop is centred on lesion (the affine may move it a little, not away)
    assert all(slices[i]["label"].sum() > 0 for i in range(len(slices)))
    slices.set_epoch(1)
    assert not torch.equal(slices[5]["image"], a["image"])
    slices.set_epoch(0)
    raw = slices.raw(0)
    assert raw["image"].shape == (2, 240, 240) and raw["spacing"] == (1.0, 1.0)
    slices.repeats = 2  # a second pass over the slices with its own augmentation stream
    try:
        assert len(slices) == 24
        torch.testing.assert_close(slices.raw(12)["image"], raw["image"])
        assert not torch.equal(slices[12]["image"], slices[0]["image"])
    finally:
        slices.repeats = 1
    batch = collate_samples([slices[0], slices[1]])
    assert batch["image"].shape == (2, 2, 64, 64) and len(batch["case"]) == 2


def test_patches_3d_and_multiclass(brats_root):
    cases = find_brats_cases(brats_root, split="validation")
    ds = LesionSliceDataset(cases, spatial_dims=3, roi_size=32, patches_per_volume=2, label_mode="multiclass",
                            label_values=(0, 1, 2, 3, 4), transform_options={"num_samples": 2})
    items = ds[0]
    assert isinstance(items, list) and len(items) == 2
    assert items[0]["image"].shape == (2, 32, 32, 32) and items[0]["label"].max() <= 4
    assert len(collate_samples([items])["case"]) == 2
    with pytest.raises(ValueError, match="label_values"):
        LesionSliceDataset(cases, label_mode="multiclass", label_values=(0, 1), transform=None)


def test_default_transforms_arguments_and_determinism():
    sample = {"image": torch.rand(1, 80, 70), "label": (torch.rand(1, 80, 70) > 0.9).float()}
    t1 = default_transforms(roi_size=(32, 32), seed=1)
    t2 = default_transforms(roi_size=(32, 32), seed=1)
    torch.testing.assert_close(t1(dict(sample))[0]["image"], t2(dict(sample))[0]["image"])
    hu = {"image": torch.tensor([[[-1000.0, 40.0, 1000.0]]]), "label": torch.zeros(1, 1, 3)}
    out = default_transforms(train=False, intensity="window", window="soft_tissue")(hu)
    assert out["image"].flatten().tolist() == [0.0, 0.5, 1.0]
    for bad in ({"spatial_dims": 4}, {"roi_size": (32,)}, {"intensity": "magic"}, {"flip_prob": 2.0},
                {"window": "lung"}, {"pos": 0, "neg": 0}):
        with pytest.raises(ValueError):
            default_transforms(**bad)


def test_synthetic_lesions_randomised_and_reproducible():
    synth = LesionSynthesizer((64, 64), channels=2, count=(2, 3))
    a, b, c = synth(7), synth(7), synth(8)
    torch.testing.assert_close(a["image"], b["image"])
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (2, 64, 64) and a["label"].shape == (1, 64, 64)
    frac = a["label"].mean()
    assert 0 < frac < 0.5
    vol = LesionSynthesizer((24, 32, 32), radius=(2, 5))(0)
    assert vol["image"].shape == (1, 24, 32, 32) and vol["label"].sum() > 0
    assert LesionSynthesizer((32, 32), count=(0, 0))(0)["label"].sum() == 0
    with pytest.raises(ValueError, match="size"):
        LesionSynthesizer((64,))
    with pytest.raises(ValueError, match="contrast"):
        LesionSynthesizer(contrast=(0.5, 0.1))

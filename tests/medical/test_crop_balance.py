"""``crop_pos_neg`` / ``--crop-pos-neg``: the lesion/background ratio of the training crops reaches MONAI's
``RandCropByPosNegLabeld`` in the lesion task's real training set, and the crops it draws follow it."""

from __future__ import annotations

import argparse

import pytest

from vlsdk_medical.cli import add_arguments
from vlsdk_medical.lesion_settings import LesionSettings
from vlsdk_medical.task import lesion_train_set


def _crop(train_set):
    from monai.transforms import RandCropByPosNegLabeld

    crops = [t for t in train_set.transform.transforms if isinstance(t, RandCropByPosNegLabeld)]
    assert len(crops) == 1
    return crops[0]


def _lesion_centre_share(train_set, crop) -> float:
    """Share of the crops of lesion-bearing slices that are centred on a lesion pixel."""
    on, total = 0, 0
    for i in range(len(train_set)):
        label = train_set.raw(i)["label"][0]
        if not bool((label > 0).any()):
            continue
        train_set[i]  # the real transform chain, seeded per item; the crop records its centre
        (centre,) = crop.cropper.centers
        on += int(label[tuple(int(c) for c in centre)] > 0)
        total += 1
    assert total >= 20
    return on / total


@pytest.mark.parametrize(("pos_neg", "ratio"), [((2.0, 1.0), 2 / 3), ((1.0, 1.0), 0.5), ((1.0, 2.0), 1 / 3),
                                                 ((0.0, 1.0), 0.0), ((1.0, 0.0), 1.0)])
def test_crop_ratio_reaches_the_monai_crop(brats_root, pos_neg, ratio):
    cfg = LesionSettings(data=brats_root, train_splits=["train"], max_slices_per_case=12, roi_size=64,
                         crop_pos_neg=pos_neg)
    train_set = lesion_train_set(cfg)
    crop = _crop(train_set)
    assert crop.cropper.pos_ratio == pytest.approx(ratio)
    train_set.repeats = 4  # fresh crops per visit
    share = _lesion_centre_share(train_set, crop)
    if ratio in (0.0, 1.0):
        assert share == ratio
    else:
        assert abs(share - ratio) < 0.2, share


def test_default_is_two_lesion_crops_to_one_background_crop():
    assert LesionSettings().crop_pos_neg == (2.0, 1.0)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).crop_pos_neg == (2.0, 1.0)
    assert parser.parse_args(["--crop-pos-neg", "1:2"]).crop_pos_neg == (1.0, 2.0)


@pytest.mark.parametrize("bad", ["1", "1:2:3", "a:1", "-1:1", "0:0"])
def test_bad_crop_ratio_on_the_command_line(bad, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--crop-pos-neg", bad])
    assert "POS" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [(0.0, 0.0), (-1.0, 1.0), (1.0,), (1.0, 1.0, 1.0)])
def test_bad_crop_ratio_in_the_config(bad):
    with pytest.raises(ValueError, match="crop_pos_neg"):
        LesionSettings(crop_pos_neg=bad)

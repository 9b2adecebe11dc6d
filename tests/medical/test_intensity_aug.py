"""Training intensity augmentation: ``default_transforms(intensity_range=, gamma=)`` and the lesion task's
``intensity_aug`` presets (``--intensity-aug light|strong``) reaching MONAI's transforms."""

from __future__ import annotations

import pytest
import torch

from vlsdk_medical.lesion_settings import INTENSITY_AUG, LesionSettings
from vlsdk_medical.task import lesion_train_set
from vlsdk_medical.transforms import default_transforms


def _whole_image(**options):
    """One training pass over a 40x40 image with no spatial change: the crop is the whole image."""
    torch.manual_seed(0)
    image = torch.randn(1, 40, 40) * 2.0 + 1.0
    label = torch.zeros(1, 40, 40)
    label[0, 20, 20] = 1
    t = default_transforms(roi_size=40, flip_prob=0.0, affine_prob=0.0, intensity_prob=1.0, seed=3, **options)
    return image, t({"image": image, "label": label})[0]["image"].as_tensor()


def test_gamma_changes_contrast_and_keeps_mean_and_std():
    image, out = _whole_image(intensity_range=0.0, gamma=(2.0, 2.0))
    torch.testing.assert_close(out.mean(), image.mean(), rtol=0, atol=1e-4)
    torch.testing.assert_close(out.std(), image.std(), rtol=1e-4, atol=0)
    # monotone in the input but not an affine map of it: a contrast change, not a rescale
    order = image.flatten().argsort()
    assert bool((out.flatten()[order].diff() >= -1e-5).all())
    x, y = image.flatten().double(), out.flatten().double()
    design = torch.stack([x, torch.ones_like(x)], 1)
    residual = y - design @ torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    assert residual.abs().max() > 0.1


def test_intensity_range_bounds_the_scale_and_shift():
    image, out = _whole_image(intensity_range=0.25)
    # out = image * (1 + s) + o with |s|, |o| <= 0.25: recover s and o from two pixels
    scale = (out[0, 0, 0] - out[0, 1, 1]) / (image[0, 0, 0] - image[0, 1, 1])
    shift = out[0, 0, 0] - image[0, 0, 0] * scale
    torch.testing.assert_close(out, image * scale + shift, rtol=0, atol=1e-4)
    assert abs(float(scale) - 1) <= 0.25 and abs(float(shift)) <= 0.25
    assert abs(float(scale) - 1) > 1e-3 or abs(float(shift)) > 1e-3


@pytest.mark.parametrize("bad", [{"intensity_range": -0.1}, {"gamma": (0.0, 1.5)}, {"gamma": (1.5, 0.7)}])
def test_bad_intensity_options(bad):
    with pytest.raises(ValueError, match="intensity_range|gamma"):
        default_transforms(intensity_prob=0.5, **bad)


@pytest.mark.parametrize("preset", sorted(INTENSITY_AUG))
def test_preset_reaches_the_monai_transforms(brats_root, preset):
    from monai.transforms import RandAdjustContrastd, RandScaleIntensityd

    cfg = LesionSettings(data=brats_root, train_splits=["train"], max_slices_per_case=12, roi_size=64,
                         intensity_aug=preset)
    transforms = lesion_train_set(cfg).transform.transforms
    (scale,) = [t for t in transforms if isinstance(t, RandScaleIntensityd)]
    gammas = [t for t in transforms if isinstance(t, RandAdjustContrastd)]
    options = INTENSITY_AUG[preset]
    assert scale.prob == options["intensity_prob"]
    assert scale.scaler.factors == (-options.get("intensity_range", 0.1), options.get("intensity_range", 0.1))
    assert [g.adjuster.gamma for g in gammas] == ([options["gamma"]] if "gamma" in options else [])


def test_unknown_preset():
    with pytest.raises(ValueError, match="intensity_aug"):
        LesionSettings(intensity_aug="extreme")

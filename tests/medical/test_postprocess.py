"""Post-processing (brain mask, 3D connected components), flip TTA and the pipeline's options."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="MONAI's connected components on CPU need scikit-image")

from vlsdk_medical.inference import flip_tta  # noqa: E402
from vlsdk_medical.postprocess import (  # noqa: E402
    case_brain_mask,
    foreground_mask,
    keep_largest_component,
    parse_postprocess,
    postprocess_labels,
    remove_small_components,
)


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"))
    return ((grid - torch.tensor(centre).view(3, 1, 1, 1)).float().norm(dim=0) <= radius)


@pytest.fixture()
def tumour_with_specks() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(labels, main, specks)``: a multi-class ball (labels 1/2) plus 3 specks far away."""
    main = _ball((40, 40, 30), (15, 15, 15), 7)
    labels = main.long() + _ball((40, 40, 30), (15, 15, 15), 3).long()  # core = 2, rim = 1
    specks = torch.zeros_like(main)
    specks[35, 35, 5] = specks[33, 2, 25] = True
    specks[2:4, 30:32, 2:4] = True  # 8 voxels
    return labels + specks.long(), main, specks


def test_lcc_removes_specks_keeps_main_component(tumour_with_specks):
    labels, main, specks = tumour_with_specks
    kept = keep_largest_component(labels)
    assert torch.equal(kept, main)
    out = postprocess_labels(labels, "lcc")
    assert torch.equal(out > 0, main) and out.dtype == labels.dtype
    assert torch.equal(out[main], labels[main])  # classes inside the kept tumour untouched
    # 26-connectivity in 3D: a voxel touching the ball only at a corner belongs to it
    corner = main.clone()
    i, j, k = (int(v) for v in torch.nonzero(main)[-1])  # last foreground voxel (max x, ...)
    corner[i + 1, j + 1, k + 1] = not main[i + 1, j + 1, k + 1]
    assert keep_largest_component(corner).sum() == corner.sum()
    assert not keep_largest_component(torch.zeros(5, 5, 5)).any()


def test_min_size_keeps_second_lesion(tumour_with_specks):
    labels, main, specks = tumour_with_specks
    second = _ball((40, 40, 30), (32, 12, 22), 3)  # 123 voxels, a second real lesion
    both = labels + second.long()
    assert torch.equal(keep_largest_component(both), main)  # LCC loses it
    kept = remove_small_components(both, 50)  # voxels
    assert torch.equal(kept, main | second)
    # in mm3: the 8-voxel speck at 2 mm spacing is 64 mm3 (kept at 50 mm3, dropped at 100 mm3)
    spacing = (2.0, 2.0, 2.0)
    assert remove_small_components(both, 50, spacing)[2:4, 30:32, 2:4].all()
    assert torch.equal(remove_small_components(both, 100, spacing), main | second)
    out = postprocess_labels(both, "lcc", min_size=100, spacing=spacing)
    assert torch.equal(out > 0, main | second)
    with pytest.raises(ValueError, match="min_size"):
        remove_small_components(both, 0)
    with pytest.raises(ValueError, match="spacing"):
        remove_small_components(both, 10, (1.0, 1.0))


def test_mask_restriction(tumour_with_specks):
    labels, main, specks = tumour_with_specks
    image = torch.zeros(2, *labels.shape)
    image[0, 5:30, 5:30, 5:28] = 1.0  # the "brain": contains the tumour, not the specks
    image[1, 1:3, 1:3, 1:3] = -0.5  # a second channel differing from the background counts too
    brain = foreground_mask(image)
    assert brain.sum() == 25 * 25 * 23 + 8
    assert torch.equal(foreground_mask(image - 3.7), brain)  # z-scored: constant non-zero background
    assert torch.equal(foreground_mask(image, background=0.0), brain)
    assert foreground_mask(image - 3.7, background=0.0).all()  # "!= 0" would keep everything
    brain[1:3, 1:3, 1:3] = False
    out = postprocess_labels(labels, "mask", brain=brain)
    assert torch.equal(out, labels * brain)
    assert not (out.bool() & specks).any() and torch.equal(out[main], labels[main])
    assert torch.equal(postprocess_labels(labels, "none"), labels)
    assert torch.equal(postprocess_labels(labels, "mask+lcc", brain=brain) > 0, main)
    with pytest.raises(ValueError, match="needs the brain mask"):
        postprocess_labels(labels, "mask+lcc")
    with pytest.raises(ValueError, match="differ in shape"):
        postprocess_labels(labels, "mask", brain=brain[:-1])
    with pytest.raises(ValueError, match="postprocess must be one of"):
        parse_postprocess("largest")


def test_case_brain_mask_file_and_fallback(brats_root, tmp_path):
    from vlsdk_medical.dataset import LesionCase, LesionVolume, find_brats_cases
    from vlsdk_medical.nifti import load_image_label

    case = find_brats_cases(brats_root, "test")[0]
    image, _ = load_image_label(case.images, case.label)
    mask, source = case_brain_mask(case, image.as_tensor())
    assert source.endswith("brainmask.nii.gz") and mask.shape == image.shape[1:] and mask.dtype == torch.bool
    assert 0.05 < mask.float().mean() < 0.5  # a brain, not the whole 240 x 240 x 155 box
    # the z-scored images' constant background gives the same brain as the shipped mask
    foreground = foreground_mask(image.as_tensor())
    assert torch.equal(foreground, mask)
    # no mask file: the image foreground
    vol = LesionVolume("mem", image.as_tensor(), torch.zeros(1, *image.shape[1:]), (1.0, 1.0, 1.0))
    mask2, source2 = case_brain_mask(vol, vol.image)
    assert source2 == "foreground" and torch.equal(mask2, mask)
    bare = LesionCase("bare", case.images, str(tmp_path / "OTMultiClass.nii.gz"))
    assert case_brain_mask(bare, image.as_tensor())[1] == "foreground"


def test_flip_tta_averages_flips():
    x = torch.randn(3, 2, 8, 6)
    assert torch.allclose(flip_tta(lambda t: t)(x), x)  # flip-equivariant predictor: unchanged
    ramp = torch.arange(6.0).expand(1, 1, 8, 6)

    def biased(t: torch.Tensor) -> torch.Tensor:  # ignores the input: a left-to-right ramp
        return ramp.expand(t.shape[0], 1, 8, 6)

    out = flip_tta(biased)(x)
    assert out.shape == (3, 1, 8, 6) and torch.allclose(out, torch.full_like(out, 2.5))
    assert torch.allclose(flip_tta(biased, dims=((),))(x), biased(x))
    with pytest.raises(ValueError, match="at least one flip"):
        flip_tta(biased, dims=())


def test_pipeline_options_parse_and_validate():
    from vlsdk_medical.cli import add_arguments
    from vlsdk_medical.lesion_settings import LesionSettings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert args.postprocess == LesionSettings().postprocess == "mask+lcc"
    args = parser.parse_args(["--postprocess", "lcc", "--min-component-mm3", "50", "--tta", "flip",
                              "--sw-overlap", "0.5", "--threshold", "0.6"])
    assert (args.postprocess, args.min_component_mm3, args.tta, args.sw_overlap, args.threshold) == (
        "lcc", 50.0, "flip", 0.5, 0.6)
    with pytest.raises(SystemExit):
        parser.parse_args(["--postprocess", "largest"])
    for bad in ({"postprocess": "largest"}, {"threshold": 1.0}, {"sw_overlap": 1.0}, {"tta": "rot"},
                {"min_component_mm3": 0.0}):
        with pytest.raises(ValueError):
            LesionSettings(**bad)


def test_evaluate_reports_before_and_after_on_same_predictions(brats_root, tmp_path):
    import vlsdk
    from vlsdk_medical.evaluation import evaluate_held_out
    from vlsdk_medical.lesion_settings import LesionSettings
    from vlsdk_medical.task import held_out_set

    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=2)
    model.add_head("lesion", task="segmentation", num_classes=1)  # untrained: speckled predictions
    base = {"data": brats_root, "out": tmp_path, "eval_slices": 6, "roi_size": 64, "threshold": 0.5}
    data = held_out_set(LesionSettings(**base))
    runs = {mode: evaluate_held_out(model, data, LesionSettings(**base, postprocess=mode))
            for mode in ("none", "mask+lcc")}
    cid = "brats_2013_pat0001_1"
    none, clean = runs["none"], runs["mask+lcc"]
    assert none["before"]["dice"][cid] == none["dice"][cid]  # nothing done: before == after
    assert clean["before"]["dice"][cid] == none["dice"][cid]  # same predictions before post-processing
    assert clean["before"]["hd95"][cid] == none["hd95"][cid]
    raw_pred, clean_pred = none["shown"][cid][2], clean["shown"][cid][2]
    assert clean_pred.sum() < raw_pred.sum() and not (clean_pred.bool() & ~raw_pred.bool()).any()
    assert clean["dice"][cid] != none["dice"][cid]
    assert clean["postprocess"] == "mask+lcc" and clean["brain_mask"][cid].endswith("brainmask.nii.gz")
    assert np.isfinite(clean["before"]["dice_mean"])

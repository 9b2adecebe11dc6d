"""2.5D input (``context_slices``): the stacked channels are the volume's neighbours (clamped at the edges),
MONAI transforms move them together, a model trained with context is evaluated and used for prediction
with the same channels, and ``context_slices=0`` is the plain slice as before."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import vlsdk
import vlsdk_medical.plugin as medical_plugin
from vlsdk_medical.dataset import LesionSliceDataset, LesionVolume
from vlsdk_medical.inference import (
    INPUT_KEY,
    centre_channels,
    predict_slices,
    predict_volume,
    stack_context,
)


def _volume(c=2, x=12, y=10, z=6, seed=0):
    return torch.randn(c, x, y, z, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_stacked_channels_are_the_clamped_neighbours(axis):
    vol, n = _volume(), 2
    depth = vol.shape[axis + 1]
    ks = torch.arange(depth)
    out = stack_context(vol, ks, n, axis)
    plane = [s for d, s in enumerate(vol.shape[1:]) if d != axis]
    assert out.shape == (depth, 2 * (2 * n + 1), *plane)
    for k in range(depth):  # reference: one slice at a time, index clamped by hand
        for c in range(vol.shape[0]):
            for j in range(-n, n + 1):
                near = min(max(k + j, 0), depth - 1)
                torch.testing.assert_close(out[k, c * (2 * n + 1) + n + j], vol[c].select(axis, near), rtol=0, atol=0)
    # the edges repeat the border slice
    assert torch.equal(out[0, 0], out[0, 2]) and torch.equal(out[-1, 3], out[-1, 4])
    assert torch.equal(out[:, centre_channels(2, n)], vol.movedim(axis + 1, 0))
    with pytest.raises(ValueError, match="context_slices"):
        stack_context(vol, ks, -1, axis)
    with pytest.raises(ValueError, match="slice indices"):
        stack_context(vol, [depth], 1, axis)


def test_context_zero_is_the_plain_slice():
    vol = _volume()
    ks = torch.tensor([0, 3, 5])
    assert torch.equal(stack_context(vol, ks, 0), vol.index_select(3, ks).movedim(3, 0))
    case = LesionVolume("p", vol, (vol[:1] > 1).float(), (1.0, 1.0, 2.0))
    plain = LesionSliceDataset([case], transform=None, slices="all")
    assert plain.context_slices == 0 and plain.num_channels == 2
    for i, k in enumerate(range(vol.shape[3])):
        assert torch.equal(plain[i]["image"], vol[..., k])


def test_dataset_items_carry_the_neighbours_through_the_monai_transforms():
    # slices that differ only by a factor: every spatial transform (crop, flip, bilinear affine) is linear,
    # so if it moves all channels together, channel (k + j) = centre * (k + j + 1) / (k + 1) after it
    x, y, z, n = 40, 36, 5, 1
    base = torch.rand(2, x, y, 1, generator=torch.Generator().manual_seed(1)) + 0.5
    vol = base * torch.arange(1.0, z + 1).view(1, 1, 1, z)
    label = torch.zeros(1, x, y, z)
    label[0, 10:20, 12:22] = 1
    case = LesionVolume("p", vol, label, (1.0, 1.0, 1.0))
    options = {"pos": 1.0, "neg": 1.0, "affine_prob": 1.0}
    ds = LesionSliceDataset([case], roi_size=24, slices="all", seed=5, context_slices=n, transform_options=options)
    plain = LesionSliceDataset([case], roi_size=24, slices="all", seed=5, transform_options=options)
    assert ds.num_channels == 2 * (2 * n + 1) and len(ds) == z
    raw = ds.raw(0)["image"]  # slice 0: the slice below is the slice itself
    assert raw.shape == (6, x, y) and torch.equal(raw[0], raw[1]) and torch.equal(raw[1], vol[0, ..., 0])
    for i in range(z):
        k = ds.index[i][1]
        item = ds[i]["image"]
        assert item.shape == (6, 24, 24)
        centre = item[centre_channels(2, n)]
        torch.testing.assert_close(centre, plain[i]["image"])  # the same random crop/flip/affine as without context
        for c in range(2):
            for j in (-1, 1):
                near = min(max(k + j, 0), z - 1)
                torch.testing.assert_close(item[c * 3 + 1 + j], centre[c] * (near + 1) / (k + 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="context_slices"):
        LesionSliceDataset([case], spatial_dims=3, context_slices=1)


def test_predict_volume_context_and_default():
    torch.manual_seed(0)
    vol = _volume(x=32, y=32, z=5)
    model = vlsdk.VLModel("tiny", in_chans=2)
    model.add_head("lesion", task="segmentation", num_classes=1)
    model.eval()
    from vlsdk_medical.inference import model_predictor

    predictor = model_predictor(model, "lesion")
    # default: the same as the slices straight from the volume
    want = predict_slices(predictor, vol.movedim(3, 0), 32).movedim(0, 3)
    torch.testing.assert_close(predict_volume(model, vol, roi_size=32, batch_slices=2), want)
    wide = vlsdk.VLModel("tiny", in_chans=6)
    wide.add_head("lesion", task="segmentation", num_classes=1)
    wide.eval()
    got = predict_volume(wide, vol, roi_size=32, batch_slices=2, context_slices=1)  # batches of 2 slices
    want = predict_slices(model_predictor(wide, "lesion"), stack_context(vol, torch.arange(5), 1), 32).movedim(0, 3)
    torch.testing.assert_close(got, want)


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6)


def test_model_trained_with_context_is_evaluated_and_used_with_the_same_channels(register_plugin, brats_root,
                                                                                     tmp_path):
    import nibabel as nib

    from vlsdk.predict import predict_files
    from vlsdk.tasks import train
    from vlsdk_medical.cli import evaluate_saved_model
    from vlsdk_medical.evaluation import evaluate_held_out
    from vlsdk_medical.inference import probs_to_labels, recorded_input
    from vlsdk_medical.task import LesionTask, held_out_set

    register_plugin(medical_plugin, "medical")
    task = LesionTask()
    common = {"data": brats_root, "model": "tiny", "eval_slices": 3, "roi_size": 64, "progress": False,
              "device": "cpu", "draw": 0}
    result = train(task, task.settings(**common, out=tmp_path / "run", max_steps=1, batch_size=2,
                                       train_splits=["train"], max_slices_per_case=2, experts=[], context_slices=1))
    model_dir = tmp_path / "run" / "model"
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["backbone"]["in_chans"] == 2 * 3
    assert saved["metadata"]["input"]["channels"] == ["flair-1", "flair", "flair+1", "t1c-1", "t1c", "t1c+1"]
    assert recorded_input(model_dir) == {"modalities": ["flair", "t1c"], "num_modalities": 2, "context_slices": 1,
                                         "train_cases": ["brats_2013_pat0005_1", "brats_2013_pat0006_1"],
                                         "class_names": ["lesion"]}
    assert INPUT_KEY not in saved  # the task records it in the model's metadata

    # --eval-model: the recorded context is used (the settings' default 0 does not override it)
    again = evaluate_saved_model(model_dir, task.settings(**common, out=tmp_path / "eval"))
    assert again["settings"]["context_slices"] == 1
    case = "brats_2013_pat0001_1"
    assert _same(again["metrics"]["dice"][case], result.metrics["dice"][case])
    assert _same(again["metrics"]["before"]["dice"][case], result.metrics["before"]["dice"][case])
    with pytest.raises(ValueError, match="context_slices=1, not 2"):
        evaluate_saved_model(model_dir, task.settings(**common, out=tmp_path / "e2", context_slices=2))
    with pytest.raises(ValueError, match="modalities"):
        evaluate_saved_model(model_dir, task.settings(**common, out=tmp_path / "e3", modalities=["flair"]))
    model = vlsdk.VLModel.from_pretrained(model_dir)
    plain = task.settings(**common)
    with pytest.raises(ValueError, match="6 input channels"):
        evaluate_held_out(model, held_out_set(plain), plain)

    # vlsdk predict on a NIfTI: the reader stacks the same neighbours
    data = np.random.default_rng(0).normal(size=(32, 28, 4, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "scan.nii.gz")
    index = predict_files(model_dir, [tmp_path / "scan.nii.gz"], tmp_path / "pred")
    mask = np.asarray(nib.load(index["inputs"][0]["lesion"]["mask"]).dataobj)
    volume = torch.from_numpy(np.moveaxis(data, -1, 0))
    want = probs_to_labels(predict_volume(model.eval(), volume, head="lesion", context_slices=1)).numpy()
    np.testing.assert_array_equal(mask, want)

"""Dice / HD95 per case via monai.metrics, sliding-window inference, plugin registration."""

from __future__ import annotations

import math

import pytest
import torch

import vlsdk_medical.plugin as medical_plugin
from vlsdk_medical.inference import predict_slices, predict_volume, probs_to_labels
from vlsdk_medical.metrics import CaseDice, CaseHD95


def test_dice_per_case_and_overall():
    target = torch.zeros(2, 10, 10, dtype=torch.long)
    target[:, 2:6, 2:6] = 1  # 16 voxels
    pred = torch.zeros_like(target)
    pred[0, 2:6, 2:6] = 1  # perfect
    pred[1, 2:6, 2:4] = 1  # 8 of 16: 2*8/(8+16)
    m = CaseDice(2)
    m.update(pred, target, cases=["a", "b"])
    out = m.compute()
    assert out["per_case"]["a"] == pytest.approx(1.0)
    assert out["per_case"]["b"] == pytest.approx(2 / 3)
    assert out["mean"] == pytest.approx((1 + 2 / 3) / 2)
    # slices of one case stack into one volume: Dice over the volume, not a mean of slices
    m.reset()
    m.update(pred, target, cases=["p", "p"])
    assert m.compute()["per_case"]["p"] == pytest.approx(2 * 24 / (24 + 32))
    m.reset()
    m.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long), cases=["empty"])
    assert math.isnan(m.compute()["per_case"]["empty"]) and math.isnan(m.compute()["mean"])
    with pytest.raises(ValueError, match="labels must be in"):
        m.update(torch.full((1, 4, 4), 3), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))


def test_hd95_in_mm():
    target = torch.zeros(1, 20, 20, dtype=torch.long)
    target[0, 5:10, 5:10] = 1
    pred = torch.roll(target, 2, dims=1)
    m = CaseHD95(2)
    m.update(pred, target, cases=["x"], spacing=(1.5, 1.0))
    assert m.compute()["per_case"]["x"] == pytest.approx(3.0)
    m.reset()
    m.update(torch.zeros_like(target), target, cases=["miss"])
    assert math.isnan(m.compute()["per_case"]["miss"])


def test_sliding_window_inference_and_registration(register_plugin):
    register_plugin(medical_plugin, "medical")
    from vlsdk.plugins import get_registry

    for kind, names in {"datasets": ["medical.dicom", "medical.nifti", "medical.lesion_slices"],
                        "transforms": ["medical.default"], "metrics": ["medical.dice", "medical.hd95"],
                        "synthesizers": ["medical.lesions"], "experts": ["medical.lesion"],
                        "commands": ["medical-lesion"]}.items():
        registry = get_registry(kind)
        assert all(n in registry for n in names), (kind, registry.names())
    synth = get_registry("synthesizers").get("medical.lesions").obj((50, 70))
    sample = synth(0)
    import vlsdk

    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("lesion", task="segmentation", num_classes=1)
    model.add_expert("medical.lesion")
    model.eval()
    probs = predict_slices(lambda x: torch.sigmoid(model(x, heads=["lesion"])["lesion"].logits),
                           sample["image"][None], roi_size=32, overlap=0.25)
    assert probs.shape == (1, 1, 50, 70) and 0 <= probs.min() and probs.max() <= 1
    vol = torch.randn(1, 40, 36, 3)
    pv = predict_volume(model, vol, roi_size=32)
    assert pv.shape == (1, 40, 36, 3) and probs_to_labels(pv).shape == (40, 36, 3)
    # slice-wise: the volume's slice k equals predicting that slice alone
    alone = predict_volume(model, vol[..., 1:2], roi_size=32)
    torch.testing.assert_close(pv[..., 1:2], alone, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="no head"):
        predict_volume(model, vol, head="nope")

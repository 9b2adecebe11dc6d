"""DiceMetric against a direct count, accumulation over batches, and bad labels named."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlsdk.metrics.segmentation import DiceMetric


def test_dice_matches_a_direct_count_over_batches() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (4, 16, 16))
    pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 3, target.shape))
    m = DiceMetric(class_names=["bg", "crack", "stain", "hole"])
    m.update(torch.as_tensor(pred[:2]), torch.as_tensor(target[:2]))
    m.update(pred[2:], target[2:])
    out = m.compute()
    for k, name in enumerate(["bg", "crack", "stain"]):
        p, t = pred == k, target == k
        assert out["per_class"][name] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
    assert math.isnan(out["per_class"]["hole"])  # in neither: no Dice, not 0 or 1
    assert out["dice"] == pytest.approx((out["per_class"]["crack"] + out["per_class"]["stain"]) / 2)
    m.reset()
    m.update(target, target)
    assert m.compute()["dice"] == 1.0
    assert DiceMetric(3, background=()).num_classes == 3


def test_bad_labels_are_named() -> None:
    m = DiceMetric(2)
    with pytest.raises(ValueError, match=r"target_labels: 1 value\(s\) outside the class ids \[0, 2\)"):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 1], [2, 0]]))
    with pytest.raises(ValueError, match=r"pred_labels: 1 non-finite"):
        m.update(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="same shape"):
        m.update(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_classes"):
        DiceMetric()

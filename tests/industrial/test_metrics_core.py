"""The industrial mAP is the core's, with the DeepPCB classes as its default; non-finite input is named."""

from __future__ import annotations

import numpy as np
import pytest

from tests.industrial.test_metrics import _scene
from vlsdk.metrics import detection as core
from vlsdk_industrial import metrics as industrial
from vlsdk_industrial.samples import DEEPPCB_CLASSES


def test_industrial_map_is_the_core_map_with_deeppcb_classes() -> None:
    preds, targets = _scene(3)
    ours, theirs = industrial.DetectionMAP(), core.DetectionMAP(DEEPPCB_CLASSES)
    assert isinstance(ours, core.DetectionMAP) and ours.class_names == DEEPPCB_CLASSES
    ours.update(preds, targets)
    theirs.update(preds, targets)
    np.testing.assert_equal(ours.compute().as_dict(), theirs.compute().as_dict())  # nan == nan here
    assert industrial.greedy_match is core.greedy_match and industrial.MAPResult is core.MAPResult
    with pytest.raises(TypeError):
        core.DetectionMAP()  # the core has no default classes


@pytest.mark.parametrize(("key", "value"), [("boxes", [[0, 0, np.nan, 4]]), ("scores", [np.inf])])
def test_non_finite_prediction_is_an_error(key: str, value: list) -> None:
    pred = {"boxes": [[0, 0, 4, 4]], "scores": [0.5], "labels": [0], key: value}
    m = industrial.DetectionMAP()
    with pytest.raises(ValueError, match=rf"prediction 0: 1 {key} with a non-finite value"):
        m.update([pred], [{"boxes": [[0, 0, 4, 4]], "labels": [0]}])
    with pytest.raises(ValueError, match=r"target 0: 1 boxes with a non-finite value"):
        m.update([{"boxes": [[0, 0, 4, 4]], "scores": [0.5], "labels": [0]}],
                 [{"boxes": [[0, 0, np.inf, 4]], "labels": [0]}])

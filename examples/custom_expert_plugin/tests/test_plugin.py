"""Tests of the example plugin. Run them from this directory after ``pip install -e .``:

    pip install -e . && python -m pytest
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import pytest
import torch
from vlsdk.testing import check_expert

from vlsdk_example_plugin import plugin
from vlsdk_example_plugin.datasets import CheckerboardDataset
from vlsdk_example_plugin.experts import GatedMLPExpert

# vlsdk's helpers for plugin authors, as an opt-in pytest plugin.
pytest_plugins = ["vlsdk.testing"]


def _installed() -> bool:
    try:
        distribution("vlsdk-example-plugin")
    except PackageNotFoundError:
        return False
    return True


def test_expert_follows_the_contract():
    check_expert(GatedMLPExpert, dim=32)
    check_expert(GatedMLPExpert, dim=8, hidden=4)


def test_expert_rejects_bad_arguments():
    with pytest.raises(ValueError):
        GatedMLPExpert(0)
    with pytest.raises(ValueError):
        GatedMLPExpert(8, hidden=0)


def test_dataset_samples():
    ds = CheckerboardDataset(length=6, image_size=(16, 24), channels=1, square=4, noise=0.0)
    assert len(ds) == 6
    sample = ds[3]
    assert sample["image"].shape == (1, 16, 24) and sample["image"].dtype == torch.float32
    assert sample["label"] in (0, 1)
    assert float(sample["image"][0, 0, 0]) == sample["label"]        # top-left square = label
    torch.testing.assert_close(ds[3]["image"], sample["image"])      # deterministic
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(ValueError):
        CheckerboardDataset(image_size=0)


def test_hooks_register_both_components():
    seen = {}

    def register(name, obj, *, replace=False, **metadata):
        seen[name] = obj

    plugin.vlsdk_register_experts(register=register)
    plugin.vlsdk_register_datasets(register=register)
    assert seen == {"example.gated_mlp": GatedMLPExpert, "example.checkerboard": CheckerboardDataset}


@pytest.mark.skipif(not _installed(), reason="install the plugin first: pip install -e .")
def test_vlsdk_discovers_the_installed_plugin():
    from vlsdk.plugins import build_expert, get_registry

    expert = build_expert("example.gated_mlp", 16, hidden=8)
    assert isinstance(expert, GatedMLPExpert) and expert.hidden == 8
    entry = get_registry("datasets").get("example.checkerboard")
    assert entry.obj is CheckerboardDataset and entry.plugin == "example"

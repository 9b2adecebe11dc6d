"""Fixtures of the driving tests: the real nuScenes keyframe, loaded once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("nuscenes", reason='the driving tests need nuscenes-devkit: pip install "vlsdk[driving]"')


@pytest.fixture(scope="module")
def nuscenes_root(shared_data: Path) -> Path:
    """``../shared/data/nuscenes_mini`` (skips, naming it, when absent)."""
    root = shared_data / "nuscenes_mini"
    if not (root / "v1.0-mini").is_dir():
        pytest.skip(f"{root} holds no v1.0-mini tables")
    return root


@pytest.fixture(scope="module")
def nuscenes_ds(nuscenes_root: Path):
    """The real keyframe through the adapter (all six cameras)."""
    from vlsdk_driving.nuscenes_adapter import NuScenesDataset

    return NuScenesDataset(nuscenes_root)


@pytest.fixture(scope="module")
def real_sample(nuscenes_ds):
    """The real keyframe as a :class:`DrivingSample`."""
    return nuscenes_ds[0]

"""Fixtures shared by the generic data tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def deeppcb(shared_data: Path) -> Path:
    """The real DeepPCB folder in ../shared/data (skips, naming it, when it is absent)."""
    root = shared_data / "deeppcb"
    if not (root / "PCBData" / "test.txt").is_file():
        pytest.skip(f"{root} holds no PCBData/test.txt")
    return root

"""Shared set-up of the robustness tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No plugin switch of the caller's shell leaks into a test."""
    for name in ("VLSDK_STRICT_PLUGINS", "VLSDK_LOAD_PLUGINS", "VLSDK_DISABLE_PLUGINS", "VLSDK_ALLOW_REPLACE",
                 "VLSDK_SLOW_PLUGIN_SECONDS"):
        monkeypatch.delenv(name, raising=False)

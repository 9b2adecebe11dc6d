"""The environment switches of plugin loading (read when plugins are loaded, not at import)."""

from __future__ import annotations

import os

STRICT = "VLSDK_STRICT_PLUGINS"
LOAD = "VLSDK_LOAD_PLUGINS"
DISABLE = "VLSDK_DISABLE_PLUGINS"

_TRUE = {"1", "true", "yes", "on"}


def strict_plugins() -> bool:
    """``VLSDK_STRICT_PLUGINS=1``: re-raise a plugin's error instead of warning."""
    return os.environ.get(STRICT, "").strip().lower() in _TRUE


def name_list(variable: str) -> list[str] | None:
    """A comma-separated list from the environment; ``None`` when unset, ``[]`` when empty."""
    value = os.environ.get(variable)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]

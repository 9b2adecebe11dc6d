"""The environment switches of plugin loading (read when plugins are loaded, not at import)."""

from __future__ import annotations

import math
import os

__all__ = [
    "ALLOW_REPLACE",
    "DISABLE",
    "LOAD",
    "SLOW",
    "SLOW_DEFAULT_SECONDS",
    "STRICT",
    "name_list",
    "slow_seconds",
    "strict_plugins",
]

STRICT = "VLSDK_STRICT_PLUGINS"
LOAD = "VLSDK_LOAD_PLUGINS"
DISABLE = "VLSDK_DISABLE_PLUGINS"
ALLOW_REPLACE = "VLSDK_ALLOW_REPLACE"
SLOW = "VLSDK_SLOW_PLUGIN_SECONDS"

#: A plugin that takes longer than this to import and register is warned about.
SLOW_DEFAULT_SECONDS = 2.0

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


def slow_seconds() -> float:
    """``VLSDK_SLOW_PLUGIN_SECONDS``: the load time above which a plugin is warned about.

    Raises:
        ValueError: the variable is set but is not a finite number >= 0.
    """
    value = os.environ.get(SLOW, "").strip()
    if not value:
        return SLOW_DEFAULT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{SLOW}: expected a number of seconds >= 0, got {value!r}")
    return seconds

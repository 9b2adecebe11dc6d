"""Autocast queries that ``torch.compile`` can trace on every supported torch version."""

from __future__ import annotations

import torch

__all__ = ["autocast_enabled"]

_ALWAYS_AVAILABLE = ("cuda", "cpu")  # device types with autocast in every torch build


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``False`` where it has no autocast, e.g. ``"meta"``).

    ``torch.amp.is_autocast_available`` is only asked for other device types: before torch 2.13,
    dynamo cannot trace it, and a ``fullgraph=True`` compile of a MoE model failed on it.

    Example:
        >>> autocast_enabled("cpu")
        False
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     autocast_enabled("cpu")
        True
    """
    if device_type not in _ALWAYS_AVAILABLE and not torch.amp.is_autocast_available(device_type):
        return False
    return torch.is_autocast_enabled(device_type)

"""Lazy package exports (PEP 562): ``import vlsdk.export`` costs nothing until a name is used."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``name`` from ``exports[name]`` on first use.

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"VLModel": "vlsdk.models.model"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # cache: the next lookup is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*exports, *getattr(sys.modules[package], "__all__", ())})

    return __getattr__, __dir__

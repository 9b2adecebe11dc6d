"""The core plugin ``vlsdk``'s heads and generic expert.

One of the core plugin's modules (:data:`vlsdk.plugins.manager.CORE_PLUGIN_MODULES`; the core
commands are in :mod:`vlsdk.cli.builtin`). :class:`vlsdk.plugins.manager.PluginHost` registers
them directly (not through an entry point) and first, so the core's names belong to ``vlsdk``.
They go through the same hooks as any plugin.

Each core object is imported inside its hook. A core module that is not part of this install
yet is skipped; one that fails to import is reported with a :class:`VlsdkPluginWarning` (raised
under ``VLSDK_STRICT_PLUGINS=1``) and skipped, so one broken head never takes the CLI down.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from vlsdk.plugins import _env
from vlsdk.plugins.errors import VlsdkPluginWarning
from vlsdk.plugins.markers import hookimpl

if TYPE_CHECKING:
    from vlsdk.plugins.registry import Registrar

__all__ = ["CORE_EXPERTS", "CORE_HEADS", "PLUGIN_NAME", "vlsdk_register_experts", "vlsdk_register_heads"]

#: The plugin name of the core.
PLUGIN_NAME = "vlsdk"

#: task -> (module, attribute) of the core heads.
CORE_HEADS: dict[str, tuple[str, str]] = {
    "detection": ("vlsdk.heads.detection", "DetectionHead"),
    "segmentation": ("vlsdk.heads.segmentation", "SegmentationHead"),
    "depth": ("vlsdk.heads.depth", "DepthHead"),
}

#: name -> (module, attribute) of the core experts.
CORE_EXPERTS: dict[str, tuple[str, str]] = {
    "generic.mlp": ("vlsdk.models.experts", "ExpertMLP"),
}


def _load(kind: str, name: str, module: str, attr: str) -> Any | None:
    """``module.attr``, or ``None`` when the module is absent or broken (warned)."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        parts = module.split(".")
        if exc.name in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            return None  # not part of this install (yet)
        problem: BaseException = exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken core module is reported, not fatal
        problem = exc
    if _env.strict_plugins():
        raise problem
    warnings.warn(
        f"vlsdk: core {kind} {name!r} ({module}.{attr}) is unavailable: "
        f"{type(problem).__name__}: {problem}",
        VlsdkPluginWarning,
        stacklevel=3,
    )
    return None


def _register_table(register: Registrar, kind: str, table: dict[str, tuple[str, str]]) -> None:
    for name, (module, attr) in table.items():
        obj = _load(kind, name, module, attr)
        if obj is not None:
            register(name, obj, source=f"{module}.{attr}")


@hookimpl
def vlsdk_register_heads(register: Registrar) -> None:
    """The core heads: ``detection``, ``segmentation``, ``depth``."""
    _register_table(register, "head", CORE_HEADS)


@hookimpl
def vlsdk_register_experts(register: Registrar) -> None:
    """The core expert ``generic.mlp``."""
    _register_table(register, "expert", CORE_EXPERTS)


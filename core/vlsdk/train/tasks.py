"""The registry of training recipes (hook ``vlsdk_register_tasks``), one per plugin host.

Entries are :class:`~vlsdk.train.recipes.TrainRecipe` objects attributed to their plugin, with
the same name-clash policy and teaching errors as every other registry. While ``"tasks"`` is not
one of :data:`vlsdk.plugins.manager.KINDS`, this module calls each loaded plugin's hook itself
(one plugin at a time, rolling a failing plugin's entries back and warning); once it is, the host
fills the registry and :func:`task_registry` just returns it.

This module imports no torch itself (the ``vlsdk.train`` package does).
"""

from __future__ import annotations

import functools
import threading
import warnings
import weakref
from typing import Any

from vlsdk.plugins.errors import VlsdkPluginWarning
from vlsdk.plugins.manager import KINDS, PluginHost, get_host
from vlsdk.plugins.registry import Change, Registrar, Registry, RegistryEntry

__all__ = ["TASKS_CONTRACT", "get_task", "task_registry"]

#: What a ``vlsdk_register_tasks`` registration must be.
TASKS_CONTRACT = "vlsdk.train.recipes.TrainRecipe (TrainRecipe.from_dataclass(...) or .from_argparse(...))"
_TASK_NAME = r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*"
_HOOK = "vlsdk_register_tasks"

_cache: weakref.WeakKeyDictionary[PluginHost, tuple[tuple[str, ...], Registry]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _is_recipe(obj: Any) -> str | None:
    from vlsdk.train.recipes import TrainRecipe

    return None if isinstance(obj, TrainRecipe) else f"expected a TrainRecipe, got {type(obj).__name__}"


def task_registry(host: PluginHost | None = None) -> Registry:
    """The training recipes of ``host`` (default: the default host), loading plugins first.

    Args:
        host: the plugin host.

    Example:
        >>> "medical.lesion" in task_registry()  # doctest: +SKIP
        True
    """
    host = host or get_host()
    if "tasks" in KINDS:
        return host.registry("tasks")
    infos = host.plugin_infos()
    loaded = tuple(i.name for i in infos if i.status == "loaded")
    with _lock:
        cached = _cache.get(host)
        if cached is not None and cached[0] == loaded:
            return cached[1]
        registry = Registry("tasks", TASKS_CONTRACT, name_pattern=_TASK_NAME, validate=_is_recipe,
                            name_help="Task names look like '<domain>.<task>', e.g. 'medical.lesion'.",
                            explain_missing=functools.partial(host._explain_missing, "tasks"))  # noqa: SLF001
        for info in infos:
            plugin = host.pm.get_plugin(info.name) if info.status == "loaded" else None
            if plugin is not None:
                _call_hook(host, plugin, info.name, info.distribution, info.version, registry)
        _cache[host] = (loaded, registry)
        return registry


def _call_hook(host: PluginHost, plugin: object, name: str, distribution: str | None, version: str | None,
               registry: Registry) -> None:
    others = [p for p in host.pm.get_plugins() if p is not plugin]
    caller = host.pm.subset_hook_caller(_HOOK, others)
    if not any(impl.plugin is plugin for impl in caller.get_hookimpls()):
        return
    changes: list[Change] = []
    try:
        caller(register=Registrar(registry, name, distribution, version, changes))
    except Exception as exc:  # noqa: BLE001 - one broken plugin never takes the others down
        for reg, entry_name, previous, entry in reversed(changes):
            reg._restore(entry_name, entry, previous)  # noqa: SLF001
        if host.strict:
            raise
        warnings.warn(f"vlsdk plugin {name!r}: {_HOOK} failed, its tasks were skipped: {type(exc).__name__}: {exc}",
                      VlsdkPluginWarning, stacklevel=3)


def get_task(name: str, host: PluginHost | None = None) -> RegistryEntry:
    """The registered recipe ``name`` (:class:`~vlsdk.plugins.errors.UnknownNameError` naming the
    closest task and, for a domain whose extra is missing, the ``pip install`` line).

    Args:
        name: the task, e.g. ``"medical.lesion"``.
        host: the plugin host (default: the default host).
    """
    return task_registry(host).get(name)

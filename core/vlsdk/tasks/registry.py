"""The ``tasks`` registry: :class:`~vlsdk.tasks.Task` subclasses by name (hook ``vlsdk_register_tasks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlsdk.plugins.errors import UnknownNameError
from vlsdk.plugins.manager import get_host
from vlsdk.tasks.protocol import Task

if TYPE_CHECKING:
    from vlsdk.plugins.manager import PluginHost
    from vlsdk.plugins.registry import Registry, RegistryEntry

__all__ = ["get_entry", "get_task", "task_registry"]


def task_registry(host: PluginHost | None = None) -> Registry:
    """The ``tasks`` registry of ``host`` (default: the default host), loading plugins first."""
    return (host or get_host()).registry("tasks")


def get_entry(name: str, host: PluginHost | None = None) -> RegistryEntry:
    """The registry entry ``name`` (its ``obj`` is the task class).

    Raises:
        ValueError: an unknown name, naming the closest registered task (or the extra to install).
    """
    try:
        return task_registry(host).get(name)
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from None


def get_task(name: str, host: PluginHost | None = None) -> Task:
    """An instance of the registered task ``name``.

    Raises:
        ValueError: an unknown name, naming the closest (or the extra to install).
    """
    return get_entry(name, host).obj()

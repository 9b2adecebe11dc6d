"""The registry of training recipes (hook ``vlsdk_register_tasks``).

Entries are :class:`~vlsdk.train.recipes.TrainRecipe` objects attributed to their plugin, with
the same name-clash policy and teaching errors as every other registry: the plugin host fills
it like the others (:data:`vlsdk.plugins.manager.KINDS` holds ``"tasks"``).
"""

from __future__ import annotations

from vlsdk.plugins.manager import CONTRACTS, PluginHost, get_host
from vlsdk.plugins.registry import Registry, RegistryEntry

__all__ = ["TASKS_CONTRACT", "get_task", "task_registry"]

#: What a ``vlsdk_register_tasks`` registration must be.
TASKS_CONTRACT = CONTRACTS["tasks"]


def task_registry(host: PluginHost | None = None) -> Registry:
    """The training recipes of ``host`` (default: the default host), loading plugins first.

    Args:
        host: the plugin host.

    Example:
        >>> "medical.lesion" in task_registry()  # doctest: +SKIP
        True
    """
    return (host or get_host()).registry("tasks")


def get_task(name: str, host: PluginHost | None = None) -> RegistryEntry:
    """The registered recipe ``name`` (:class:`~vlsdk.plugins.errors.UnknownNameError` naming the
    closest task and, for a domain whose extra is missing, the ``pip install`` line).

    Args:
        name: the task, e.g. ``"medical.lesion"``.
        host: the plugin host (default: the default host).
    """
    return task_registry(host).get(name)

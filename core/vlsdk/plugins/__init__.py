"""vlsdk's plugin system: pluggy hooks, entry-point discovery and plugin-attributed registries.

Write a plugin::

    # acme_vlsdk/plugin.py
    from vlsdk.plugins import hookimpl, require_extra

    require_extra("acme", "scipy", distribution="acme-vlsdk")  # optional dependencies

    @hookimpl
    def vlsdk_register_experts(register):
        from acme_vlsdk.experts import TextureExpert
        register("acme.texture", TextureExpert)

declare it in ``pyproject.toml``::

    [project.entry-points."vlsdk.plugins"]
    acme = "acme_vlsdk.plugin"

and use what it registered::

    from vlsdk.plugins import build_expert, get_registry
    expert = build_expert("acme.texture", dim=256)
    get_registry("experts").get("acme.texture").distribution  # 'acme-vlsdk'

``vlsdk plugins`` shows what every plugin registered, what it replaced, how long it took to load
and why one did not load. The hooks are in :mod:`vlsdk.plugins.hookspecs`; the environment
switches (``VLSDK_STRICT_PLUGINS``, ``VLSDK_LOAD_PLUGINS``, ``VLSDK_DISABLE_PLUGINS``,
``VLSDK_ALLOW_REPLACE``, ``VLSDK_SLOW_PLUGIN_SECONDS``) in :mod:`vlsdk.plugins.manager`.

This package imports nothing of :mod:`vlsdk.cli` or :mod:`vlsdk.train`: the core plugin's modules
(:data:`CORE_PLUGIN_MODULES`) are imported by name when plugins load.
"""

from __future__ import annotations


from vlsdk.plugins import errors
from vlsdk.plugins.commands import Command, CommandRegistrar
from vlsdk.plugins.errors import (
    DuplicateNameError,
    MissingExtraError,
    ReplaceNotAllowedError,
    UnknownNameError,
    VlsdkPluginWarning,
    require_extra,
)
from vlsdk.plugins.manager import (
    CORE_PLUGIN_MODULES,
    ENTRY_POINT_GROUP,
    KINDS,
    PluginHost,
    PluginInfo,
    Replacement,
    build_expert,
    build_head,
    get_host,
    get_registry,
    load_plugins,
    plugin_infos,
    use_host,
)
from vlsdk.plugins.markers import hookimpl
from vlsdk.plugins.registry import Registrar, Registry, RegistryEntry

__all__ = [
    "CORE_PLUGIN_MODULES",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Command",
    "CommandRegistrar",
    "DuplicateNameError",
    "MissingExtraError",
    "PluginHost",
    "PluginInfo",
    "Registrar",
    "Registry",
    "RegistryEntry",
    "ReplaceNotAllowedError",
    "Replacement",
    "UnknownNameError",
    "VlsdkPluginWarning",
    "build_expert",
    "build_head",
    "errors",
    "get_host",
    "get_registry",
    "hookimpl",
    "load_plugins",
    "plugin_infos",
    "require_extra",
    "use_host",
]

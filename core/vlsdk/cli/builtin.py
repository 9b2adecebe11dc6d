"""The core commands' hook: one of the core plugin's modules (``CORE_PLUGIN_MODULES``).

The plugin host imports this module by name and attributes what it registers to plugin
``vlsdk``, so :mod:`vlsdk.plugins` never imports the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlsdk.plugins.markers import hookimpl

if TYPE_CHECKING:
    from vlsdk.plugins.commands import CommandRegistrar

__all__ = ["vlsdk_register_commands"]


@hookimpl
def vlsdk_register_commands(register: CommandRegistrar) -> None:
    """The core commands: ``plugins``, ``experts``, ``heads``, ``datasets``, ``info`` and more."""
    from vlsdk.cli.commands import CORE_COMMANDS

    for command in CORE_COMMANDS:
        register(command.name, command)

"""The ``vlsdk`` command line (``vlsdk = "vlsdk.cli:main"``; also ``python -m vlsdk``).

Every subcommand, the core's included, is a :class:`vlsdk.plugins.commands.Command` registered
through the ``vlsdk_register_commands`` hook, so plugins add commands the same way the core does.
"""

from vlsdk.cli.main import build_parser, main

__all__ = ["build_parser", "main"]

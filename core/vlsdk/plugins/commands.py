"""``vlsdk`` subcommands as registry entries, so plugins and the core add commands the same way."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlsdk.plugins.registry import Registrar, RegistryEntry

__all__ = ["Command", "CommandRegistrar"]

#: ``configure(parser)`` adds a command's arguments to its subparser.
Configure = Callable[[argparse.ArgumentParser], None]
#: ``run(args) -> exit status`` executes it (``None`` means 0).
Run = Callable[[argparse.Namespace], "int | None"]


@dataclass(frozen=True)
class Command:
    """A ``vlsdk`` subcommand.

    Attributes:
        name: the subcommand, e.g. ``"plugins"``.
        run: ``run(args: argparse.Namespace) -> int | None``; ``None`` means exit status 0.
        help: one line for ``vlsdk --help``.
        configure: ``configure(parser: argparse.ArgumentParser) -> None`` adds the arguments.
        description: longer text for ``vlsdk NAME --help`` (defaults to ``help``).
    """

    name: str
    run: Run
    help: str = ""
    configure: Configure | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.run):
            raise TypeError(f"command {self.name!r}: run must be callable, got {self.run!r}")
        if self.configure is not None and not callable(self.configure):
            raise TypeError(
                f"command {self.name!r}: configure must be callable or None, got {self.configure!r}"
            )


class CommandRegistrar(Registrar):
    """``register(name, run, *, help, configure=None, description=None, replace=False, **meta)``.

    What a ``vlsdk_register_commands`` hook receives. ``run`` may also be a ready
    :class:`Command` (then the keyword fields must be left out).
    """

    def __call__(  # type: ignore[override]
        self,
        name: str,
        run: Run | Command | None = None,
        *,
        help: str = "",
        configure: Configure | None = None,
        description: str | None = None,
        replace: bool = False,
        **metadata: Any,
    ) -> RegistryEntry:
        """Register the subcommand ``name``; see :class:`Command` for the fields."""
        if isinstance(run, Command):
            command = run
            if command.name != name:
                raise ValueError(
                    f"commands: registered as {name!r} but the Command is named {command.name!r}"
                )
        elif run is None:
            raise TypeError(f"commands: {name!r} needs run=callable(args) -> int | None")
        else:
            try:
                command = Command(name, run, help, configure, description)
            except TypeError as exc:
                origin = RegistryEntry(
                    name, None, self.plugin, self.distribution, self.version
                ).origin
                raise TypeError(f"commands: {name!r} from {origin}: {exc}") from None
        existing = self.registry._entries.get(name) if isinstance(name, str) else None
        if existing is not None and existing.obj == command:
            command = existing.obj  # the same command again: a no-op, as for other registries
        return super().__call__(name, command, replace=replace, **metadata)

"""``main()``: load the plugins, build the parser from the commands registry, run one command.

``vlsdk``, ``vlsdk --help`` and ``vlsdk --version`` (no command named) load no plugin: their parser
holds the core commands only. A command loads every plugin first.

A broken plugin never breaks the command line: its load error is printed as a warning and its
commands are left out; a command of a built-in plugin that is not loaded (``vlsdk pcb`` without
the ``industrial`` extra) says which extra to install; a plugin command whose ``configure`` raises
is reported when invoked; a command that raises prints a one-line error (``--traceback`` for the
rest) and exits with 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from vlsdk.plugins import _env
from vlsdk.plugins.errors import UnknownNameError, VlsdkPluginWarning
from vlsdk.plugins.manager import PluginHost, get_host
from vlsdk.plugins.registry import RegistryEntry
from vlsdk.version import __version__

__all__ = ["PLUGIN_COMMANDS", "build_parser", "main"]

_CORE = "vlsdk"

#: command -> the built-in plugin that registers it; explains a command whose plugin is not loaded.
PLUGIN_COMMANDS: dict[str, str] = {
    "pcb": "industrial",
    "medical-lesion": "medical",
    "dicom-info": "medical",
    "driving-detect": "driving",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vlsdk`` command line and return its exit status.

    Args:
        argv: the arguments without the program name (default: ``sys.argv[1:]``).

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        vlsdk 0.1.0
        0
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    host = get_host()
    words = [arg for arg in args_list if not arg.startswith("-")]
    if not words:  # --help, --version or nothing: the core is enough
        return _top_level(host, args_list)
    failed = _load_plugins(host)
    if failed is not None:
        return failed
    unavailable = _unavailable_command(host, words[0])
    if unavailable is not None:
        print(unavailable, file=sys.stderr)
        return 1
    parser, broken = build_parser(host)
    try:
        args, extras = parser.parse_known_args(args_list)
    except SystemExit as exc:  # --help, --version, usage errors
        return _exit_status(exc)
    entry: RegistryEntry | None = getattr(args, "_vlsdk_entry", None)
    if entry is None:
        parser.print_help()
        return 0
    if entry.name in broken:
        print(f"vlsdk {entry.name}: error: {broken[entry.name]}", file=sys.stderr)
        return 1
    if extras:
        try:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        except SystemExit as exc:
            return _exit_status(exc)
    return _run(entry, args)


def _top_level(host: PluginHost, args_list: list[str]) -> int:
    """``vlsdk [--help | --version]``: parse with the commands known so far, loading no plugin.

    Before plugins are loaded these are :data:`vlsdk.cli.commands.CORE_COMMANDS`, read without
    the plugin host (whose core plugin imports torch for its heads).
    """
    if host.loaded:
        entries = host.registry("commands").entries()
    else:
        from vlsdk.cli.commands import CORE_COMMANDS

        entries = [RegistryEntry(c.name, c, _CORE, "vlsdk", __version__) for c in CORE_COMMANDS]
    parser, _ = _parser(entries, plugins_loaded=host.loaded, configure=False)
    try:
        parser.parse_args(args_list)
    except SystemExit as exc:  # --help, --version, usage errors
        return _exit_status(exc)
    parser.print_help()
    return 0


def _unavailable_command(host: PluginHost, word: str) -> str | None:
    """Why ``word`` is no command: its plugin (or a plugin of that name) is not loaded."""
    if word in host.registry("commands"):
        return None
    plugin = PLUGIN_COMMANDS.get(word, word)
    try:
        info = host.plugin_info(plugin)
    except UnknownNameError:
        return None
    if info.status == "loaded":
        return None
    what = (
        f"the command {word!r} comes from {info.origin}"
        if word in PLUGIN_COMMANDS
        else f"{word!r} is {info.origin}"
    )
    lines = [f"vlsdk {word}: error: {what}, which is not loaded ({info.status}): {info.error}"]
    if info.extra:
        lines.append(f"To fix it, install the {info.extra!r} extra: {info.hint}")
    elif info.status == "error":
        lines.append("Run `vlsdk plugins --verbose` for the traceback.")
    return "\n".join(lines)


def _load_plugins(host: PluginHost) -> int | None:
    """Load plugins, printing their warnings briefly; an exit status if strict loading failed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VlsdkPluginWarning)
        try:
            host.load()
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - strict mode re-raised a plugin's error
            print(
                f"vlsdk: error: a plugin failed to load and {_env.STRICT} is set:",
                file=sys.stderr,
            )
            traceback.print_exc()
            return 1
    for warning in caught:
        if issubclass(warning.category, VlsdkPluginWarning):
            print(f"vlsdk: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return None


def build_parser(host: PluginHost) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The argument parser with one subcommand per registered command (loads the plugins).

    Returns:
        ``(parser, broken)`` where ``broken`` maps the commands whose ``configure`` raised to
        the error to report when they are invoked.
    """
    return _parser(host.registry("commands").entries(), plugins_loaded=True, configure=True)


def _parser(
    entries: Sequence[RegistryEntry], *, plugins_loaded: bool, configure: bool
) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser of ``entries``; ``configure=False`` adds names and help only (top level)."""
    epilog = (
        "Run `vlsdk COMMAND --help` for a command's options. Plugins add commands "
        "through the vlsdk_register_commands hook; `vlsdk plugins` lists them."
    )
    if not plugins_loaded:
        by_plugin: dict[str, list[str]] = {}
        for command, plugin in PLUGIN_COMMANDS.items():
            by_plugin.setdefault(plugin, []).append(command)
        listed = "; ".join(f"{', '.join(names)} ({plugin})" for plugin, names in by_plugin.items())
        epilog += f" Plugins are loaded when a command runs; the built-in ones add: {listed}."
    parser = argparse.ArgumentParser(
        prog="vlsdk",
        description="vlsdk: vertical-domain computer vision. Core and plugin commands.",
        epilog=epilog,
    )
    parser.add_argument("--version", action="version", version=f"vlsdk {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="print the full traceback when a command fails"
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    broken: dict[str, str] = {}
    for entry in entries:
        command = entry.obj
        help_ = command.help if entry.plugin == _CORE else f"{command.help} [{entry.origin}]"
        sub = subparsers.add_parser(
            command.name, help=help_, description=command.description or command.help
        )
        sub.set_defaults(_vlsdk_entry=entry)
        if command.configure is None or not configure:
            continue
        try:
            command.configure(sub)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a plugin's configure() must not break the CLI
            broken[command.name] = (
                f"command unavailable: its configure() from {entry.origin} raised "
                f"{type(exc).__name__}: {exc}"
            )
            print(f"vlsdk: warning: {command.name}: {broken[command.name]}", file=sys.stderr)
    return parser, broken


def _run(entry: RegistryEntry, args: argparse.Namespace) -> int:
    try:
        status = entry.obj.run(args)
    except SystemExit as exc:
        return _exit_status(exc)
    except KeyboardInterrupt:
        print("vlsdk: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vlsdk experts | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - report any command failure as exit status 1
        if args.traceback:
            traceback.print_exc()
        where = "" if entry.plugin == _CORE else f" (command from {entry.origin})"
        print(f"vlsdk {entry.name}: error: {type(exc).__name__}: {exc}{where}", file=sys.stderr)
        if not args.traceback:
            print(f"(run `vlsdk --traceback {entry.name} ...` for details)", file=sys.stderr)
        return 1
    return 0 if status is None else int(status)


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1

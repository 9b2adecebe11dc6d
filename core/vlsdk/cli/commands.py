"""The core commands: ``plugins``, ``experts``, ``heads``, ``datasets`` and ``info``.

They are registered by the core plugin ``vlsdk`` (its module :mod:`vlsdk.cli.builtin`) through
the same ``vlsdk_register_commands`` hook as plugin commands. Add a core command by appending a
:class:`~vlsdk.plugins.commands.Command` to :data:`CORE_COMMANDS` (or a module of its own
listed in :data:`vlsdk.plugins.manager.CORE_PLUGIN_MODULES`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import sys
from collections import Counter
from typing import Any

from vlsdk.cli.output import format_count, format_table, qualified_name
from vlsdk.cli.train import EVAL_COMMAND, TRAIN_COMMAND
from vlsdk.demo import DEMO_COMMAND
from vlsdk.export.cli import EXPORT_COMMAND
from vlsdk.inspect.cli import ROUTING_COMMAND
from vlsdk.plugins import _env
from vlsdk.plugins.commands import Command
from vlsdk.plugins.manager import PluginInfo, get_host
from vlsdk.plugins.registry import RegistryEntry
from vlsdk.predict import PREDICT_COMMAND

__all__ = ["CORE_COMMANDS", "collect_info", "listing_command"]


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# -- vlsdk plugins -----------------------------------------------------------------------------


def _configure_plugins(parser: argparse.ArgumentParser) -> None:
    _add_json(parser)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="include the traceback of each load error"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with 1 if a plugin failed with an error"
    )


def _run_plugins(args: argparse.Namespace) -> int:
    infos = get_host().plugin_infos()
    failed = any(info.status == "error" for info in infos)
    status = 1 if args.check and failed else 0
    if args.json:
        _print_json([info.to_dict(with_traceback=args.verbose) for info in infos])
        return status
    for info in infos:
        dist = " ".join(part for part in (info.distribution, info.version) if part) or "-"
        print(f"{info.name}  {dist}  {info.status}")
        if info.entry_point:
            print(f"    entry point: {info.entry_point}")
        if info.hooks:
            print(f"    hooks: {', '.join(info.hooks)}")
        for kind, names in info.registered.items():
            print(f"    {kind}: {', '.join(names)}")
        for replaced in info.replaced:
            print(f"    replaced: {replaced.kind} {replaced.name!r} of {replaced.previous}")
        if info.load_ms is not None:
            print(f"    load time: {_load_time(info)}")
        if info.error:
            label = "reason" if info.status == "disabled" else "error"
            print(f"    {label}: {_indent(info.error)}")
        if info.hint and info.hint not in (info.error or ""):
            print(f"    fix: {info.hint}")
        if args.verbose and info.traceback:
            print("    " + _indent(info.traceback.rstrip()))
    counts = Counter(info.status for info in infos)
    summary = ", ".join(f"{n} {status_}" for status_, n in counts.items())
    print(f"{len(infos)} plugins: {summary}")
    return status


def _load_time(info: PluginInfo) -> str:
    """``"12.3 ms"``, flagged when over ``VLSDK_SLOW_PLUGIN_SECONDS``."""
    text = f"{info.load_ms:.1f} ms"
    try:
        limit = _env.slow_seconds()
    except ValueError:
        return text
    if info.load_ms is not None and info.load_ms > 1000 * limit:
        text += f" (slow: over {limit:g} s, {_env.SLOW})"
    return text


def _indent(text: str) -> str:
    return text.replace("\n", "\n    ")


# -- vlsdk experts / heads / datasets ---------------------------------------------------------


def _entry_row(entry: RegistryEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "plugin": entry.plugin,
        "distribution": entry.distribution,
        "version": entry.version,
        "object": qualified_name(entry.obj),
        "metadata": dict(entry.metadata),
    }


def listing_command(kind: str, help: str) -> Command:
    """A ``vlsdk <kind>`` command that tables one registry (name, plugin, distribution)."""

    def run(args: argparse.Namespace) -> int:
        host = get_host()
        registry = host.registry(kind)
        entries = registry.entries()
        if args.json:
            _print_json([_entry_row(entry) for entry in entries])
            return 0
        if entries:
            rows = [
                (
                    entry.name,
                    entry.plugin or "-",
                    " ".join(p for p in (entry.distribution, entry.version) if p) or "-",
                    qualified_name(entry.obj),
                )
                for entry in entries
            ]
            print(format_table(("NAME", "PLUGIN", "DISTRIBUTION", "OBJECT"), rows))
        else:
            print(f"No {kind} registered.")
        failed = [i.name for i in host.plugin_infos() if i.status in ("error", "missing-extra")]
        if failed:
            print(f"({len(failed)} plugin(s) not loaded: {', '.join(failed)}; see `vlsdk plugins`)")
        print(f"contract: {registry.contract}")
        return 0

    return Command(kind, run, help=help, configure=_add_json)


# -- vlsdk info --------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _extras() -> dict[str, dict[str, str | None]]:
    """extra -> {package: installed version or None}, from vlsdk's own metadata."""
    try:
        requires = importlib.metadata.distribution("vlsdk").requires or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    extras: dict[str, dict[str, str | None]] = {}
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", marker)
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if extra is None or name is None or name.group(1).lower() == "vlsdk":
            continue
        extras.setdefault(extra.group(1), {})[name.group(1)] = _version(name.group(1))
    return extras


def _device() -> dict[str, Any]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        return {"device": "unknown", "error": f"{type(exc).__name__}: {exc}"}
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return {"device": "cuda", "cuda": names, "threads": torch.get_num_threads()}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return {"device": "mps", "threads": torch.get_num_threads()}
    return {"device": "cpu", "threads": torch.get_num_threads()}


def _configs() -> dict[str, Any]:
    try:
        from vlsdk.models.config import CONFIGS
        from vlsdk.models.model import count_parameters
    except Exception as exc:  # noqa: BLE001 - the model code may be absent or broken
        return {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    rows: dict[str, Any] = {}
    for name, config in CONFIGS.items():
        for label, stem in ((name, "cnn"), (f"{name}-patch", "patch")):  # NAME-patch: the plain-ViT stem
            try:
                counts = count_parameters(config.replace(stem=stem))
                rows[label] = {"total": int(counts.total), "active": int(counts.active)}
            except Exception as exc:  # noqa: BLE001
                rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"available": True, "configs": rows}


def collect_info() -> dict[str, Any]:
    """Versions, device, optional packages per extra, plugins and model configs, as a dict."""
    from vlsdk.version import __version__

    try:
        import numpy

        numpy_version: str | None = numpy.__version__
    except Exception:  # noqa: BLE001
        numpy_version = None
    try:
        import torch

        torch_version: str | None = torch.__version__
    except Exception:  # noqa: BLE001
        torch_version = None
    infos = get_host().plugin_infos()
    return {
        "vlsdk": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "executable": sys.executable,
        "torch": torch_version,
        "numpy": numpy_version,
        "pluggy": _version("pluggy"),
        "device": _device(),
        "extras": _extras(),
        "plugins": {info.name: info.status for info in infos},
        "models": _configs(),
    }


def _run_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        _print_json(info)
        return 0
    print(f"vlsdk {info['vlsdk']}")
    print(f"python {info['python']} on {info['platform']}")
    for package in ("torch", "numpy", "pluggy"):
        print(f"{package} {info[package] or 'not installed'}")
    device = info["device"]
    if device["device"] == "cuda":
        print(f"device: cuda ({', '.join(device['cuda'])}), {device['threads']} CPU threads")
    elif "threads" in device:
        print(f"device: {device['device']} ({device['threads']} threads)")
    else:
        print(f"device: unknown ({device.get('error')})")
    print("extras:")
    if not info["extras"]:
        print("  unknown (vlsdk's distribution metadata is not installed)")
    for extra, packages in info["extras"].items():
        listed = ", ".join(f"{name} {version or 'missing'}" for name, version in packages.items())
        print(f"  {extra}: {listed}")
    statuses = Counter(info["plugins"].values())
    print(
        f"plugins: {len(info['plugins'])} ("
        + ", ".join(f"{n} {status}" for status, n in statuses.items())
        + ")"
    )
    models = info["models"]
    if not models["available"]:
        print(f"model configs: unavailable ({models['error']})")
        return 0
    print("model configs:")
    rows = []
    for name, counts in models["configs"].items():
        if "error" in counts:
            rows.append((name, "?", "?", counts["error"]))
        else:
            rows.append((name, format_count(counts["total"]), format_count(counts["active"]), ""))
    print(_indent_block(format_table(("NAME", "TOTAL", "ACTIVE", ""), rows)))
    return 0


def _indent_block(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _configure_info(parser: argparse.ArgumentParser) -> None:
    _add_json(parser)


#: The core commands, registered by the core plugin ``vlsdk``.
CORE_COMMANDS: tuple[Command, ...] = (
    Command(
        "plugins",
        _run_plugins,
        help="list plugins: status, hooks, what each registered, load errors",
        configure=_configure_plugins,
    ),
    listing_command("experts", "list the registered MoE experts"),
    listing_command("heads", "list the registered task heads"),
    listing_command("datasets", "list the registered datasets"),
    Command(
        "info",
        _run_info,
        help="versions, device, optional packages per extra, model configs",
        configure=_configure_info,
    ),
    ROUTING_COMMAND,
    EXPORT_COMMAND,
    DEMO_COMMAND,
    PREDICT_COMMAND,
    TRAIN_COMMAND,
    EVAL_COMMAND,
)

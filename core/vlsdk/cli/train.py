"""``vlsdk train``: run a registered training recipe from a YAML/JSON task config.

::

    vlsdk train --list
    vlsdk train --config examples/configs/medical_lesion.yaml --quick out=runs/try epochs=2
    torchrun --nproc_per_node 2 -m vlsdk train --config examples/configs/industrial_pcb.yaml

Recipes come from plugins (hook ``vlsdk_register_tasks``); see :mod:`vlsdk.train.task_config` for
the file format. Under ``torchrun`` a recipe that trains with the core Trainer runs data-parallel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vlsdk.plugins.commands import Command

__all__ = ["TRAIN_COMMAND"]

_EXAMPLES = """examples:
  vlsdk train --list
  vlsdk train --config examples/configs/medical_lesion.yaml --quick out=runs/try
  torchrun --nproc_per_node 2 -m vlsdk train --config examples/configs/industrial_pcb.yaml
"""


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EXAMPLES
    parser.add_argument("--config", metavar="FILE", help="task config (.yaml/.yml/.json) with 'task:' and options")
    parser.add_argument("--list", action="store_true", help="list the training recipes and exit")
    parser.add_argument("--quick", action="store_true", help="the recipe's CI-sized setting (tiny model, few steps)")
    parser.add_argument("--json", action="store_true", help="with --list: machine-readable JSON")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config options (JSON values)")


def _list(as_json: bool) -> int:
    from vlsdk.plugins.manager import get_host
    from vlsdk.train.tasks import task_registry

    host = get_host()
    entries = task_registry(host).entries()
    missing = [i for i in host.plugin_infos() if i.status in ("missing-extra", "error")]
    if as_json:
        print(json.dumps({"tasks": [{"name": e.name, "plugin": e.plugin, "extra": e.metadata.get("extra"),
                                     "description": e.obj.description, "distributed": e.obj.distributed,
                                     "keys": e.obj.keys()} for e in entries],
                          "unavailable": [{"plugin": i.name, "status": i.status, "hint": i.hint} for i in missing]},
                         indent=2))
        return 0
    from vlsdk.cli.output import format_table

    rows = [(e.name, e.plugin or "-", "yes" if e.obj.distributed else "no", e.obj.description) for e in entries]
    headers = ("TASK", "PLUGIN", "TORCHRUN", "DESCRIPTION")
    print(format_table(headers, rows) if rows else "no training recipes installed")
    for info in missing:
        print(f"plugin {info.name!r} is {info.status}: {info.hint or info.error}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args.json)
    if not args.config:
        print("vlsdk train: error: pass --config FILE (a task config), or --list to see the tasks", file=sys.stderr)
        return 2
    from vlsdk.train.task_config import prepare_task, run_task

    try:
        run = prepare_task(args.config, args.overrides, quick=args.quick)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vlsdk train: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[train] {run.task} ({run.entry.origin}) -> {run.out}", flush=True)
    result = run_task(run)
    if result["metrics"]:
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result["metrics"].items())
        print(f"[train] {run.task} done: {shown}; outputs in {run.out}")
    return 0


#: The ``vlsdk train`` command, registered by the core plugin.
TRAIN_COMMAND = Command(
    "train",
    _run,
    help="train a domain task from a YAML/JSON config (vlsdk train --list shows the tasks)",
    description="Train a registered recipe (medical.lesion, industrial.pcb, driving.bev, ...) from a task "
                "config; key=value arguments override its options.",
    configure=_configure,
)

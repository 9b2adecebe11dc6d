"""``vlsdk train``: run any registered task from a YAML/JSON config, with no Python written.

::

    vlsdk train --list
    vlsdk train examples/configs/coco_detection.yaml data=DIR --quick
    vlsdk train examples/configs/coco_detection.yaml --help          # the task's settings
    vlsdk train --task segmentation data=DIR epochs=5                 # no config file
    torchrun --nproc_per_node 2 -m vlsdk train examples/configs/industrial_pcb.yaml

A task's options (the config keys, ``key=value`` overrides and the ``--flag VALUE`` options shown by
``--help``) all come from its settings dataclass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from vlsdk.plugins.commands import Command

__all__ = ["EVAL_COMMAND", "TRAIN_COMMAND", "settings_parser"]

_EXAMPLES = """examples:
  vlsdk train --list
  vlsdk train examples/configs/coco_detection.yaml data=DIR --quick
  vlsdk train examples/configs/coco_detection.yaml --help     (the task's settings)
  vlsdk train --task segmentation data=DIR epochs=5
  torchrun --nproc_per_node 2 -m vlsdk train examples/configs/industrial_pcb.yaml
"""


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EXAMPLES
    parser.add_argument("--list", action="store_true", help="list the tasks and exit")
    parser.add_argument("--json", action="store_true", help="with --list: machine-readable JSON")
    parser.add_argument("--task", metavar="NAME", help="train this registered task without a config file")
    parser.add_argument("--config", metavar="FILE", help="the task config (or give it as the first argument)")
    parser.add_argument("--quick", action="store_true", help="the task's CI-sized smoke run (not a benchmark)")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="CONFIG [key=value ...] [--SETTING VALUE ...]",
                        help="a task config (.yaml/.yml/.json), then overrides; CONFIG --help lists the settings")


def settings_parser(settings_type: type, prog: str, description: str = "") -> argparse.ArgumentParser:
    """An argument parser whose ``--SETTING VALUE`` options are the fields of ``settings_type``.

    Values stay text here; :func:`vlsdk.settings.settings_from` converts them by the field types.
    Booleans take ``--flag`` / ``--no-flag``.

    Example:
        >>> from vlsdk.tasks.settings import RunSettings
        >>> p = settings_parser(RunSettings, "vlsdk train")
        >>> vars(p.parse_args(["--epochs", "3", "--no-progress"]))["epochs"]
        '3'
    """
    import dataclasses
    import typing

    from vlsdk.settings import field_help

    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = field_help(settings_type)
    hints = typing.get_type_hints(settings_type)
    group = parser.add_argument_group("settings (also as key=value, or in the config file)")
    for f in dataclasses.fields(settings_type):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = f"{helps.get(f.name, '')} [default: {json.dumps(default, default=str)}]".replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        names = [flag] if flag == f"--{f.name}" else [flag, f"--{f.name}"]
        if hints.get(f.name) is bool:
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(*names, dest=f.name, metavar=_metavar(hints.get(f.name)), help=text)
    parser.add_argument("--quick", action="store_true", default=False, help="the task's CI-sized smoke run")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="settings as key=value")
    return parser


def _metavar(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    return name.upper() if name in ("int", "float", "str") else "VALUE"


def _list(as_json: bool) -> int:
    from vlsdk.plugins.manager import get_host
    from vlsdk.tasks.registry import task_registry

    host = get_host()
    entries = task_registry(host).entries()
    missing = [i for i in host.plugin_infos() if i.status in ("missing-extra", "error")]

    def described(e: Any) -> str:
        return e.obj.description or e.metadata.get("description", "")

    if as_json:
        print(json.dumps({"tasks": [{"name": e.name, "plugin": e.plugin, "extra": e.metadata.get("extra"),
                                     "kind": "task",
                                     "description": described(e)} for e in entries],
                          "unavailable": [{"plugin": i.name, "status": i.status, "hint": i.hint} for i in missing]},
                         indent=2))
        return 0
    from vlsdk.cli.output import format_table

    rows = [(e.name, e.plugin or "-", "task", described(e)) for e in entries]
    print(format_table(("TASK", "PLUGIN", "KIND", "DESCRIPTION"), rows) if rows else "no tasks installed")
    for info in missing:
        print(f"plugin {info.name!r} is {info.status}: {info.hint or info.error}")
    return 0


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    """``(config file, the rest)``: the first argument is the config unless it is a key=value or an option."""
    if args and not args[0].startswith("-") and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _run(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args.json)
    config_path, rest = (args.config, list(args.args)) if args.config else _split(list(args.args))
    if config_path is None and args.task is None:
        print("vlsdk train: error: pass a task config (vlsdk train CONFIG), --task NAME, or --list", file=sys.stderr)
        return 2
    from vlsdk.tasks.config import parse_overrides, read_config_file
    from vlsdk.tasks.registry import get_entry

    try:
        config = read_config_file(config_path) if config_path else {}
        source = config_path or "command line"
        name = args.task or config.get("task")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: needs a 'task' key naming a registered task (vlsdk train --list)")
        entry = get_entry(name)
        task = entry.obj()
        parser = settings_parser(task.settings_type, f"vlsdk train {config_path or '--task ' + name}",
                                 f"{task.name}: {task.description}")
        assignments = [a for a in rest if "=" in a and not a.startswith("-")]
        parsed = vars(parser.parse_args([a for a in rest if a not in assignments]))
        quick = parsed.pop("quick") or args.quick
        assignments += parsed.pop("overrides")
        overrides = {**parse_overrides([f"{k}={v}" for k, v in parsed.items() if isinstance(v, str)]),
                     **{k: v for k, v in parsed.items() if not isinstance(v, str)}, **parse_overrides(assignments)}
        from vlsdk.tasks.config import resolve_settings

        settings = resolve_settings(task, config, source, overrides, quick=quick)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vlsdk train: error: {exc}", file=sys.stderr)
        return 2
    from vlsdk.tasks.runner import train

    lead = int(os.environ.get("RANK", "0")) == 0
    if lead:
        smoke = " (quick: a smoke run, not a benchmark)" if quick else ""
        print(f"[train] {task.name} ({entry.origin}) -> {settings.out}{smoke}", flush=True)
    try:
        result = train(task, settings)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vlsdk train: error: {exc}", file=sys.stderr)
        return 2
    if lead and result.primary is not None:
        name, value = result.primary
        print(f"[train] {task.name} done in {result.seconds:.1f} s: {name} {value:.4f}; "
              f"model {result.model_dir}, metrics {settings.out / 'metrics.json'}")
    return 0


#: The ``vlsdk train`` command.
TRAIN_COMMAND = Command(
    "train",
    _run,
    help="train any task from a YAML/JSON config (vlsdk train --list shows the tasks)",
    description="Train a registered task (detection, segmentation, industrial.pcb, ...) from a config; "
                "key=value arguments and --SETTING VALUE options override its settings.",
    configure=_configure,
)


def _configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="a model saved by vlsdk train (OUT/model)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="settings to change, e.g. data=OTHER_DIR out=runs/eval")
    parser.add_argument("--format", choices=["json", "coco"], default="json",
                        help="coco (detection tasks): also write coco_results.json and coco_ground_truth.json and "
                             "report pycocotools' COCOeval beside the task's own metrics")


def _run_eval(args: argparse.Namespace) -> int:
    from vlsdk.tasks.config import parse_overrides
    from vlsdk.tasks.runner import evaluate

    try:
        overrides = parse_overrides(args.overrides)
        if args.format == "coco":
            from vlsdk.tasks.runner import load_record

            if "coco_json" not in load_record(args.model)["settings"]:
                raise ValueError(f"{args.model}: --format coco is for detection tasks (their boxes have a COCO form)")
            overrides["coco_json"] = True
        summary = evaluate(args.model, overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vlsdk eval: error: {exc}", file=sys.stderr)
        return 2
    from vlsdk.tasks.runner import jsonable

    shown = {k: v for k, v in jsonable(summary["metrics"]).items() if not isinstance(v, (dict, list))}
    print(json.dumps(shown, indent=2))
    print(f"[eval] {summary['task']}: {summary['primary_metric']} {summary['primary']:.4f}")
    return 0


#: The ``vlsdk eval`` command.
EVAL_COMMAND = Command(
    "eval",
    _run_eval,
    help="evaluate a model saved by vlsdk train on its validation split (or data=OTHER_DIR)",
    description="Evaluate a task model saved by vlsdk train; writes metrics.json under its out folder.",
    configure=_configure_eval,
)

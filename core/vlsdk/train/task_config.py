"""Task configs: a YAML/JSON file naming a registered recipe and its options, run end to end.

A task config is a mapping with ``task`` (a registered recipe, e.g. ``medical.lesion``) and any
of that recipe's options or common keys (:data:`vlsdk.train.recipes.COMMON_KEYS`)::

    task: medical.lesion
    data: ../shared/data/brats_lesion_mri
    out: runs/medical_lesion
    model: small
    epochs: 80
    batch_size: 16

``key=value`` overrides (values parsed as JSON when they parse, else kept as text, as for
:meth:`vlsdk.train.TrainConfig.override`) and ``quick`` apply on top. Relative paths are relative
to the working directory. Every error names the file (or ``command line``) and the key.

This module imports no torch itself (the ``vlsdk.train`` package does).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsdk.plugins.errors import UnknownNameError
from vlsdk.plugins.manager import PluginHost
from vlsdk.plugins.registry import RegistryEntry
from vlsdk.train.recipes import TrainRecipe
from vlsdk.train.tasks import get_task, task_registry

__all__ = ["TaskRun", "parse_overrides", "prepare_task", "read_config_file", "run_task"]

TASK_FILE = "task_config.json"
RESULT_FILE = "train_result.json"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a ``.yaml``/``.yml`` or ``.json`` file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it cannot be parsed, or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task config {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise ValueError(f"expected a .yaml, .yml or .json file, got {path.suffix or 'no suffix'!r}")
    except Exception as err:  # yaml.YAMLError, json.JSONDecodeError, the suffix
        raise ValueError(f"task config {path} cannot be read: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"task config {path} must hold a mapping of options (task: ..., epochs: ...), "
                         f"got {type(values).__name__}")
    return values


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["epochs=2", "device=cpu"]`` -> ``{"epochs": 2, "device": "cpu"}`` (JSON values, else text)."""
    values: dict[str, Any] = {}
    for item in assignments:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"command line: override {item!r} must look like key=value")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


@dataclass(frozen=True)
class TaskRun:
    """A resolved task config, ready for :func:`run_task`.

    Attributes:
        task: the task name.
        entry: its registry entry (the :class:`TrainRecipe` and the plugin it came from).
        options: every option of the recipe, resolved.
        out: the output folder.
        source: the config file.
    """

    task: str
    entry: RegistryEntry
    options: dict[str, Any]
    out: Path
    source: str

    @property
    def recipe(self) -> TrainRecipe:
        """The recipe."""
        return self.entry.obj


def prepare_task(path: str | Path, overrides: list[str] | None = None, *, quick: bool = False,
                 host: PluginHost | None = None) -> TaskRun:
    """Read ``path``, look its task up, apply ``quick`` and the overrides, check every key and value.

    Args:
        path: the YAML/JSON task config.
        overrides: ``key=value`` strings (``task=...`` and ``quick=true`` work too).
        quick: use the recipe's CI-sized setting (over the file, under the overrides).
        host: the plugin host (default: the default host).

    Raises:
        FileNotFoundError: the config file or the data folder it names does not exist.
        ValueError: an unknown task (naming the closest, or the extra to install), an unknown key
            (naming the closest), a bad value, no task, or a task that cannot run under ``torchrun``.
    """
    source = str(path)
    config = read_config_file(path)
    extra = parse_overrides(overrides or [])
    task = extra.pop("task", config.pop("task", None))
    config.pop("task", None)
    if not isinstance(task, str) or not task:
        names = ", ".join(task_registry(host).names()) or "none installed"
        raise ValueError(f"{source}: needs a 'task' key naming a recipe (one of: {names}), got {task!r}")
    try:
        entry = get_task(task, host)
    except UnknownNameError as exc:
        raise ValueError(f"{source}: task {task!r} is not installed. {exc}") from exc
    recipe: TrainRecipe = entry.obj
    from_cli = _flag(extra.pop("quick", None), "command line")
    from_file = _flag(config.pop("quick", None), source)
    quick = from_cli if from_cli is not None else quick or bool(from_file)  # quick=false on the command line wins
    options = recipe.resolve(config, source, extra, quick=quick)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not recipe.distributed:
        raise ValueError(f"{source}: task {task!r} ({entry.origin}) trains with its own loop, not the core Trainer, "
                         "so it cannot run under torchrun; run it as a single process")
    data_key = recipe.option_for("data")
    if data_key is not None and options[data_key] is not None and not Path(options[data_key]).exists():
        raise FileNotFoundError(f"{source}: data ({data_key}) {options[data_key]} does not exist "
                                f"(relative paths are relative to {Path.cwd()}); set data=PATH")
    out_key = recipe.option_for("out") or "out"
    return TaskRun(task, entry, options, Path(options[out_key]), source)


def _flag(value: Any, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{where}: quick expects true or false, got {value!r}")
    return value


def run_task(run: TaskRun) -> dict[str, Any]:
    """Run a prepared task; on rank 0 write ``out/task_config.json`` and ``out/train_result.json``.

    Returns:
        ``{"task", "metrics": {headline key: value}, "metrics_file", "out"}`` (``metrics`` is
        empty on other ranks under ``torchrun``).

    Raises:
        RuntimeError: the pipeline returned a non-zero exit status.
        FileNotFoundError: the pipeline did not write its metrics file.
        KeyError: a headline key is missing from it.
    """
    lead = int(os.environ.get("RANK", "0")) == 0
    if lead:
        run.out.mkdir(parents=True, exist_ok=True)
        record = {"task": run.task, "plugin": run.entry.plugin, "config_file": run.source,
                  "options": {k: _jsonable(v) for k, v in run.options.items()}}
        (run.out / TASK_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    status = run.recipe.run(dict(run.options))
    if isinstance(status, int) and not isinstance(status, bool) and status != 0:
        raise RuntimeError(f"task {run.task!r} ({run.entry.origin}) exited with status {status}")
    result: dict[str, Any] = {"task": run.task, "out": str(run.out), "metrics": {},
                              "metrics_file": str(run.out / run.recipe.metrics_file)}
    if not lead:
        return result
    metrics_path = run.out / run.recipe.metrics_file
    if not metrics_path.is_file():
        raise FileNotFoundError(f"task {run.task!r} finished but wrote no {metrics_path}")
    written = json.loads(metrics_path.read_text(encoding="utf-8"))
    result["metrics"] = {key: _lookup(written, key, metrics_path) for key in run.recipe.headline}
    (run.out / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


def _lookup(data: Mapping[str, Any], dotted: str, path: Path) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"{path} has no {dotted!r} (the recipe's headline metric)")
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value

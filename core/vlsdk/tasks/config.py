"""Task config files: ``task:`` plus settings, then ``--quick`` and ``key=value`` on top.

::

    task: detection            # a registered task
    data: null                 # set on the command line: data=DIR
    out: runs/coco_detection
    model: small
    dataset: {name: coco, annotations: annotations.json}
    experts: [industrial.pcb_defect]
    quick: {model: tiny, max_steps: 4}   # optional: what --quick sets, over the task's own quick values

Values are converted to the settings' field types (``lr: 1e-3`` is a float even where YAML 1.1
reads it as text); every error names the file (or ``command line``) and the key. Relative paths
are relative to the working directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlsdk.tasks.protocol import Task
from vlsdk.tasks.settings import RunSettings

__all__ = ["parse_overrides", "read_config_file", "resolve_settings"]


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

            values = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
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


def _yaml_loader() -> type:
    """A ``SafeLoader`` with YAML 1.2's core scalars: only true/false are booleans (``precision: off``
    stays the text ``off``) and ``1e-3`` is a float (YAML 1.1 wants a dot)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["epochs=2", "device=cpu"]`` -> ``{"epochs": 2, "device": "cpu"}`` (JSON values, else text).

    Example:
        >>> parse_overrides(["epochs=2", "data=boards/", "experts=[\\"industrial.pcb_defect\\"]"])
        {'epochs': 2, 'data': 'boards/', 'experts': ['industrial.pcb_defect']}
    """
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


def resolve_settings(task: Task, config: Mapping[str, Any], source: str, overrides: Mapping[str, Any] | None = None,
                     *, quick: bool = False) -> RunSettings:
    """The task's settings: defaults, then ``config`` (without ``task``), then quick values, then overrides.

    Args:
        task: the task.
        config: the config file's values; its ``quick`` key may be a mapping of quick values.
        source: the config file's name, for errors.
        overrides: the command line's values.
        quick: apply the quick values (``task.quick`` updated by the file's ``quick`` mapping).

    Raises:
        ValueError: an unknown key (naming the closest) or a value of the wrong type (naming the key).
    """
    from vlsdk.settings import settings_from

    values = {k: v for k, v in config.items() if k not in ("task", "quick")}
    file_quick = config.get("quick")
    if file_quick is not None and not isinstance(file_quick, (Mapping, bool)):
        raise ValueError(f"{source}: quick expects a mapping of settings or true/false, got {file_quick!r}")
    settings = settings_from(task.settings_type, values, source)
    if quick or file_quick is True:
        quick_values = {**task.quick, **(file_quick if isinstance(file_quick, Mapping) else {})}
        settings = settings_from(task.settings_type, quick_values, f"{source} (quick)", base=settings)
    if overrides:
        settings = settings_from(task.settings_type, dict(overrides), "command line", base=settings)
    return settings

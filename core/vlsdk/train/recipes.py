"""Training recipes: a domain pipeline's settings as named options, for ``vlsdk train``.

A :class:`TrainRecipe` wraps a pipeline function a plugin already has (it never re-implements it):
it lists the options the pipeline takes (from its settings dataclass or from its ``argparse``
configure function), maps the common ``vlsdk train`` vocabulary onto them (``data``, ``out``,
``model``, ``num_workers``... see :data:`COMMON_KEYS`), knows what ``--quick`` sets, and checks
and converts values from a config file before the pipeline runs. Plugins register recipes with
the hook ``vlsdk_register_tasks``.

This module imports no torch itself (the ``vlsdk.train`` package does).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["COMMON_KEYS", "RecipeOption", "TrainRecipe"]

#: The shared vocabulary of task configs (each recipe maps the ones it supports onto its options).
COMMON_KEYS: Mapping[str, str] = MappingProxyType({
    "data": "the dataset folder",
    "out": "the output folder (model, metrics, pictures, the Trainer's checkpoint)",
    "model": "the backbone config name (tiny, edge, small, base)",
    "epochs": "passes over the training set",
    "max_steps": "stop training after this many optimiser steps",
    "batch_size": "samples per step (per rank under torchrun)",
    "lr": "peak learning rate",
    "device": "cpu, cuda, cuda:1, ...",
    "amp": "autocast: off (also none, null), bf16 or fp16 where the pipeline supports it",
    "seed": "seed of everything random",
    "num_workers": "DataLoader worker processes",
    "progress": "show progress bars",
    "quick": "the pipeline's CI-sized setting",
})

_OFF = (None, "off", "none")


@dataclass(frozen=True)
class RecipeOption:
    """One option of a recipe.

    Attributes:
        name: the pipeline's own name for it.
        default: its default value.
        kind: the type a value must have (``int``, ``float``, ``bool``, ``str``, ``Path``,
            ``tuple``); ``None`` accepts any JSON value.
        choices: the allowed values, if restricted.
    """

    name: str
    default: Any
    kind: type | None = None
    choices: tuple[Any, ...] | None = None

    def convert(self, value: Any, where: str) -> Any:
        """``value`` checked against :attr:`kind` and :attr:`choices`.

        Args:
            value: the value from a config file or the command line.
            where: ``"<file>: <key>"``, the start of every error message.
        """
        if self.name == "amp" and (value in _OFF or value is False) and self.default in _OFF:  # YAML reads off as false
            return self.default  # every pipeline's own spelling of "no autocast"
        if value is not None and self.kind is not None:
            value = self._typed(value, where)
        if self.choices is not None and value not in self.choices and value != self.default:
            raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        return value

    def _typed(self, value: Any, where: str) -> Any:
        kind = self.kind
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                    Path: "a path (string)", tuple: "a list"}.get(kind, kind.__name__)  # type: ignore[union-attr]
        ok = {bool: lambda v: isinstance(v, bool),
              int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              str: lambda v: isinstance(v, str),
              Path: lambda v: isinstance(v, (str, Path)),
              tuple: lambda v: isinstance(v, (list, tuple))}.get(kind, lambda v: isinstance(v, kind))  # type: ignore[arg-type]
        if not ok(value):
            raise ValueError(f"{where} expects {expected}, got {value!r} ({type(value).__name__})")
        if kind is float:
            return float(value)
        if kind is Path:
            return Path(value)
        if kind is tuple:
            return tuple(value)
        return value


@dataclass(frozen=True)
class TrainRecipe:
    """A trainable domain task: a plugin's pipeline function and the options it takes.

    Build one with :meth:`from_dataclass` or :meth:`from_argparse`; ``vlsdk train`` resolves a
    config file with :meth:`resolve` and calls :attr:`run`.

    Attributes:
        run: ``run(options) -> object``: runs the pipeline with every option resolved; a non-zero
            ``int`` is taken as a failed exit status.
        options: option name -> :class:`RecipeOption`.
        description: one line for ``vlsdk train --list``.
        aliases: common key (:data:`COMMON_KEYS`) -> option name; a target starting with ``!``
            is a boolean option holding the negation (``{"progress": "!no_progress"}``).
        quick: the option values ``--quick`` (or ``quick: true``) sets, over the config file.
        metrics_file: the JSON file (under the output folder) the pipeline writes its results to.
        headline: dotted keys of :attr:`metrics_file` that ``vlsdk train`` prints and checks.
        distributed: whether the pipeline trains with the core Trainer, so it can run under
            ``torchrun`` (one process per GPU).

    Example:
        >>> @dataclass
        ... class Settings:
        ...     out: str = "runs/x"
        ...     epochs: int = 10
        >>> recipe = TrainRecipe.from_dataclass(Settings, lambda s: s.epochs, quick={"epochs": 1})
        >>> recipe.resolve({"epochs": 3}, "my.yaml", quick=True)
        {'out': 'runs/x', 'epochs': 1}
    """

    run: Callable[[dict[str, Any]], Any]
    options: Mapping[str, RecipeOption]
    description: str = ""
    aliases: Mapping[str, str] = field(default_factory=dict)
    quick: Mapping[str, Any] = field(default_factory=dict)
    metrics_file: str = "metrics.json"
    headline: tuple[str, ...] = ()
    distributed: bool = False

    def __post_init__(self) -> None:
        if not callable(self.run):
            raise TypeError(f"TrainRecipe.run must be callable, got {self.run!r}")
        for common, target in self.aliases.items():
            if common not in COMMON_KEYS:
                raise ValueError(f"TrainRecipe alias {common!r} is not a common key; common keys: {list(COMMON_KEYS)}")
            if target.lstrip("!") not in self.options:
                raise ValueError(f"TrainRecipe alias {common!r} -> {target!r}: no such option")
        if "out" not in self.options and "out" not in self.aliases:
            raise ValueError("TrainRecipe needs an output-folder option 'out' (or an alias 'out' to it)")
        self.native(dict(self.quick), "TrainRecipe.quick")

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_dataclass(cls, config_type: type, run: Callable[[Any], Any], **recipe: Any) -> TrainRecipe:
        """A recipe over a settings dataclass: ``run(config_type(**options))``.

        Args:
            config_type: the pipeline's settings dataclass (every field has a default).
            run: the pipeline function taking an instance.
            **recipe: the other :class:`TrainRecipe` fields.
        """
        if not dataclasses.is_dataclass(config_type):
            raise TypeError(f"from_dataclass needs a dataclass, got {config_type!r}")
        options = {}
        for f in dataclasses.fields(config_type):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                raise ValueError(f"{config_type.__name__}.{f.name} has no default; a recipe needs one for every field")
            options[f.name] = RecipeOption(f.name, default, _kind_of(default))
        return cls(functools.partial(_call_with_instance, config_type, run), options, **recipe)

    @classmethod
    def from_argparse(cls, configure: Callable[[argparse.ArgumentParser], None],
                      run: Callable[[argparse.Namespace], Any], **recipe: Any) -> TrainRecipe:
        """A recipe over a command's ``configure(parser)`` and ``run(args)``: options = the parser's.

        Args:
            configure: adds the command's arguments to a parser.
            run: runs the command with parsed arguments.
            **recipe: the other :class:`TrainRecipe` fields.
        """
        parser = argparse.ArgumentParser(add_help=False)
        configure(parser)
        options = {}
        for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its options
            if action.dest in (argparse.SUPPRESS, "help"):
                continue
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # noqa: SLF001
                kind: type | None = bool
            elif isinstance(action.type, type):
                kind = action.type
            else:
                kind = _kind_of(action.default)
            choices = tuple(action.choices) if action.choices is not None else None
            options[action.dest] = RecipeOption(action.dest, action.default, kind, choices)
        return cls(functools.partial(_call_with_namespace, run), options, **recipe)

    # -- resolving ---------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Every key a task config may use for this recipe: its options and common aliases."""
        return sorted({*self.options, *self.aliases})

    def native(self, values: Mapping[str, Any], source: str) -> dict[str, Any]:
        """``values`` with common keys turned into this recipe's option names, converted and checked.

        Args:
            values: keys as written in a config file or on the command line.
            source: where they come from (a file name, ``"command line"``), for errors.

        Raises:
            ValueError: an unknown key (naming the closest valid one), a key given twice (under
                its common and its own name), or a value of the wrong type.
        """
        out: dict[str, Any] = {}
        given: dict[str, str] = {}
        for key, value in values.items():
            if key not in self.options and key not in self.aliases:
                close = difflib.get_close_matches(key, self.keys(), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{source}: unknown option {key!r}{hint} Valid keys: {', '.join(self.keys())}")
            target = self.aliases.get(key, key) if key not in self.options else key
            name = target.lstrip("!")
            if name in given:
                raise ValueError(f"{source}: {key!r} and {given[name]!r} both set {name!r}; keep one")
            given[name] = key
            if target.startswith("!"):
                if not isinstance(value, bool):
                    raise ValueError(f"{source}: {key} expects true or false, got {value!r} ({type(value).__name__})")
                value = not value
            out[name] = self.options[name].convert(value, f"{source}: {key}")
        return out

    def resolve(self, config: Mapping[str, Any], source: str, overrides: Mapping[str, Any] | None = None, *,
                quick: bool = False) -> dict[str, Any]:
        """Every option's value: the defaults, then ``config``, then :attr:`quick` (when asked),
        then the command line's ``overrides``.

        Args:
            config: the config file's values (without ``task``).
            source: the config file's name, for errors.
            overrides: the command line's ``key=value`` values.
            quick: apply :attr:`quick` over the config file.
        """
        resolved = {name: option.default for name, option in self.options.items()}
        resolved.update(self.native(config, source))
        if quick:
            resolved.update(self.native(dict(self.quick), "quick"))
        resolved.update(self.native(overrides or {}, "command line"))
        return resolved

    def option_for(self, common: str) -> str | None:
        """The option a common key maps to (``None`` if the recipe does not take it)."""
        if common in self.options:
            return common
        target = self.aliases.get(common)
        return None if target is None or target.startswith("!") else target


def _kind_of(default: Any) -> type | None:
    if default is None:
        return None
    if isinstance(default, Path):
        return Path
    if isinstance(default, (list, tuple)):
        return tuple
    return type(default) if isinstance(default, (bool, int, float, str)) else None


def _call_with_instance(config_type: type, run: Callable[[Any], Any], options: dict[str, Any]) -> Any:
    return run(config_type(**options))


def _call_with_namespace(run: Callable[[argparse.Namespace], Any], options: dict[str, Any]) -> Any:
    return run(argparse.Namespace(**options))

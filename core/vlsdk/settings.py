"""Typed settings: values from YAML, JSON or the command line checked against a dataclass's annotations.

One converter for every settings dataclass (training options, each task's settings):
``convert`` turns a raw value into what an annotation asks for or raises a ``ValueError`` that
names where the value came from; ``settings_from`` builds a dataclass from a mapping of such
values; ``field_help`` gives each field's help text. No torch import.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opt:
    ...     '''Args:
    ...         lr: learning rate.
    ...         size: input size, pixels.
    ...     '''
    ...     lr: float = 3e-4
    ...     size: tuple[int, ...] = (64, 64)
    >>> settings_from(Opt, {"lr": "1e-3", "size": "32,48"}, "config.yaml")
    Opt(lr=0.001, size=(32, 48))
    >>> field_help(Opt)["size"]
    'input size, pixels.'
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

__all__ = ["convert", "settings_from", "field_help"]

_NONE = ("none", "null")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def convert(value: Any, annotation: Any, where: str) -> Any:
    """Convert a value read from YAML, JSON or the command line to the type ``annotation`` names.

    Accepted: ``int`` (an integer, or a string of one; never a bool or a float such as 2.5 or
    3.0), ``float`` (a finite number, or a string such as ``"1e-3"``, which YAML 1.1 reads as a
    string), ``bool`` (``true``/``false``, 0/1, and the strings ``"true"``, ``"false"``, ``"1"``,
    ``"0"``, ``"yes"``, ``"no"``, ``"on"``, ``"off"``), ``str``, ``pathlib.Path`` (from a string),
    ``Literal[...]`` (one of its values), ``X | None`` (also ``"none"``/``"null"``),
    ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]`` (from a list or a comma-separated string),
    ``dict`` / ``dict[K, V]`` (from a mapping or a JSON string), a nested dataclass (from a
    mapping) and ``Any``.

    Args:
        value: the raw value.
        annotation: a resolved type annotation (not a string).
        where: where the value came from, for errors, e.g. ``"config.yaml: batch_size"``.

    Returns:
        The converted value.

    Raises:
        ValueError: ``"<where>: expected <what>, got <value!r> (<type>)"``.

    Example:
        >>> convert("1e-3", float, "x")
        0.001
        >>> convert("3", int, "config.yaml: steps")
        3
        >>> convert(2.5, int, "config.yaml: batch_size")
        Traceback (most recent call last):
        ...
        ValueError: config.yaml: batch_size: expected an integer, got 2.5 (float)
        >>> convert("none", float | None, "x")
    """
    if annotation is Any or annotation is object:
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return _union(value, args, where)
    if origin is Literal:
        return _literal(value, args, where)
    if annotation is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        raise _error(where, "None", value)
    if annotation is bool:
        return _bool(value, where)
    if annotation is int:
        return _int(value, where)
    if annotation is float:
        return _float(value, where)
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _error(where, "a string", value)
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        if isinstance(value, (str, os.PathLike)) and str(value):
            return Path(value)
        raise _error(where, "a path", value)
    if annotation in (tuple, list) or origin in (tuple, list):
        return _sequence(value, origin or annotation, args, where)
    if annotation is dict or origin in (dict, Mapping):
        return _mapping(value, args, where)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if isinstance(value, Mapping):
            return settings_from(annotation, value, where)
        raise _error(where, f"a mapping of {annotation.__name__} options", value)
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise _error(where, annotation.__name__, value)
    raise TypeError(f"{where}: cannot convert to the annotation {annotation!r}")


def settings_from(cls: type, values: Mapping[str, Any], where: str, *, base: Any = None) -> Any:
    """Build a dataclass instance from ``base`` (or the defaults) updated with converted ``values``.

    Each value is converted by :func:`convert` against the field's resolved annotation
    (``typing.get_type_hints``, so classes written with ``from __future__ import annotations``
    work), with ``where`` = ``"<where>: <field>"``.

    Args:
        cls: a dataclass.
        values: field name -> raw value.
        where: where the values came from (a file name, ``"command line"``), for errors.
        base: an instance of ``cls`` whose values are kept where ``values`` has none.

    Returns:
        A new instance of ``cls``.

    Raises:
        ValueError: an unknown key (naming the closest valid one and listing all of them), a
            value that does not convert, a required field without a value.
        TypeError: ``cls`` is not a dataclass.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Opt:
        ...     steps: int = 10
        >>> settings_from(Opt, {"step": 3}, "run.yaml")
        Traceback (most recent call last):
        ...
        ValueError: run.yaml: unknown option 'step'; did you mean 'steps'? valid options: steps
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"settings_from needs a dataclass, got {cls!r}")
    if not isinstance(values, Mapping):
        raise _error(where, f"a mapping of {cls.__name__} options", values)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ";"
            raise ValueError(f"{where}: unknown option {key!r}{hint} valid options: {', '.join(names)}")
    converted = {key: convert(value, hints[key], f"{where}: {key}") for key, value in values.items()}
    if base is not None:
        if not isinstance(base, cls):
            raise TypeError(f"settings_from: base must be a {cls.__name__}, got {type(base).__name__}")
        return dataclasses.replace(base, **converted)
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in converted
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: missing required option(s) {', '.join(missing)}")
    return cls(**converted)


def field_help(cls: type) -> dict[str, str]:
    """Each field's help text: ``field(metadata={"help": ...})``, else the docstring's ``Args:``/``Attributes:``.

    Google-style entries (``name: text`` or ``name (type): text``), continuation lines joined
    with single spaces. A field documented nowhere gets ``""``.

    Args:
        cls: a dataclass.

    Returns:
        Field name -> help text, in field order.

    Raises:
        TypeError: ``cls`` is not a dataclass.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"field_help needs a dataclass, got {cls!r}")
    documented = _docstring_args(inspect.getdoc(cls) or "")
    return {f.name: str(f.metadata.get("help", documented.get(f.name, ""))) for f in dataclasses.fields(cls)}


# -- helpers -------------------------------------------------------------------------------------

def _error(where: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{where}: expected {what}, got {value!r} ({type(value).__name__})")


@functools.lru_cache(maxsize=256)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _int(value: Any, where: str) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d[\d_]*\s*", value):
        return int(value)
    raise _error(where, "an integer", value)


def _float(value: Any, where: str) -> float:
    number: float | None = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise _error(where, "a finite number", value)
    return number


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise _error(where, "true or false", value)


def _union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    optional = type(None) in args
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return convert(value, arg, where)
        except ValueError as err:
            errors.append(err)
    if len(errors) == 1 and not optional:
        raise errors[0]
    whats = [str(e).split(": expected ", 1)[-1].rsplit(", got ", 1)[0] for e in errors]
    raise _error(where, " or ".join(whats + (["None"] if optional else [])), value)


def _literal(value: Any, choices: tuple[Any, ...], where: str) -> Any:
    for choice in choices:
        if value == choice and type(value) is type(choice):
            return choice
        if isinstance(value, str) and not isinstance(choice, str) and value.strip() == str(choice).lower():
            return choice  # "1" from the command line for Literal[1, 2], "true" for Literal[True]
        if isinstance(value, str) and not isinstance(choice, str) and value.strip() == str(choice):
            return choice
    listed = ", ".join(repr(c) for c in choices)
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{where}: expected one of {listed}, got {value!r} ({type(value).__name__}){hint}")


def _sequence(value: Any, kind: type, args: tuple[Any, ...], where: str) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if len(text) >= 2 and text[0] + text[-1] in ("[]", "()"):
            text = text[1:-1]
        items: list[Any] = [part.strip() for part in text.split(",")] if text.strip() else []
        if items and items[-1] == "":
            items.pop()  # "1,2," -> (1, 2)
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _error(where, "a list or a comma-separated string", value)
    if kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            raise _error(where, f"{len(args)} values", value)
        types_ = list(args)
    else:
        types_ = [args[0] if args else Any] * len(items)
    out = [convert(item, t, f"{where}[{i}]") for i, (item, t) in enumerate(zip(items, types_, strict=True))]
    return tuple(out) if kind is tuple else out


def _mapping(value: Any, args: tuple[Any, ...], where: str) -> dict[Any, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _error(where, "a mapping (or a JSON object)", value) from None
    if not isinstance(value, Mapping):
        raise _error(where, "a mapping", value)
    if not args:
        return dict(value)
    key_type, value_type = args
    return {convert(k, key_type, f"{where} key {k!r}"): convert(v, value_type, f"{where}[{k!r}]")
            for k, v in value.items()}


_SECTION = re.compile(r"^(\s*)(Args|Arguments|Attributes|Parameters):\s*$")
_HEADER = re.compile(r"^\s*[A-Z]\w*( \w+)*:\s*$")  # "Returns:", "Example:"
_ENTRY = re.compile(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _docstring_args(doc: str) -> dict[str, str]:
    """``name -> text`` of every entry in the docstring's Args/Attributes sections."""
    found: dict[str, str] = {}
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        section = _SECTION.match(lines[i])
        i += 1
        if not section:
            continue
        outer = len(section.group(1)) if i > 1 else -1  # a header on the docstring's first line lost its indent
        indent: int | None = None
        name = None
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
                continue
            depth = len(line) - len(line.lstrip())
            if depth <= outer or (indent is not None and (depth < indent or (depth == indent and _HEADER.match(line)))):
                break  # the next section (or prose) starts
            indent = depth if indent is None else indent
            entry = _ENTRY.match(line.strip()) if depth == indent else None
            if entry:
                name = entry.group(1)
                found[name] = entry.group(2).strip()
            elif name is not None:
                found[name] = f"{found[name]} {line.strip()}".strip()
            i += 1
    return found

"""Small text-formatting helpers of the command line."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["format_count", "format_table", "qualified_name"]


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, under a header line.

    Example:
        >>> print(format_table(("NAME", "PLUGIN"), [("generic.mlp", "vlsdk")]))
        NAME         PLUGIN
        generic.mlp  vlsdk
    """
    table = [tuple(headers)] + [
        tuple("" if cell is None else str(cell) for cell in row) for row in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table
    )


def format_count(n: int) -> str:
    """``1234567 -> '1.23M'``.

    Example:
        >>> format_count(1234567), format_count(950), format_count(2_500_000_000)
        ('1.23M', '950', '2.50B')
    """
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of a class or function (of its type for other objects)."""
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    module = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", repr(target))
    return f"{module}.{name}" if module else name

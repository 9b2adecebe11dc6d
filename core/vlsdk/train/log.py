"""Training logs: JSON lines while training, then a CSV table and a PNG of the curves."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "plot_curves", "read_jsonl", "rewrite_jsonl"]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a training log (one JSON object with a ``"step"`` per line); ``[]`` without the file.

    A run killed while appending leaves its last line cut short: that line is dropped with one
    warning naming the file and the line. Any other line that is not such an object is an error.

    Args:
        path: a ``metrics.jsonl`` or ``routing.jsonl``.

    Raises:
        ValueError: a line before the last is not a JSON object with a ``"step"`` (names the file,
            the line and what to do).
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == last:
                warnings.warn(f"{path}: line {i + 1} is cut short ({err.msg}), as a run killed while writing it "
                              f"leaves it; the line is dropped", stacklevel=2)
                continue
            raise ValueError(f"{path}: line {i + 1} is not JSON ({err}); every line must be one JSON object. "
                             f"Delete or repair that line to resume") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{path}: line {i + 1}: expected a JSON object with an integer \"step\", got "
                             f"{line.strip()[:80]!r}; delete or repair that line to resume")
        rows.append(row)
    return rows


def rewrite_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` by ``rows``, one JSON line each, atomically (a kill leaves the old file or the new one).

    Args:
        path: the log file.
        rows: its new content.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


class MetricsLog:
    """Append-only ``metrics.jsonl`` (one row per log event, ``split`` = train or eval).

    Args:
        directory: the run directory.
        resume: keep existing rows up to (and including) ``resume`` steps; later rows, written
            by a run that was killed after its last checkpoint, are dropped.
    """

    def __init__(self, directory: str | Path, resume: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        rows = self.rows() if resume is not None else []
        rewrite_jsonl(self.path, [r for r in rows if r["step"] <= resume] if resume is not None else [])

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        """Append one row: ``{"split", "step", **values}``."""
        row = {"split": split, "step": step, **{k: float(v) for k, v in values.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        """The rows so far (see :func:`read_jsonl`)."""
        return read_jsonl(self.path)

    def finish(self) -> dict[str, Path]:
        """Write ``metrics.csv`` and ``curves.png`` (when matplotlib is installed)."""
        rows = self.rows()
        keys = ["split", "step", *sorted({k for r in rows for k in r} - {"split", "step"})]
        out = {"jsonl": self.path, "csv": self.directory / "metrics.csv"}
        with out["csv"].open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        png = plot_curves(rows, self.directory / "curves.png")
        if png is not None:
            out["png"] = png
        return out


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """One panel per logged quantity, train and eval; ``None`` (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn('no curves.png: plotting needs matplotlib (pip install "vlsdk[plot]")', stacklevel=2)
        return None
    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k not in ("split", "step"):
                xs, ys = series.setdefault((r["split"], k), ([], []))
                xs.append(r["step"])
                ys.append(v)
    if not series:
        return None
    names = sorted({k for _, k in series})
    cols = min(3, len(names))
    rows_n = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for split in ("train", "eval"):
            if (split, name) in series:
                xs, ys = series[(split, name)]
                ax.plot(xs, ys, marker="o" if split == "eval" else None, ms=3, label=split)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

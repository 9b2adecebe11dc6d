"""Training logs: JSON lines while training, then a CSV table and a PNG of the curves."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "plot_curves"]


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
        kept = [r for r in rows if r["step"] <= resume] if resume is not None else []
        with self.path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        row = {"split": split, "step": step, **{k: float(v) for k, v in values.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

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

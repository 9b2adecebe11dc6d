"""Expert utilisation over training: per-layer token shares in ``routing.jsonl`` and ``routing.png``.

:class:`RoutingLog` subscribes to the routing collector of every
:class:`~vlsdk.models.encoder.HybridEncoder` of a model. Each
training-mode forward adds its layers' :attr:`RouterStats.tokens_per_expert` to running sums that
stay on the model's device (no host sync in the step); :meth:`RoutingLog.snapshot`, called when
the trainer logs a row, copies the sums of the interval to the host once, appends one row per
MoE layer to ``routing.jsonl`` and restarts the sums. :meth:`RoutingLog.finish` draws the shares
over training as ``routing.png`` (next to ``curves.png``).

Example:
    >>> log = RoutingLog(model, "runs/x")  # doctest: +SKIP
    >>> # training forwards
    >>> log.snapshot(step=100)  # doctest: +SKIP
    >>> log.finish()  # doctest: +SKIP
    {'routing_jsonl': PosixPath('runs/x/routing.jsonl'), 'routing_png': PosixPath('runs/x/routing.png')}
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlsdk.models.collector import routing_collectors
from vlsdk.models.features import RouterStats
from vlsdk.train.log import read_jsonl, rewrite_jsonl

__all__ = ["RoutingLog", "ROUTING_JSONL", "ROUTING_PNG"]

ROUTING_JSONL = "routing.jsonl"
ROUTING_PNG = "routing.png"


class RoutingLog:
    """Per-layer expert token counts of the training forwards, one interval per logged step.

    Args:
        model: the model being trained; every ``HybridEncoder`` in it is followed (eval-mode
            forwards, e.g. evaluation, are not counted).
        directory: the run directory (``routing.jsonl`` and ``routing.png`` go there).
        resume: keep the rows of an earlier run up to this step (as :class:`~vlsdk.train.log.MetricsLog`);
            ``None`` starts a new file.

    Each ``routing.jsonl`` row is ``{"step", "layer", "experts", "tokens", "share"}``: the
    (token, expert) assignments of the layer since the previous row, and their shares (summing
    to 1). With several encoders the layer is named ``"<encoder>.<layer>"``.
    """

    def __init__(self, model: nn.Module, directory: str | Path, resume: int | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / ROUTING_JSONL
        collectors = [c for _, c in routing_collectors(model)]
        self._handles = [c.subscribe(self._collect(i)) for i, c in enumerate(collectors)]
        self._multi = len(collectors) > 1
        self._sums: dict[str, torch.Tensor] = {}
        self._names: dict[str, list[str]] = {}
        self._pending: list[tuple[str, list[str], torch.Tensor]] = []  # intervals cut short by a new expert
        rows = self.rows() if resume is not None else []
        kept = [r for r in rows if r["step"] <= resume] if resume is not None else []
        if kept or self.path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            rewrite_jsonl(self.path, kept)

    def _collect(self, encoder: int):
        def collect(module: nn.Module, router_stats: list[RouterStats]) -> None:
            if not module.training:
                return
            for i, stats in enumerate(router_stats):
                layer = stats.layer if stats.layer is not None else i
                key = f"{encoder}.{layer}" if self._multi else str(layer)
                counts = stats.tokens_per_expert.detach()
                names = list(stats.expert_names)
                if self._names.get(key) != names or self._sums[key].shape != counts.shape:
                    self._flush_key(key)  # an expert was added or removed: the old counts need their names
                    self._names[key] = names
                    self._sums[key] = torch.zeros_like(counts, dtype=torch.float64)
                self._sums[key] += counts

        return collect

    def _flush_key(self, key: str) -> None:
        if key in self._sums:
            self._pending.append((key, self._names[key], self._sums[key]))

    @property
    def tracking(self) -> bool:
        """Whether any MoE layer was seen so far."""
        return bool(self._sums) or bool(self._pending)

    def snapshot(self, step: int) -> None:
        """Close the interval ending at ``step``: one ``routing.jsonl`` row per MoE layer, sums reset."""
        items = self._pending + [(k, self._names[k], s) for k, s in self._sums.items()]
        self._pending = []
        if not items:
            return
        counts = torch.cat([s.to(items[0][2].device) for _, _, s in items]).cpu().tolist()  # one host copy
        rows, at = [], 0
        for key, names, _ in items:
            tokens = counts[at:at + len(names)]
            at += len(names)
            total = sum(tokens)
            if total == 0:
                continue
            rows.append({"step": int(step), "layer": key, "experts": names, "tokens": [int(t) for t in tokens],
                         "share": [t / total for t in tokens]})
        for s in self._sums.values():
            s.zero_()
        if rows:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    def rows(self) -> list[dict[str, Any]]:
        """The rows of ``routing.jsonl`` so far (a line cut short by a kill is dropped with a warning)."""
        return read_jsonl(self.path)

    def close(self) -> None:
        """Unsubscribe from the encoders (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def finish(self) -> dict[str, Path]:
        """Unsubscribe and draw ``routing.png``; ``{}`` when the model routed nothing (no MoE)."""
        self.close()
        rows = self.rows()
        if not rows:
            return {}
        out = {"routing_jsonl": self.path}
        try:
            from vlsdk.inspect.plots import plot_routing_history
        except ImportError:  # pragma: no cover - matplotlib is a core dependency here
            warnings.warn('no routing.png: plotting needs matplotlib (pip install "vlsdk[plot]")', stacklevel=2)
            return out
        out["routing_png"] = plot_routing_history(rows, self.directory / ROUTING_PNG)
        return out

"""``vlsdk demo``: every installed domain on data it synthesises, in one HTML report.

Each domain plugin registers a demo (hook ``vlsdk_register_demos``) that trains a light model
with its domain expert inserted, evaluates it and returns a :class:`DemoResult`. This module runs
them, adds the routing views (which expert each patch went to, expert utilisation, the share of
the domain's tokens its own expert received) and writes ``report.html``, ``metrics.json`` and
the PNGs into one folder.
"""

from __future__ import annotations

import argparse
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.plugins.commands import Command

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DemoResult", "run_demos", "DEMO_COMMAND"]


@dataclass
class DemoResult:
    """What a domain's demo hands back to ``vlsdk demo``.

    Attributes:
        domain: the domain (``"medical"``, ...).
        title: one line for the report's section heading.
        metrics: flat, JSON-ready numbers (``{"dice": 0.81}``), reported as ``<domain>.<key>``.
        images: PNGs the demo wrote (predictions drawn on inputs, curves, ...).
        model: the trained :class:`~vlsdk.VLModel` (for the routing views), or ``None``.
        samples: ``(B, C, H, W)`` inputs in the form ``model`` takes, for the routing maps.
        expert: the domain expert's name (``"medical.lesion"``), for its token share.
        summary: a short paragraph for the report.
    """

    domain: str
    title: str
    metrics: dict[str, float]
    images: list[Path] = field(default_factory=list)
    model: nn.Module | None = None
    samples: torch.Tensor | None = None
    expert: str | None = None
    summary: str = ""


def run_demos(out: str | Path, *, domains: list[str] | None = None, quick: bool = False, device: str = "cpu",
              seed: int = 0) -> Path:
    """Run the registered demos and write the report folder; returns the path of ``report.html``."""
    from vlsdk.plugins import get_registry, plugin_infos
    from vlsdk.report import Report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    registry = get_registry("demos")
    names = registry.names() if domains is None else domains
    unknown = [d for d in names if d not in registry]
    if unknown:
        raise ValueError(f"no demo for {unknown}; available: {registry.names()} (a domain's demo comes with its "
                         f"plugin: vlsdk plugins lists what is installed)")
    report = Report("vlsdk demo", subtitle=f"{len(names)} domain(s), data synthesised on the fly, device {device}")
    missing = [i for i in plugin_infos() if i.status != "loaded"]
    if missing:
        report.section("Domains not installed")
        report.add_table([{"plugin": i.name, "status": i.status, "how to get it": i.hint or i.error or ""}
                          for i in missing])
    summary: list[dict[str, Any]] = []
    for name in names:
        print(f"[demo] {name}: running ...", flush=True)
        t0 = time.perf_counter()
        domain_out = out / name
        domain_out.mkdir(exist_ok=True)
        try:
            result = registry.get(name).obj(domain_out, quick=quick, device=device, seed=seed)
        except Exception as err:  # one broken domain must not hide the others
            print(f"[demo] {name}: failed: {type(err).__name__}: {err}", flush=True)
            report.section(f"{name}: failed")
            report.add_text(traceback.format_exc(), pre=True)
            summary.append({"domain": name, "status": f"failed: {type(err).__name__}"})
            continue
        seconds = time.perf_counter() - t0
        _add_domain(report, result, domain_out)
        summary.append({"domain": name, "status": "ok", "seconds": round(seconds, 1),
                        **{k: round(v, 4) for k, v in result.metrics.items()}})
        print(f"[demo] {name}: done in {seconds:.0f} s: "
              + ", ".join(f"{k}={v:.3f}" for k, v in result.metrics.items()), flush=True)
    report.section("Summary")
    report.add_table(summary)
    return report.write(out)


def _add_domain(report: Any, result: DemoResult, out: Path) -> None:
    from vlsdk.inspect import domain_expert_table
    from vlsdk.inspect.cli import routing_report

    report.section(f"{result.domain}: {result.title}")
    if result.summary:
        report.add_text(result.summary)
    report.add_metrics({f"{result.domain}.{k}": v for k, v in result.metrics.items()})
    for png in result.images:
        report.add_image(png)
    if result.model is None or result.samples is None:
        return
    routing_report(result.model, result.samples[:1], out, report=report, prefix=f"{result.domain}_")
    if result.expert is not None:
        table = domain_expert_table(result.model, {result.domain: result.samples})
        report.add_metrics({f"{result.domain}.own_expert_share": table.own_share(result.domain)},
                           caption=f"share of the {result.domain} tokens routed to {result.domain}.* experts")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="vlsdk-demo", help="report folder (default: ./vlsdk-demo)")
    parser.add_argument("--domain", action="append", help="run only this domain (repeatable)")
    parser.add_argument("--quick", action="store_true", help="the fastest setting (used by the tests)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    path = run_demos(args.out, domains=args.domain, quick=args.quick, device=args.device, seed=args.seed)
    print(f"[demo] report: {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


DEMO_COMMAND = Command(
    "demo",
    _run,
    help="every installed domain on synthetic data: train, evaluate, routing views, one HTML report",
    configure=_configure,
)

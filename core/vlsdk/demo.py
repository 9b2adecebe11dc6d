"""``vlsdk demo``: every installed domain on data it synthesises, in one HTML report.

Each domain plugin registers a demo (hook ``vlsdk_register_demos``) that trains a light model
with its domain expert inserted, evaluates it and returns a :class:`DemoResult`. This module runs
them, adds the routing views (which expert each patch went to, expert utilisation, the share of
the domain's tokens its own expert received) and writes ``report.html``, ``metrics.json`` and
the PNGs into one folder. With two or more domains it then builds one model holding every
domain's expert, teaches its router domain routing on the domains' training inputs and reports
the cross-domain domain x expert table (:mod:`vlsdk.inspect.cross_domain`).
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

#: ``quick`` -> steps of the cross-domain routing lesson (batch: 4 inputs per domain).
CROSS_DOMAIN_STEPS = {True: 20, False: 40}


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
        train_samples: ``(N, C, H, W)`` training inputs of the domain (not ``samples``), for the
            cross-domain routing lesson; ``None`` leaves the domain out of it.
    """

    domain: str
    title: str
    metrics: dict[str, float]
    images: list[Path] = field(default_factory=list)
    model: nn.Module | None = None
    samples: torch.Tensor | None = None
    expert: str | None = None
    summary: str = ""
    train_samples: torch.Tensor | None = None


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
    results: list[DemoResult] = []
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
        results.append(result)
        _add_domain(report, result, domain_out)
        summary.append({"domain": name, "status": "ok", "seconds": round(seconds, 1),
                        **{k: round(v, 4) for k, v in result.metrics.items()}})
        print(f"[demo] {name}: done in {seconds:.0f} s: "
              + ", ".join(f"{k}={v:.3f}" for k, v in result.metrics.items()), flush=True)
    cross = _cross_domain(report, results, out, quick=quick, device=device, seed=seed)
    if cross is not None:
        summary.append(cross)
    report.section("Summary")
    report.add_table(summary)
    return report.write(out)


def _cross_domain(report: Any, results: list[DemoResult], out: Path, *, quick: bool, device: str,
                  seed: int) -> dict[str, Any] | None:
    """The cross-domain section: one model, every domain's expert; ``None`` with fewer than two domains."""
    import torch

    from vlsdk.inspect.cross_domain import cross_domain_routing
    from vlsdk.inspect.plots import plot_domain_expert_table

    usable = [r for r in results if r.expert and r.samples is not None and r.train_samples is not None]
    if len(usable) < 2:
        return None
    print(f"[demo] cross-domain routing ({', '.join(r.domain for r in usable)}): running ...", flush=True)
    t0 = time.perf_counter()
    steps = CROSS_DOMAIN_STEPS[bool(quick)]
    report.section("Cross-domain routing: one model, every domain's expert")
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)  # tiny tensors: one thread beats two contending ones on a shared 2-core CPU
    try:
        res = cross_domain_routing({r.domain: r.train_samples.cpu() for r in usable},
                                   {r.domain: r.samples.cpu() for r in usable},
                                   {r.domain: r.expert for r in usable}, steps=steps, seed=seed, device=device)
    except Exception as err:  # e.g. an expert that is not registered: report it, keep the domain results
        print(f"[demo] cross-domain routing: failed: {type(err).__name__}: {err}", flush=True)
        report.add_text(traceback.format_exc(), pre=True)
        return {"domain": "cross-domain", "status": f"failed: {type(err).__name__}"}
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    experts = ", ".join(res.experts.values())
    report.add_text(
        f"A fresh tiny model holding every domain's expert ({experts}) next to its generic experts. The "
        f"backbone and the generic router rows stay frozen (vlsdk.train.prepare_specialisation opens the domain "
        f"experts' rows at bias 0); the domain experts' router rows are then trained for {res.steps} steps with "
        f"the domain labels of each domain's training inputs (per token, -log p(the domain's own expert), 4 "
        f"inputs per domain and step; loss {res.losses[0]:.2f} -> {res.losses[-1]:.2f}). Inputs are zero-padded "
        f"to {res.in_chans} channels, so the router has to tell the domains apart from what the backbone makes of "
        f"them. The table is measured on each domain's held-out demo inputs: the share of a domain's gate weight "
        f"reaching each expert, over all MoE layers (rows sum to 1). {seconds:.1f} s.")
    report.add_table(res.table.rows(), caption="Share of each domain's held-out tokens per expert, after the "
                                               "routing lesson (gate weight, all MoE layers)")
    report.add_image(plot_domain_expert_table(res.table, out / "cross_domain_routing.png",
                                              title="One model, every domain's expert: where each domain's "
                                                    "tokens go"),
                     caption="Rows: the domain of the inputs; columns: the experts; after the routing lesson.")
    report.add_table(res.rows(), caption="Share of each domain's held-out tokens reaching its own expert, with the "
                                         "rows opened but untrained (before) and after the routing lesson (overall "
                                         "and per MoE layer)")
    metrics = {}
    for row in res.rows():
        metrics[f"cross_domain.{row['domain']}.own_share"] = row["own share after"]
        metrics[f"cross_domain.{row['domain']}.own_share_before"] = row["own share before"]
    report.add_metrics(metrics, show=False)
    print(f"[demo] cross-domain routing: done in {seconds:.1f} s: "
          + ", ".join(f"{d}={res.table.own_share(d):.2f}" for d in res.table.domains), flush=True)
    return {"domain": "cross-domain", "status": "ok", "seconds": round(seconds, 1),
            **{f"{d}.own_share": round(res.table.own_share(d), 4) for d in res.table.domains}}


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

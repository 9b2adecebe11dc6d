"""``vlsdk demo``: every installed domain on data it synthesises (or on a real folder), in one HTML report.

Each domain plugin registers a demo (hook ``vlsdk_register_demos``) that trains a light model
with its domain expert inserted, evaluates it and returns a :class:`DemoResult`. This module runs
them, adds the routing views (which expert each patch went to, expert utilisation, the share of
the domain's tokens its own expert received) and writes ``report.html``, ``metrics.json`` and
the PNGs into one folder. With two or more domains it then builds one model holding every
domain's expert, teaches its router domain routing on the domains' training inputs and reports
the cross-domain domain x expert table (:mod:`vlsdk.inspect.cross_domain`).

Two options reach the demos through optional keyword-only arguments of their ``run``:
``--steps N`` (``steps=N``: training steps, overriding the demo's default) and
``--data DOMAIN=PATH`` (``data=Path(PATH)``: that domain's demo reads a real folder instead of
synthesising). ``run``'s signature is inspected once per demo; a demo whose ``run`` takes neither
keyword (an older or third-party demo) runs with its defaults, and the terminal, the domain's
report section and the summary table say which option it ignored.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.plugins.commands import Command

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DEMO_OPTIONS", "QUICK_NOTE", "DemoResult", "accepted_options", "check_data", "run_demos", "DEMO_COMMAND"]

#: What ``--quick`` runs are, printed once by ``vlsdk demo --quick`` (and the domain commands' ``--quick``).
QUICK_NOTE = ("a smoke run: every stage runs, on little data for few steps, to show that it works; "
              "its numbers are not a benchmark")

#: ``quick`` -> steps of the cross-domain routing lesson (batch: 4 inputs per domain).
CROSS_DOMAIN_STEPS = {True: 20, False: 40}

#: The optional keyword-only arguments of a demo's ``run`` and the ``vlsdk demo`` option of each.
DEMO_OPTIONS = {"steps": "--steps", "data": "--data"}


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
        train_steps: the optimiser steps the demo trained (reported as ``<domain>.train_steps``
            and in the summary table), or ``None``.
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
    train_steps: int | None = None


def accepted_options(run: Callable[..., Any]) -> frozenset[str]:
    """The :data:`DEMO_OPTIONS` keywords that a demo's ``run`` accepts (from its signature).

    A ``**kwargs`` parameter accepts them all; a callable without an inspectable signature none.

    Example:
        >>> accepted_options(lambda out_dir, *, quick, device, seed, steps=None: None)
        frozenset({'steps'})
    """
    try:
        params = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError):  # e.g. a builtin: pass only the base contract
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset(DEMO_OPTIONS)
    keywords = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(p.name for p in params if p.name in DEMO_OPTIONS and p.kind in keywords)


def check_data(data: Mapping[str, str | Path], installed: list[str], selected: list[str]) -> dict[str, Path]:
    """Check ``--data DOMAIN=PATH`` values before any demo runs; returns ``{domain: folder}``.

    Args:
        data: domain -> data folder.
        installed: the domains that have a demo.
        selected: the domains this run executes (``--domain``).

    Raises:
        ValueError: an unknown domain (naming the closest installed one) or a domain not selected.
        FileNotFoundError: a path that does not exist (naming the domain and the path).
        NotADirectoryError: a path that is a file, not a folder.
    """
    checked: dict[str, Path] = {}
    for domain, raw in data.items():
        path = Path(raw).expanduser()
        if domain not in installed:
            close = difflib.get_close_matches(domain, installed, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ValueError(f"--data {domain}={raw}: no installed domain {domain!r}{hint} Installed domains: "
                             f"{', '.join(installed) or 'none'} (vlsdk plugins lists them)")
        if domain not in selected:
            raise ValueError(f"--data {domain}={raw}: domain {domain!r} is not run (--domain selects "
                             f"{', '.join(selected)}); add --domain {domain}")
        if not path.exists():
            raise FileNotFoundError(f"--data {domain}={raw}: the {domain} data folder {str(path.resolve())!r} "
                                    f"does not exist")
        if not path.is_dir():
            raise NotADirectoryError(f"--data {domain}={raw}: {str(path.resolve())!r} is a file; give the "
                                     f"{domain} dataset's folder")
        checked[domain] = path
    return checked


def _demo_options(run: Callable[..., Any], domain: str, steps: int | None,
                  data: dict[str, Path]) -> tuple[dict[str, Any], list[str]]:
    """The keywords to pass to ``run`` and the options (``--steps``, ...) it ignores."""
    given = {k: v for k, v in (("steps", steps), ("data", data.get(domain))) if v is not None}
    accepted = accepted_options(run) if given else frozenset()
    return ({k: v for k, v in given.items() if k in accepted},
            [DEMO_OPTIONS[k] for k in given if k not in accepted])


def run_demos(out: str | Path, *, domains: list[str] | None = None, quick: bool = False, device: str = "cpu",
              seed: int = 0, steps: int | None = None, data: Mapping[str, str | Path] | None = None) -> Path:
    """Run the registered demos and write the report folder; returns the path of ``report.html``.

    Args:
        out: the report folder.
        domains: the domains to run (default: every installed one).
        quick: each demo's fastest setting.
        device: torch device.
        seed: seed passed to every demo.
        steps: training steps for every demo that accepts ``steps`` (``None``: their defaults).
        data: ``{domain: folder}``: that domain's demo runs on the real folder (when it accepts ``data``).

    Raises:
        ValueError: an unknown domain, bad ``steps``, or a ``data`` domain that is not run.
        FileNotFoundError: a ``data`` folder that does not exist.
    """
    from vlsdk.plugins import get_registry, plugin_infos
    from vlsdk.report import Report

    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1 or None, got {steps!r}")
    registry = get_registry("demos")
    names = registry.names() if domains is None else domains
    unknown = [d for d in names if d not in registry]
    if unknown:
        raise ValueError(f"no demo for {unknown}; available: {registry.names()} (a domain's demo comes with its "
                         f"plugin: vlsdk plugins lists what is installed)")
    folders = check_data(data or {}, registry.names(), names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = ("data synthesised on the fly" if not folders else
              "--data " + " ".join(f"{d}={p}" for d, p in folders.items())
              + ("" if len(folders) == len(names) else " (other domains: synthesised data)"))
    report = Report("vlsdk demo", subtitle=f"{len(names)} domain(s), {source}, device {device}"
                                           + ("" if steps is None else f", --steps {steps}")
                                           + (f"; --quick: {QUICK_NOTE}" if quick else ""))
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
        run = registry.get(name).obj
        options, ignored = _demo_options(run, name, steps, folders)
        note = _ignored_note(name, ignored)
        if note:
            print(f"[demo] {note}", flush=True)
        row: dict[str, Any] = {"domain": name, "data": str(options.get("data", "synthetic"))}
        if ignored:
            row["ignored"] = ", ".join(ignored)
        try:
            result = run(domain_out, quick=quick, device=device, seed=seed, **options)
        except Exception as err:  # one broken domain must not hide the others
            print(f"[demo] {name}: failed: {type(err).__name__}: {err}", flush=True)
            report.section(f"{name}: failed", note)
            report.add_text(traceback.format_exc(), pre=True)
            summary.append({**row, "status": f"failed: {type(err).__name__}"})
            continue
        seconds = time.perf_counter() - t0
        results.append(result)
        _add_domain(report, result, domain_out, note)
        summary.append({**row, "status": "ok", "seconds": round(seconds, 1), "steps": result.train_steps,
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


def _ignored_note(domain: str, ignored: list[str]) -> str:
    """One line saying which options the domain's demo ignored ("" when none)."""
    if not ignored:
        return ""
    keywords = " or ".join(f"`{o.lstrip('-')}`" for o in ignored)
    return (f"{domain}: ignored {' and '.join(ignored)}: its demo's run() takes no {keywords} keyword (an older "
            f"demo contract), so it ran with its own defaults on its own data")


def _add_domain(report: Any, result: DemoResult, out: Path, note: str = "") -> None:
    from vlsdk.inspect import domain_expert_table
    from vlsdk.inspect.cli import routing_report

    report.section(f"{result.domain}: {result.title}")
    if note:
        report.add_text(f"Note: {note}.")
    if result.summary:
        report.add_text(result.summary)
    report.add_metrics({f"{result.domain}.{k}": v for k, v in result.metrics.items()})
    if result.train_steps is not None:
        report.add_metrics({f"{result.domain}.train_steps": result.train_steps}, show=False)
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
    parser.add_argument("--quick", action="store_true", help=f"the fastest setting (used by the tests): {QUICK_NOTE}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=_positive_int, metavar="N",
                        help="training steps of every domain's demo, overriding its default (a demo whose run() "
                             "takes no `steps` is reported as ignoring it; the cross-domain lesson keeps its own)")
    parser.add_argument("--data", action="append", type=_data_option, metavar="DOMAIN=PATH", default=[],
                        help="run DOMAIN's demo on a real folder instead of synthetic data (repeatable), e.g. "
                             "medical=../shared/data/brats_lesion_mri industrial=../shared/data/deeppcb "
                             "driving=../shared/data/nuscenes_mini")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps >= 1, got {text!r}")
    return value


def _data_option(text: str) -> tuple[str, Path]:
    domain, sep, path = text.partition("=")
    if not sep or not domain.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected DOMAIN=PATH (e.g. medical=../shared/data/brats_lesion_mri), "
                                         f"got {text!r}")
    return domain.strip(), Path(path.strip())


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    data: dict[str, Path] = {}
    for domain, path in args.data:
        if domain in data:
            raise ValueError(f"--data {domain}= given twice ({data[domain]} and {path}); give one folder per domain")
        data[domain] = path
    if args.quick:
        print(f"[demo] --quick: {QUICK_NOTE}", flush=True)
    path = run_demos(args.out, domains=args.domain, quick=args.quick, device=args.device, seed=args.seed,
                     steps=args.steps, data=data)
    print(f"[demo] report: {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


DEMO_COMMAND = Command(
    "demo",
    _run,
    help="every installed domain on synthetic data (or --data DOMAIN=PATH): train, evaluate, routing views, "
         "one HTML report",
    configure=_configure,
)

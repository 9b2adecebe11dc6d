"""``vlsdk routing IMAGE --model DIR``: routing maps, utilisation and top experts as a report folder.

:func:`routing_report` is the reusable part (``vlsdk demo`` and the training reports add the
same sections to their own :class:`~vlsdk.report.Report`); :data:`ROUTING_COMMAND` is the
core command.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.plugins.commands import Command

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vlsdk.inspect.routing import RoutingMaps
    from vlsdk.report import Report

__all__ = ["ROUTING_COMMAND", "routing_report"]


def routing_report(model: nn.Module, image: torch.Tensor, out: str | Path, *, report: Report | None = None,
                   title: str | None = None, top: int = 3, text: Any = None, prefix: str = "",
                   maps: RoutingMaps | None = None) -> Report:
    """Add routing sections for one image to ``report`` (a new one by default) and return it.

    Writes ``{prefix}routing_map.png`` and ``{prefix}utilisation.png`` into ``out`` and adds:
    the routing map over the image, the utilisation bars with a per-layer table, and the
    top experts with their gate weights per layer. Router entropies go into the metrics as
    ``routing/layer{i}/entropy`` (and ``load_entropy``), under ``prefix`` when given.

    Args:
        model: a model with MoE layers.
        image: ``(1, C, H, W)`` or ``(C, H, W)``.
        out: folder for the PNGs (the report's own output folder, typically).
        report: the report to extend; ``None`` makes ``Report(title)``.
        title: title of a new report.
        top: experts per layer in the top-experts table.
        text: optional text for the cross-modal gates.
        prefix: file-name and metric prefix, for several images in one report.
        maps: the image's :func:`~vlsdk.inspect.routing_maps`, when already computed.
    """
    from vlsdk.inspect.plots import plot_routing_map, plot_utilisation
    from vlsdk.inspect.routing import expert_utilisation, routing_maps
    from vlsdk.report import Report

    if image.dim() == 3:
        image = image.unsqueeze(0)
    out = Path(out)
    report = report if report is not None else Report(title or "Routing inspection")
    maps = maps if maps is not None else routing_maps(model, image, text)
    util = expert_utilisation(maps.stats)
    label = f" ({prefix.rstrip('_-/')})" if prefix else ""
    report.section(f"Routing map{label}",
                   "The top-1 expert of every image patch in each MoE layer (colours, legend) and the gate "
                   "weight it got. Each layer routes on its own token grid: later stages see coarser patches.")
    report.add_image(plot_routing_map(maps, image, out / f"{prefix}routing_map.png"),
                     caption="Top-1 expert per patch (top row) and its gate weight (bottom row).")
    report.section(f"Expert utilisation{label}",
                   "Share of the (patch, expert) assignments each expert received per MoE layer. The router "
                   "entropy is the mean entropy of its per-token scores (ln E when it cannot decide).")
    report.add_image(plot_utilisation(util, out / f"{prefix}utilisation.png"),
                     caption="Share of assignments per expert; dashed: uniform share.")
    report.add_table(util, caption="Utilisation per MoE layer (entropies in nats)")
    report.add_metrics({f"layer{r['layer']}": {"entropy": r["entropy"], "load_entropy": r["load_entropy"]}
                        for r in util}, prefix=f"{prefix}routing".strip("/"), show=False)
    report.section(f"Top experts{label}", "The experts with the most gate weight per MoE layer for this image: "
                   "weight = share of the image's gate weight, mean_gate = mean weight where chosen, "
                   "top1 = share of patches where it was the best expert.")
    report.add_table(maps.top_experts(top), caption="Top experts per layer")
    return report


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="a PNG/JPEG image or a .npy array (H, W[, C] or C, H, W)")
    parser.add_argument("--model", required=True, metavar="DIR", help="a model directory (save_pretrained)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder for report.html, metrics.json and the PNGs (default: routing-<image>)")
    parser.add_argument("--top", type=int, default=3, help="experts per layer in the top-experts table (default 3)")
    parser.add_argument("--text", default=None, help="a text prompt for models with cross-modal gates")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _run(args: argparse.Namespace) -> int:
    from vlsdk.cli.output import format_table
    from vlsdk.inspect.routing import load_image, routing_maps
    from vlsdk.models.model import VLModel

    image_path = Path(args.image)
    if not image_path.is_file():
        raise FileNotFoundError(f"IMAGE: no file at {image_path}")
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    model = VLModel.from_pretrained(args.model, map_location=args.device)
    if not model.moe_layers:
        raise ValueError(f"{args.model}: this model has no MoE layers (config.moe is None); nothing is routed")
    image = load_image(image_path, model.config.in_chans).to(args.device)
    out = Path(args.out) if args.out else Path(f"routing-{image_path.stem}")
    print(f"routing {image_path} ({image.shape[-2]}x{image.shape[-1]}) through {args.model} "
          f"({len(model.moe_layers)} MoE layers)")
    maps = routing_maps(model, image, args.text)
    report = routing_report(model, image, out, title=f"Routing: {image_path.name}", top=args.top, maps=maps)
    report.subtitle = f"model {args.model}, image {image_path}"
    path = report.write(out)
    rows = maps.top_experts(args.top)
    print(format_table(("LAYER", "GRID", "RANK", "EXPERT", "WEIGHT", "TOP1"),
                       [(r["layer"], r["grid"], r["rank"], r["expert"], f"{r['weight']:.3f}", f"{r['top1']:.2f}")
                        for r in rows]))
    print(f"report: {path}")
    return 0


#: ``vlsdk routing``: add to the core command list (:data:`vlsdk.cli.commands.CORE_COMMANDS`).
ROUTING_COMMAND = Command(
    "routing",
    _run,
    help="show which experts each image patch is routed to (maps, utilisation, top experts)",
    configure=_configure,
    description="Run one image through a saved model and write a report folder with the per-patch routing "
    "map of every MoE layer over the image, expert utilisation per layer, and the top experts with their "
    "gate weights; prints the top-experts table.",
)

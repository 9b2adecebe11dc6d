"""Routing plots as PNG files: routing maps, utilisation bars, domain x expert heatmap, shares over training.

The figures are built with :class:`matplotlib.figure.Figure` and saved through the Agg
canvas, so nothing touches pyplot's global state or the user's backend (safe in notebooks,
threads and headless servers). Every function returns the path of the PNG it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlsdk.inspect.routing import DomainExpertTable, RoutingMaps, expert_utilisation
from vlsdk.plugins.errors import require_extra

# Importing this module without matplotlib is a MissingExtraError (an ImportError) naming
# pip install "vlsdk[plot]"; vlsdk.train.routing_log catches it to skip routing.png.
require_extra("plot", "matplotlib", requester="vlsdk.inspect.plots (routing plots)", import_now=True)

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

__all__ = ["expert_colors", "plot_routing_map", "plot_utilisation", "plot_domain_expert_table",
           "plot_routing_history"]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; give a path ending in .png, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")
    return path


def expert_colors(names: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A categorical colour per expert name (``tab10``/``tab20``, evenly spaced hues beyond 20)."""
    from matplotlib import colormaps

    n = len(names)
    if n <= 10:
        cmap = colormaps["tab10"]
        colors = [cmap(i) for i in range(n)]
    elif n <= 20:
        cmap = colormaps["tab20"]
        colors = [cmap(i) for i in range(n)]
    else:
        cmap = colormaps["hsv"]
        colors = [cmap(i / n) for i in range(n)]
    return dict(zip(names, colors, strict=True))


def _display(image: Any) -> tuple[np.ndarray, str | None]:
    """An image tensor/array as something ``imshow`` draws: ``(H, W)`` grey or ``(H, W, 3)``."""
    arr = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image, dtype=float)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] < min(arr.shape[1:]):  # (C, H, W) -> (H, W, C)
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3:
        c = arr.shape[-1]
        # RGB(A) as colour; one, two or many channels (a template pair, a BEV stack) as the grey max
        arr = arr[..., :3] if c in (3, 4) else arr.max(-1)
    lo, hi = np.nanmin(arr), np.nanmax(arr)
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr, ("gray" if arr.ndim == 2 else None)


def plot_routing_map(maps: RoutingMaps, image: torch.Tensor | np.ndarray | None, path: str | Path, *,
                     index: int = 0, layers: Sequence[int] | None = None, alpha: float = 0.5,
                     title: str | None = None) -> Path:
    """Top-1 expert of every patch over the image, one panel per MoE layer, and its gate weight.

    The top row shows the image and, per layer, the nearest-upsampled top-1 expert ids in a
    categorical colormap (legend: expert names, same colour in every layer) with the token
    grid drawn; the bottom row shows the top-1 gate weight of each patch.

    Args:
        maps: from :func:`vlsdk.inspect.routing_maps`.
        image: the image ``maps`` was computed on (``(C, H, W)``, ``(B, C, H, W)`` or
            ``(H, W[, C])``); ``None`` draws the maps alone.
        path: the PNG to write.
        index: which image of the batch.
        layers: MoE layer indices to draw (default all).
        alpha: opacity of the expert colours over the image.
        title: figure title.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    chosen = [maps[i] for i in (layers if layers is not None else range(len(maps)))]
    if not chosen:
        raise ValueError("no layers to draw")
    height, width = maps.image_size
    names = maps.expert_names
    colors = expert_colors(names)
    cmap = ListedColormap([colors[n] for n in names])
    bg = None
    if image is not None:
        img = image[index] if hasattr(image, "dim") and image.dim() == 4 else image
        bg = _display(img)
    cols = len(chosen) + (1 if bg is not None else 0)
    aspect = height / max(width, 1)
    fig = _figure(2.8 * cols + 1.8, 2 * 2.6 * aspect + 1.4)
    axes = fig.subplots(2, cols, squeeze=False)
    col = 0
    if bg is not None:
        axes[0, 0].imshow(bg[0], cmap=bg[1], interpolation="nearest")
        axes[0, 0].set_title("image", fontsize=10)
        axes[1, 0].axis("off")
        col = 1
    weight_im = None
    for layer in chosen:
        ax, wax = axes[0, col], axes[1, col]
        # ids in the layer's own name order -> indices into the global colour list
        remap = np.array([names.index(n) for n in layer.expert_names])
        ids = remap[layer.upsampled(index, (height, width))]
        if bg is not None:  # grey underneath, so the expert colours read true
            grey = bg[0] if bg[0].ndim == 2 else bg[0] @ np.array([0.299, 0.587, 0.114])
            ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.imshow(ids, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, alpha=alpha if bg is not None else 1.0,
                  interpolation="nearest")
        weights = layer.top1_weight[index].numpy()
        rows = np.minimum(np.arange(height) // layer.stride, layer.grid[0] - 1)
        cols_ = np.minimum(np.arange(width) // layer.stride, layer.grid[1] - 1)
        weight_im = wax.imshow(weights[rows[:, None], cols_[None, :]], cmap="viridis", vmin=0.0, vmax=1.0,
                               interpolation="nearest")
        for a in (ax, wax):
            for y in range(1, layer.grid[0]):
                if y * layer.stride < height:
                    a.axhline(y * layer.stride - 0.5, color="white", lw=0.4, alpha=0.6)
            for x in range(1, layer.grid[1]):
                if x * layer.stride < width:
                    a.axvline(x * layer.stride - 0.5, color="white", lw=0.4, alpha=0.6)
        stage = "" if layer.stage is None else f"stage {layer.stage}, "
        ax.set_title(f"MoE layer {layer.layer}: top-1 expert\n{stage}{layer.grid[0]}x{layer.grid[1]} patches, "
                     f"stride {layer.stride}", fontsize=9)
        wax.set_title(f"layer {layer.layer}: top-1 gate weight (k={layer.top_k})", fontsize=9)
        col += 1
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    if weight_im is not None:
        fig.colorbar(weight_im, ax=axes[1, :].tolist(), shrink=0.8, label="gate weight")
    handles = [Patch(facecolor=colors[n], edgecolor="black", linewidth=0.3, label=n) for n in names]
    if bg is not None:  # the free cell under the image
        axes[1, 0].legend(handles=handles, loc="center", title="expert (top-1)", fontsize=8, title_fontsize=9,
                          frameon=False, ncols=1 if len(names) <= 12 else 2)
    else:
        fig.legend(handles=handles, loc="outside right upper", title="expert (top-1)", fontsize=8,
                   title_fontsize=9)
    fig.suptitle(title or "Routing map: which expert each patch went to", fontsize=11)
    return _save(fig, path)


def plot_utilisation(stats_or_rows: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Bar chart of each expert's share of assignments, one panel per MoE layer.

    Args:
        stats_or_rows: rows from :func:`vlsdk.inspect.expert_utilisation`, or anything it takes
            (a list of :class:`~vlsdk.RouterStats`, features, :class:`RoutingMaps`...).
        path: the PNG to write.
        title: figure title.

    The dashed line is the uniform share ``1/E``; panel titles give the router entropy
    against its maximum ``ln E``.
    """
    rows = stats_or_rows
    if not (isinstance(rows, list) and rows and isinstance(rows[0], dict)):
        rows = expert_utilisation(stats_or_rows)
    fixed = {"layer", "assignments", "entropy", "max_entropy", "load_entropy", "dropped"}
    names = [k for k in rows[0] if k not in fixed]
    colors = expert_colors(names)
    n = len(rows)
    fig = _figure(max(4.0, 0.45 * len(names) + 1.5) * min(n, 3), 3.2 * ((n + 2) // 3) + 0.6)
    axes = fig.subplots((n + 2) // 3, min(n, 3), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        present = [k for k in names if row.get(k) is not None]
        shares = [row[k] for k in present]
        ax.bar(range(len(present)), shares, color=[colors[k] for k in present], edgecolor="black", linewidth=0.4)
        if present:
            ax.axhline(1.0 / len(present), color="gray", ls="--", lw=1, label="uniform")
        ax.set_xticks(range(len(present)))
        ax.set_xticklabels(present, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, max(1.05 * max(shares, default=0), 1.5 / max(len(present), 1)))
        ax.set_ylabel("share of assignments", fontsize=8)
        ax.set_title(f"MoE layer {row['layer']}: entropy {row['entropy']:.2f} / ln E {row['max_entropy']:.2f}",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title or "Expert utilisation per MoE layer", fontsize=11)
    return _save(fig, path)


def plot_domain_expert_table(table: DomainExpertTable, path: str | Path, *, title: str | None = None) -> Path:
    """Heatmap of :func:`vlsdk.inspect.domain_expert_table`: domains (rows) x experts (columns)."""
    share = np.asarray(table.share, dtype=float)
    d, x = share.shape
    fig = _figure(max(4.0, 1.0 * x + 2.5), max(2.5, 0.6 * d + 1.8))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(d):
        for j in range(x):
            v = share[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if v > 0.6 else "black")
    ax.set_xticks(range(x))
    ax.set_xticklabels(table.experts, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(d))
    ax.set_yticklabels(table.domains, fontsize=9)
    ax.set_xlabel("expert")
    ax.set_ylabel("domain of the images")
    fig.colorbar(im, ax=ax, label=f"share of tokens ({table.by})")
    fig.suptitle(title or "Which experts each domain's tokens reach (all MoE layers)", fontsize=11)
    return _save(fig, path)


def plot_routing_history(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Expert token shares over training, one stacked panel per MoE layer.

    Args:
        rows: ``{"step", "layer", "experts", "share"}`` rows, as
            :class:`vlsdk.train.routing_log.RoutingLog` writes them to ``routing.jsonl``: the
            share of each expert in the interval ending at ``step``.
        path: the PNG to write.
        title: figure title.
    """
    if not rows:
        raise ValueError("no routing rows to plot (the model has no MoE layers, or nothing was logged)")
    layers: dict[str, list[Mapping[str, Any]]] = {}
    names: list[str] = []
    for r in rows:
        layers.setdefault(str(r["layer"]), []).append(r)
        names += [n for n in r["experts"] if n not in names]
    colors = expert_colors(names)
    n = len(layers)
    cols = min(n, 3)
    fig = _figure(4.2 * cols + 1.8, 3.0 * -(-n // cols))
    axes = np.atleast_1d(fig.subplots(-(-n // cols), cols, squeeze=False)).ravel()
    for ax, (layer, layer_rows) in zip(axes, layers.items(), strict=False):
        layer_rows = sorted({r["step"]: r for r in layer_rows}.values(), key=lambda r: r["step"])  # last per step
        steps = [r["step"] for r in layer_rows]
        present = [e for e in names if any(e in r["experts"] for r in layer_rows)]
        share = np.array([[dict(zip(r["experts"], r["share"], strict=True)).get(e, 0.0) for r in layer_rows]
                          for e in present])
        if len(steps) > 1:
            ax.stackplot(steps, share, colors=[colors[e] for e in present], labels=present)
            ax.set_xlim(steps[0], steps[-1])
        else:
            bottom = 0.0
            for e, v in zip(present, share[:, 0], strict=True):
                ax.bar([steps[0]], [v], bottom=bottom, color=colors[e], label=e, width=0.8)
                bottom += v
        ax.set_ylim(0, 1)
        ax.set_title(f"MoE layer {layer}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("share of assignments")
    for ax in axes[n:]:
        ax.axis("off")
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[e], label=e) for e in names]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle(title or "Expert utilisation over training (share of token-expert assignments per interval)",
                 fontsize=11)
    return _save(fig, path)

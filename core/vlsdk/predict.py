"""``vlsdk predict``: run a saved model on image files; pictures for people, JSON/PNG/NPY for pipelines.

For every input and every head: detection boxes drawn on the image and listed in JSON,
segmentation label maps (PNG, the label value in each pixel) and an overlay, depth as a colour
map and a ``.npy`` array. ``predictions.json`` indexes it all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.plugins.commands import Command

if TYPE_CHECKING:
    import torch

__all__ = ["predict_files", "PREDICT_COMMAND"]


def predict_files(model_dir: str | Path, inputs: list[str | Path], out: str | Path, *, heads: list[str] | None = None,
                  score_threshold: float = 0.3, device: str = "cpu") -> dict[str, Any]:
    """Predict every input with every head (or ``heads``); returns what ``predictions.json`` holds."""
    import torch

    from vlsdk.inspect.routing import load_image
    from vlsdk.models.model import VLModel

    model = VLModel.from_pretrained(model_dir, map_location=device)
    names = list(model.heads) if heads is None else heads
    unknown = [h for h in names if h not in model.heads]
    if unknown or not names:
        raise ValueError(f"{model_dir}: heads {unknown or names} not in the model; it has {sorted(model.heads)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"model": str(model_dir), "inputs": []}
    for path in map(Path, inputs):
        image = load_image(path, model.config.in_chans).to(device)
        with torch.no_grad():
            output = model(image, heads=names)
        entry: dict[str, Any] = {"input": str(path), "size": list(image.shape[-2:])}
        for name in names:
            task = model.head_specs[name].task
            head = model.heads[name]
            stem = f"{path.stem}.{name}"
            if task == "detection":
                det = head.decode(output[name], score_threshold=score_threshold)[0]
                entry[name] = {"task": task, "boxes": det.boxes.tolist(), "scores": det.scores.tolist(),
                               "labels": det.labels.tolist(),
                               "picture": _draw_boxes(image[0], det, out / f"{stem}.png")}
            elif task == "segmentation":
                labels = head.decode(output[name]).labels[0]
                entry[name] = {"task": task, "labels": _save_labels(labels, out / f"{stem}.labels.png"),
                               "picture": _overlay(image[0], labels, out / f"{stem}.png"),
                               "pixels_per_label": torch.bincount(labels.flatten()).tolist()}
            elif task == "depth":
                depth = head.decode(output[name])[0].float().cpu()
                import numpy as np

                np.save(out / f"{stem}.npy", depth.numpy())
                entry[name] = {"task": task, "array": str(out / f"{stem}.npy"), "min": float(depth.min()),
                               "max": float(depth.max()), "picture": _colour(depth, out / f"{stem}.png")}
            else:
                entry[name] = {"task": task, "note": "no file writer for this task; use the Python API"}
        index["inputs"].append(entry)
    (out / "predictions.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def _grey(image: torch.Tensor) -> Any:
    img = image.float().mean(0).cpu().numpy()
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else img * 0


def _figure(image: torch.Tensor) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    h, w = image.shape[-2:]
    fig = Figure(figsize=(max(3.0, w / 100), max(3.0, h / 100)), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(_grey(image), cmap="gray")
    ax.set_axis_off()
    return fig, ax


def _draw_boxes(image: torch.Tensor, det: Any, path: Path) -> str:
    from matplotlib.patches import Rectangle

    fig, ax = _figure(image)
    rows = zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True)
    for (x1, y1, x2, y2), score, label in rows:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=1.2))
        ax.text(x1, y1, f"{label}:{score:.2f}", color="yellow", fontsize=6, va="bottom")
    fig.savefig(path)
    return str(path)


def _overlay(image: torch.Tensor, labels: torch.Tensor, path: Path) -> str:
    import numpy as np

    fig, ax = _figure(image)
    lab = labels.cpu().numpy()
    ax.imshow(np.ma.masked_equal(lab, 0), cmap="tab10", alpha=0.45, vmin=0, vmax=9, interpolation="nearest")
    fig.savefig(path)
    return str(path)


def _save_labels(labels: torch.Tensor, path: Path) -> str:
    from PIL import Image

    Image.fromarray(labels.cpu().numpy().astype("uint8")).save(path)
    return str(path)


def _colour(depth: torch.Tensor, path: Path) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3), dpi=100)
    ax = fig.add_axes((0.02, 0.02, 0.8, 0.96))
    im = ax.imshow(depth.numpy(), cmap="magma")
    ax.set_axis_off()
    fig.colorbar(im, cax=fig.add_axes((0.85, 0.1, 0.04, 0.8)))
    fig.savefig(path)
    return str(path)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="PNG/JPEG/.npy images")
    parser.add_argument("--model", required=True, help="a directory written by save_pretrained")
    parser.add_argument("--out", default="vlsdk-predictions", help="output folder (default: ./vlsdk-predictions)")
    parser.add_argument("--heads", nargs="*", help="heads to run (default: all)")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="detection score threshold")
    parser.add_argument("--device", default="cpu")


def _run(args: argparse.Namespace) -> int:
    index = predict_files(args.model, args.inputs, args.out, heads=args.heads, score_threshold=args.score_threshold,
                          device=args.device)
    for entry in index["inputs"]:
        parts = []
        for name, result in entry.items():
            if isinstance(result, dict) and "task" in result:
                n = len(result["boxes"]) if "boxes" in result else None
                parts.append(f"{name}: {n} boxes" if n is not None else f"{name}: {result.get('picture', '')}")
        print(f"{entry['input']}: " + "; ".join(parts))
    print(f"predictions: {Path(args.out) / 'predictions.json'}")
    return 0


PREDICT_COMMAND = Command(
    "predict",
    _run,
    help="run a saved model's heads on images: pictures plus JSON / PNG masks / depth arrays",
    configure=_configure,
)

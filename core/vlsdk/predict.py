"""``vlsdk predict``: run a saved model on image files; pictures for people, JSON/PNG/NPY for pipelines.

For every input and every head: detection boxes drawn on the image and listed in JSON,
segmentation label maps (PNG, the label value in each pixel) and an overlay, depth as a colour
map and a ``.npy`` array. ``predictions.json`` indexes it all. Plugins add file types and head
writers through :mod:`vlsdk.predict_io` (NIfTI volumes in, NIfTI masks out; LiDAR sweeps in, 3D
boxes over the BEV picture out).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.plugins.commands import Command
from vlsdk.predict_io import IMAGE_KIND

if TYPE_CHECKING:
    import torch

    from vlsdk.predict_io import HeadPrediction, PredictInput

__all__ = ["predict_files", "read_input", "writer_for", "overlay_labels", "PREDICT_COMMAND"]


def predict_files(model_dir: str | Path, inputs: list[str | Path], out: str | Path, *, heads: list[str] | None = None,
                  score_threshold: float = 0.3, device: str = "cpu") -> dict[str, Any]:
    """Predict every input with every head (or ``heads``); returns what ``predictions.json`` holds.

    Each file is read by the first plugin :class:`~vlsdk.predict_io.InputReader` that takes it
    (NIfTI volumes, LiDAR sweeps, ...) or else as an image; each head's predictions are written
    by the first plugin :class:`~vlsdk.predict_io.OutputWriter` for its task and the input's kind,
    or else by the core's writers (detection, segmentation, depth on images).

    Raises:
        FileNotFoundError: a missing input or model directory.
        ValueError: a head not in the model, a file no reader takes, or a model directory
            written by a vlsdk format this version cannot read (naming that version).
    """
    import torch

    from vlsdk.models.model import VLModel
    from vlsdk.predict_io import HeadPrediction

    model_dir = Path(model_dir)
    model = VLModel.from_pretrained(model_dir, map_location=device).eval()
    names = list(model.heads) if heads is None else heads
    unknown = [h for h in names if h not in model.heads]
    if unknown or not names:
        raise ValueError(f"{model_dir}: heads {unknown or names} not in the model; it has {sorted(model.heads)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {"score_threshold": score_threshold, "device": device}
    index: dict[str, Any] = {"model": str(model_dir), "inputs": []}
    for path in map(Path, inputs):
        item = read_input(path, model, model_dir)
        item.images = item.images.to(device)
        cache: dict[str, Any] = {}

        def run(item=item, cache=cache) -> Any:
            if "output" not in cache:
                with torch.no_grad():
                    cache["output"] = model(item.images, heads=names)
            return cache["output"]

        entry: dict[str, Any] = {"input": str(path), "reader": item.kind, "size": list(item.images.shape[-2:])}
        for name in names:
            task = model.head_specs[name].task
            prediction = HeadPrediction(name, task, model, item, out, f"{_stem(path)}.{name}", options, run)
            entry[name] = writer_for(task, item.kind)(prediction)
        index["inputs"].append(entry)
    (out / "predictions.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def read_input(path: Path, model: Any, model_dir: Path) -> PredictInput:
    """Read ``path`` with the first registered reader that takes it, else as an image."""
    from vlsdk.inspect.routing import IMAGE_SUFFIXES, load_image
    from vlsdk.plugins import get_registry
    from vlsdk.predict_io import PredictInput

    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}" if path.suffix.lower() in IMAGE_SUFFIXES
                                else f"no input file at {path}")
    readers = get_registry("input_readers")
    for entry in readers.entries():
        if entry.obj.matches(path, model_dir):
            item = entry.obj.read(path, model, model_dir)
            item.kind = entry.name
            return item
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        plugin = ", ".join(f"{e.name} ({' '.join(e.obj.suffixes)})" for e in readers.entries()) or "none installed"
        raise ValueError(f"{path}: no reader for this file type; images: {' '.join(IMAGE_SUFFIXES)}; plugin "
                         f"readers: {plugin}")
    return PredictInput(path, load_image(path, model.config.in_chans))


def writer_for(task: str, kind: str) -> Callable[[HeadPrediction], dict[str, Any]]:
    """The ``write`` of the first registered writer for ``task`` on ``kind`` inputs, else the core's."""
    from vlsdk.plugins import get_registry

    for entry in get_registry("output_writers").entries():
        if entry.obj.handles(task, kind):
            return entry.obj.write
    if kind == IMAGE_KIND and task in _CORE_WRITERS:
        return _CORE_WRITERS[task]
    return lambda p: {"task": task, "note": f"no file writer for {task} heads on {kind} inputs; use the Python API"}


def _stem(path: Path) -> str:
    name = path.name
    for double in (".nii.gz", ".pcd.bin"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return path.stem


def _write_detection(p: HeadPrediction) -> dict[str, Any]:
    det = p.head.decode(p.output(), score_threshold=p.options["score_threshold"])[0]
    return {"task": p.task, "boxes": det.boxes.tolist(), "scores": det.scores.tolist(), "labels": det.labels.tolist(),
            "picture": _draw_boxes(p.input.images[0], det, p.out_dir / f"{p.stem}.png")}


def _write_segmentation(p: HeadPrediction) -> dict[str, Any]:
    import torch

    labels = p.head.decode(p.output()).labels[0]
    return {"task": p.task, "labels": _save_labels(labels, p.out_dir / f"{p.stem}.labels.png"),
            "picture": overlay_labels(p.input.images[0], labels, p.out_dir / f"{p.stem}.png"),
            "pixels_per_label": torch.bincount(labels.flatten()).tolist()}


def _write_depth(p: HeadPrediction) -> dict[str, Any]:
    import numpy as np

    depth = p.head.decode(p.output())[0].float().cpu()
    np.save(p.out_dir / f"{p.stem}.npy", depth.numpy())
    return {"task": p.task, "array": str(p.out_dir / f"{p.stem}.npy"), "min": float(depth.min()),
            "max": float(depth.max()), "picture": _colour(depth, p.out_dir / f"{p.stem}.png")}


#: The core's writers for image inputs, by head task.
_CORE_WRITERS: dict[str, Callable[[HeadPrediction], dict[str, Any]]] = {
    "detection": _write_detection, "segmentation": _write_segmentation, "depth": _write_depth,
}


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


def overlay_labels(image: torch.Tensor, labels: torch.Tensor, path: Path) -> str:
    """Draw a label map (0 = background, transparent) over a ``(C, H, W)`` image; returns the PNG path."""
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
    parser.add_argument("inputs", nargs="+", help="PNG/JPEG/.npy images, or files a plugin reads (.nii.gz, .pcd.bin)")
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

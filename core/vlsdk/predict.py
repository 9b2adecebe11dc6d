"""``vlsdk predict``: run a saved model on image files; pictures for people, JSON/PNG/NPY for pipelines.

For every input and every head: detection boxes drawn on the image and listed in JSON,
segmentation label maps (PNG, the label value in each pixel) and an overlay, depth as a colour
map and a ``.npy`` array. ``predictions.json`` indexes it all. Plugins add file types and head
writers through :mod:`vlsdk.predict_io` (NIfTI volumes in, NIfTI masks out; LiDAR sweeps in, 3D
boxes over the BEV picture out).

The saved model's metadata (``read_config(dir)["metadata"]``) drives the reading: class names
replace integer labels in ``predictions.json`` and in the pictures; an image with fewer channels
than the model expects is an error naming the missing channels by meaning (``--repeat-channels``
copies a one-channel image into all of them instead); values are scaled as recorded
(:data:`~vlsdk.models.metadata.SCALINGS`); images are resized to the recorded training size
(``--image-size``) and the predictions mapped back to the file's pixels; NaN or inf in an input
is an error naming the file and how many values.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.plugins.commands import Command
from vlsdk.plugins.errors import require_extra
from vlsdk.predict_io import IMAGE_KIND, check_finite, fit_channels, repeating_channels

if TYPE_CHECKING:
    import torch

    from vlsdk.predict_io import HeadPrediction, PredictInput

__all__ = ["predict_files", "read_input", "read_image", "write_coco_results", "writer_for", "overlay_labels",
           "PREDICT_COMMAND"]

#: ``image_size`` value of :func:`predict_files`: the size recorded in the model's metadata.
MODEL_SIZE = "model"


def predict_files(model_dir: str | Path, inputs: list[str | Path], out: str | Path, *, heads: list[str] | None = None,
                  score_threshold: float = 0.3, device: str = "cpu", repeat_channels: bool = False,
                  image_size: tuple[int, int] | str | None = MODEL_SIZE) -> dict[str, Any]:
    """Predict every input with every head (or ``heads``); returns what ``predictions.json`` holds.

    Each file is read by the first plugin :class:`~vlsdk.predict_io.InputReader` that takes it
    (NIfTI volumes, LiDAR sweeps, ...) or else as an image; each head's predictions are written
    by the first plugin :class:`~vlsdk.predict_io.OutputWriter` for its task and the input's kind,
    or else by the core's writers (detection, segmentation, depth on images).

    Args:
        model_dir: a ``save_pretrained`` folder.
        inputs: the files.
        out: the output folder.
        heads: heads to run (default all).
        score_threshold: detection score threshold.
        device: torch device.
        repeat_channels: copy a one-channel input into every channel the model expects (without
            it, fewer channels than the model's is an error naming the missing ones).
        image_size: ``"model"``: resize images to ``metadata.input.image_size`` (as they are when
            it is not recorded); ``None``: as they are; ``(height, width)``: to that size.
            Predictions are written in the file's own pixel coordinates.

    Raises:
        FileNotFoundError: a missing input or model directory.
        ValueError: a head not in the model, a file no reader takes, an input with other
            channels than the model expects (naming them) or with NaN/inf values (counted), or
            a model directory written by a vlsdk format this version cannot read (naming that version).
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
    size = _target_size(image_size, model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {"score_threshold": score_threshold, "device": device}
    index: dict[str, Any] = {"model": str(model_dir), "inputs": []}
    for path in map(Path, inputs):
        with repeating_channels(repeat_channels):
            item = read_input(path, model, model_dir)
        check_finite(item.images, path, f"values of the model input ({item.kind} reader)")
        item.images = item.images.to(device)
        if item.kind == IMAGE_KIND and size is not None and tuple(item.images.shape[-2:]) != size:
            item.meta["original"] = item.images
            item.images = torch.nn.functional.interpolate(item.images, size=size, mode="bilinear",
                                                          align_corners=False, antialias=True)
        cache: dict[str, Any] = {}

        def run(item=item, cache=cache) -> Any:
            if "output" not in cache:
                with torch.no_grad():
                    cache["output"] = model(item.images, heads=names)
            return cache["output"]

        entry: dict[str, Any] = {"input": str(path), "reader": item.kind,
                                 "size": list(item.meta.get("original", item.images).shape[-2:])}
        if "original" in item.meta:
            entry["model_size"] = list(item.images.shape[-2:])
        for name in names:
            task = model.head_specs[name].task
            prediction = HeadPrediction(name, task, model, item, out, f"{_stem(path)}.{name}", options, run)
            entry[name] = writer_for(task, item.kind)(prediction)
        index["inputs"].append(entry)
    (out / "predictions.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def _target_size(image_size: tuple[int, int] | str | None, model: Any) -> tuple[int, int] | None:
    """The ``(height, width)`` images are fed at, or ``None`` for each file's own size."""
    if image_size == MODEL_SIZE:
        spec = model.metadata.input
        return None if spec is None or spec.image_size is None else tuple(spec.image_size)
    if image_size is None:
        return None
    if isinstance(image_size, str) or len(image_size) != 2 or min(int(v) for v in image_size) < 1:
        raise ValueError(f"image_size must be 'model', None or (height, width) with positive ints, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _peek(path: Path) -> tuple[int, float]:
    """The channels an image file holds (before any conversion) and the divisor ``load_image`` applies."""
    import numpy as np

    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path}: not a readable .npy array ({err})") from None
        shape = arr.shape
        channels = 1 if len(shape) == 2 else (shape[0] if shape[0] <= 4 < shape[-1] else shape[-1]) if len(
            shape) == 3 else 0
        dtype = arr.dtype
    else:
        require_extra("plot", "PIL", requester=f"reading {path}", import_now=True)
        from PIL import Image

        try:
            with Image.open(path) as im:
                mode = im.mode if im.mode in ("L", "RGB", "RGBA", "I;16", "I", "F") else "RGB"
        except OSError as err:  # PIL's UnidentifiedImageError too
            raise ValueError(f"{path}: not a readable image ({err})") from None
        channels = Image.getmodebands(mode)
        dtype = np.dtype({"L": "uint8", "RGB": "uint8", "RGBA": "uint8", "I;16": "uint16"}.get(mode, "float32"))
    return channels, 255.0 if dtype == np.uint8 else 65535.0 if dtype == np.uint16 else 1.0


def read_image(path: Path, channels: tuple[str, ...], *, scaling: str = "divide_255",
               repeat: bool | None = None) -> torch.Tensor:
    """A PNG/JPEG/``.npy`` image as the ``(1, C, H, W)`` input of a model expecting ``channels``.

    An alpha channel is dropped and an RGB image averaged to grey for a one-channel model (as
    :func:`vlsdk.inspect.routing.load_image` does); fewer channels than ``channels`` is an error
    naming the missing ones (:func:`~vlsdk.predict_io.fit_channels`).

    Args:
        path: the file.
        channels: the meaning of each channel the model expects.
        scaling: one of :data:`~vlsdk.models.metadata.SCALINGS`.
        repeat: copy a one-channel image into every channel (``None``: the running
            ``--repeat-channels``).

    Raises:
        ValueError: other channels than expected (named), NaN or inf values (counted), an
            unknown scaling.
    """
    import torch

    from vlsdk.inspect.routing import load_image
    from vlsdk.models.metadata import SCALINGS

    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    have, divisor = _peek(path)
    want = len(channels)
    if have in (2, 4) and have != want:
        have -= 1  # load_image drops an alpha channel the model does not take
    img = load_image(path, in_chans=max(have, 1))[0]
    img = img.mean(0, keepdim=True) if (have, want) == (3, 1) else fit_channels(img, path, channels, repeat=repeat)
    check_finite(img, path, "pixel values")
    if scaling == "none":
        img = img * divisor
    elif scaling == "zscore_per_image":
        mean, std = img.mean((1, 2), keepdim=True), img.std((1, 2), keepdim=True)
        img = (img - mean) / std.clamp_min(torch.finfo(img.dtype).eps)
    return img[None]


def read_input(path: Path, model: Any, model_dir: Path) -> PredictInput:
    """Read ``path`` with the first registered reader that takes it, else as an image (:func:`read_image`)."""
    from vlsdk.inspect.routing import IMAGE_SUFFIXES
    from vlsdk.plugins import get_registry
    from vlsdk.predict_io import PredictInput

    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"no image file at {path}" if path.suffix.lower() in IMAGE_SUFFIXES
                                else f"no input file at {path}")
    readers = get_registry("input_readers")
    for entry in readers.entries():
        if entry.obj.matches(path, model_dir):
            item = entry.obj.read(path, model, model_dir)
            item.kind = entry.name
            return item
    if path.is_dir():
        folders = ", ".join(e.name for e in readers.entries() if e.obj.directories) or "none installed"
        raise ValueError(f"{path}: a folder that no reader takes (readers of folders, e.g. DICOM series: {folders})")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        plugin = ", ".join(f"{e.name} ({' '.join(e.obj.suffixes)})" for e in readers.entries()) or "none installed"
        raise ValueError(f"{path}: no reader for this file type; images: {' '.join(IMAGE_SUFFIXES)}; plugin "
                         f"readers: {plugin}")
    spec = model.metadata.input
    return PredictInput(path, read_image(path, model.metadata.channels(model.config.in_chans),
                                         scaling=spec.scaling if spec is not None else "divide_255"))


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
    if path.is_dir():
        return name
    for double in (".nii.gz", ".pcd.bin"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return path.stem


def _original(p: HeadPrediction) -> tuple[torch.Tensor, tuple[int, int]]:
    """The image as read from the file (before any resize) and its ``(height, width)``."""
    image = p.input.meta.get("original", p.input.images)[0]
    return image, (int(image.shape[-2]), int(image.shape[-1]))


def _write_detection(p: HeadPrediction) -> dict[str, Any]:
    det = p.head.decode(p.output(), score_threshold=p.options["score_threshold"])[0]
    image, (h, w) = _original(p)
    sy, sx = h / p.input.images.shape[-2], w / p.input.images.shape[-1]
    boxes = det.boxes * det.boxes.new_tensor([sx, sy, sx, sy])
    ids = det.labels.tolist()
    labels = p.label_names(ids)
    return {"task": p.task, "boxes": boxes.tolist(), "scores": det.scores.tolist(), "labels": labels,
            "label_ids": ids, "picture": _draw_boxes(image, boxes, det.scores, labels, p.out_dir / f"{p.stem}.png")}


def _write_segmentation(p: HeadPrediction) -> dict[str, Any]:
    import torch

    image, size = _original(p)
    labels = p.head.decode(p.output()).labels[0]
    if tuple(labels.shape) != size:
        labels = torch.nn.functional.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
    names = p.model.metadata.class_names.get(p.name)
    counts = torch.bincount(labels.flatten(), minlength=len(names or ())).tolist()
    entry = {"task": p.task, "labels": _save_labels(labels, p.out_dir / f"{p.stem}.labels.png"),
             "picture": overlay_labels(image, labels, p.out_dir / f"{p.stem}.png", names=names),
             "pixels_per_label": counts}
    if names is not None:
        entry["pixels_per_class"] = dict(zip(p.label_names(range(len(counts))), counts, strict=True))
    return entry


def _write_depth(p: HeadPrediction) -> dict[str, Any]:
    import numpy as np
    import torch

    _, size = _original(p)
    depth = p.head.decode(p.output())[0].float()
    if tuple(depth.shape[-2:]) != size:
        depth = torch.nn.functional.interpolate(depth[None, None], size=size, mode="bilinear",
                                                align_corners=False)[0, 0]
    depth = depth.cpu()
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
    require_extra("plot", "matplotlib", requester="vlsdk predict's pictures", import_now=True)
    from matplotlib.figure import Figure

    h, w = image.shape[-2:]
    fig = Figure(figsize=(max(3.0, w / 100), max(3.0, h / 100)), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(_grey(image), cmap="gray")
    ax.set_axis_off()
    return fig, ax


def _draw_boxes(image: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, labels: list[Any], path: Path) -> str:
    fig, ax = _figure(image)  # first: names the extra when matplotlib is missing
    from matplotlib.patches import Rectangle

    rows = zip(boxes.tolist(), scores.tolist(), labels, strict=True)
    for (x1, y1, x2, y2), score, label in rows:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=1.2))
        ax.text(x1, y1, f"{label}:{score:.2f}", color="yellow", fontsize=6, va="bottom")
    fig.savefig(path)
    return str(path)


def overlay_labels(image: torch.Tensor, labels: torch.Tensor, path: Path, names: Sequence[str] | None = None) -> str:
    """Draw a label map (0 = background, transparent) over a ``(C, H, W)`` image; returns the PNG path.

    Args:
        image: ``(C, H, W)``.
        labels: ``(H, W)`` label values.
        path: the PNG to write.
        names: the class name of each label value; the labels present get a legend.
    """
    import numpy as np

    fig, ax = _figure(image)  # first: names the extra when matplotlib is missing
    from matplotlib.patches import Patch

    lab = labels.cpu().numpy()
    ax.imshow(np.ma.masked_equal(lab, 0), cmap="tab10", alpha=0.45, vmin=0, vmax=9, interpolation="nearest")
    present = [int(v) for v in np.unique(lab) if 0 < v < len(names or ())]
    if present:
        cmap = ax.images[-1].cmap
        ax.legend(handles=[Patch(color=cmap(v / 9), label=names[v]) for v in present], loc="upper right", fontsize=6)
    fig.savefig(path)
    return str(path)


def _save_labels(labels: torch.Tensor, path: Path) -> str:
    require_extra("plot", "PIL", requester="vlsdk predict's label PNGs", import_now=True)
    from PIL import Image

    Image.fromarray(labels.cpu().numpy().astype("uint8")).save(path)
    return str(path)


def _colour(depth: torch.Tensor, path: Path) -> str:
    require_extra("plot", "matplotlib", requester="vlsdk predict's depth pictures", import_now=True)
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
    parser.add_argument("--repeat-channels", action="store_true",
                        help="copy a one-channel image into every channel the model expects (default: an error "
                             "naming the missing channels)")
    parser.add_argument("--format", choices=["json", "coco"], default="json",
                        help="coco: also write the detections as COCO results (coco_results.json: image_id, "
                             "category_id, bbox x,y,w,h, score) with coco_images.json naming the image ids")
    parser.add_argument("--image-size", type=_parse_size, default=MODEL_SIZE, metavar="HxW|native|model",
                        help="size images are fed at: 'model' (default) the trained size the model records, "
                             "'native' each file's own size, or e.g. 640x640; predictions are in the file's pixels")


def write_coco_results(index: dict[str, Any], out: Path) -> Path:
    """Write the detection heads' boxes of a ``predictions.json`` index as COCO results.

    ``coco_results.json`` holds ``{image_id, category_id, bbox: [x, y, w, h], score}`` in each file's
    own pixels (``category_id`` = label id + 1); ``coco_images.json`` is a COCO file with the
    ``images`` (id, file_name, width, height) and ``categories`` those ids refer to, so
    ``COCO("coco_images.json").loadRes("coco_results.json")`` reads them.

    Args:
        index: what :func:`predict_files` returned.
        out: the output folder.

    Returns:
        The path of ``coco_results.json``.
    """
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    categories: dict[int, str] = {}
    for image_id, entry in enumerate(index["inputs"], 1):
        height, width = entry.get("size", (0, 0))
        images.append({"id": image_id, "file_name": str(entry["input"]), "width": width, "height": height})
        for found in (v for v in entry.values() if isinstance(v, dict) and v.get("task") == "detection"):
            for box, score, label, name in zip(found["boxes"], found["scores"], found["label_ids"], found["labels"],
                                               strict=True):
                x0, y0, x1, y1 = box
                categories.setdefault(int(label) + 1, str(name))
                results.append({"image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "coco_images.json").write_text(json.dumps({"images": images, "annotations": [], "categories": [
        {"id": k, "name": v} for k, v in sorted(categories.items())]}))
    path = out / "coco_results.json"
    path.write_text(json.dumps(results))
    return path


def _parse_size(text: str) -> tuple[int, int] | str | None:
    if text in (MODEL_SIZE, "native"):
        return None if text == "native" else text
    h, x, w = text.lower().partition("x")
    if not (x and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 640x640), 'native' or 'model', got {text!r}")
    return int(h), int(w)


def _run(args: argparse.Namespace) -> int:
    from collections import Counter

    index = predict_files(args.model, args.inputs, args.out, heads=args.heads, score_threshold=args.score_threshold,
                          device=args.device, repeat_channels=args.repeat_channels, image_size=args.image_size)
    if args.format == "coco":
        print(f"COCO results: {write_coco_results(index, Path(args.out))}")
    for entry in index["inputs"]:
        parts = []
        for name, result in entry.items():
            if isinstance(result, dict) and "task" in result:
                n = len(result["boxes"]) if "boxes" in result else None
                kinds = ", ".join(f"{k} {v}" for k, v in Counter(
                    label for label in result.get("labels", []) if isinstance(label, str)).most_common())
                parts.append(f"{name}: {n} boxes" + (f" ({kinds})" if kinds else "") if n is not None
                             else f"{name}: {result.get('picture', '')}")
        print(f"{entry['input']}: " + "; ".join(parts))
    print(f"predictions: {Path(args.out) / 'predictions.json'}")
    return 0


PREDICT_COMMAND = Command(
    "predict",
    _run,
    help="run a saved model's heads on images: pictures plus JSON / PNG masks / depth arrays",
    configure=_configure,
)

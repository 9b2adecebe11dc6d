"""Pictures of predictions for people: boxes and masks drawn on the inputs with Pillow.

Every picture has a legend (ground truth vs prediction) and each tile a caption (its file); labels
sit on a filled background inside the tile so that they neither clip nor vanish on bright images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["draw_boxes_grid", "draw_masks_grid", "to_rgb"]

_TRUTH, _PRED, _TEXT, _BAR = (40, 200, 40), (230, 40, 40), (255, 255, 255), (25, 25, 25)
_MIN_SIDE = 384  # tiles are scaled up to at least this side, so labels stay readable


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W[, C])`` uint8 -> ``(H, W, 3)`` uint8 (first channel as grey unless there are three)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != 3:
        image = np.repeat(image[..., :1], 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def draw_boxes_grid(tiles: Sequence[tuple[dict[str, Any], Any]], class_names: Sequence[str], path: str | Path,
                    *, columns: int = 2) -> Path:
    """Write a PNG grid: each sample with its ground-truth boxes (green) and detections (red, class and score).

    Args:
        tiles: ``(sample, detections)`` pairs; a sample has ``image`` and ``boxes``/``labels``, the
            detections ``boxes``, ``scores``, ``labels`` (tensors or arrays) in the sample's pixels.
        class_names: names of the labels.
        path: the PNG to write.
        columns: tiles per row.
    """
    from PIL import ImageDraw

    images = []
    for sample, det in tiles:
        image, scale = _tile(sample["image"])
        draw = ImageDraw.Draw(image)
        for box in np.asarray(sample.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4) * scale:
            draw.rectangle(box.tolist(), outline=_TRUTH, width=2)
        boxes, scores, labels = (_numpy(getattr(det, k)) for k in ("boxes", "scores", "labels"))
        placed: list[tuple[float, float, float, float]] = []
        boxes = boxes.reshape(-1, 4) * scale
        for box in boxes:
            draw.rectangle(box.tolist(), outline=_PRED, width=2)
        for box, score, label in zip(boxes, scores, labels, strict=True):  # tags last: no outline crosses one
            _label(draw, box, f"{class_names[int(label)]} {score:.2f}", image.size, placed)
        images.append(_caption(image, Path(str(sample.get("path", ""))).name or "sample"))
    return _grid(images, path, columns, [("ground truth", _TRUTH), ("prediction", _PRED)])


def draw_masks_grid(tiles: Sequence[tuple[dict[str, Any], np.ndarray]], class_names: Sequence[str],
                    path: str | Path, *, columns: int = 2) -> Path:
    """Write a PNG grid: each sample with its true mask outlined (green) and the predicted mask filled (red).

    Args:
        tiles: ``(sample, predicted_labels)`` pairs; a sample has ``image`` and ``mask`` (label maps).
        class_names: names of the labels (0 is background).
        path: the PNG to write.
        columns: tiles per row.
    """
    from PIL import Image

    images = []
    for sample, pred in tiles:
        rgb = to_rgb(sample["image"]).astype(np.float32)
        pred = np.asarray(pred) > 0
        rgb[pred] = 0.55 * rgb[pred] + 0.45 * np.array(_PRED, np.float32)
        truth = np.asarray(sample.get("mask", np.zeros(pred.shape))) > 0
        edge = truth & ~(np.roll(truth, 1, 0) & np.roll(truth, -1, 0) & np.roll(truth, 1, 1) & np.roll(truth, -1, 1))
        rgb[edge] = _TRUTH
        image, _ = _tile(Image.fromarray(rgb.astype(np.uint8)))
        images.append(_caption(image, Path(str(sample.get("path", ""))).name or "sample"))
    legend = [("ground truth (outline)", _TRUTH), (f"prediction ({', '.join(class_names[1:]) or 'foreground'})", _PRED)]
    return _grid(images, path, columns, legend)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _tile(image: Any) -> tuple[Any, float]:
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(to_rgb(image))
    scale = max(1.0, _MIN_SIDE / min(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    return image, scale


def _label(draw: Any, box: np.ndarray, text: str, size: tuple[int, int],
           placed: list[tuple[float, float, float, float]]) -> None:
    """Draw ``text`` on a filled tag by ``box``: above it, else below, else inside, where no other tag is."""
    left, top, right, bottom = draw.textbbox((0, 0), text)
    w, h = right - left + 4, bottom - top + 4
    x = min(max(0.0, float(box[0])), size[0] - w)
    spots = [box[1] - h, box[3], box[1]] + [box[3] + k * h for k in range(1, 6)]
    fits = [y for y in spots if 0 <= y <= size[1] - h]
    free = [y for y in fits if not any(x < r[2] and r[0] < x + w and y < r[3] and r[1] < y + h for r in placed)]
    y = float((free or fits or [0])[0])
    placed.append((x, y, x + w, y + h))
    draw.rectangle([x, y, x + w, y + h], fill=_PRED)
    draw.text((x + 2 - left, y + 2 - top), text, fill=_TEXT)


def _caption(image: Any, text: str) -> Any:
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (image.width, image.height + 18), _BAR)
    out.paste(image, (0, 0))
    ImageDraw.Draw(out).text((4, image.height + 3), text[:80], fill=_TEXT)
    return out


def _grid(images: list[Any], path: str | Path, columns: int, legend: list[tuple[str, tuple[int, int, int]]]) -> Path:
    from PIL import Image, ImageDraw

    if not images:
        raise ValueError("nothing to draw")
    w, h = max(i.width for i in images), max(i.height for i in images)
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * w, rows * h + 22), _BAR)
    for k, image in enumerate(images):
        sheet.paste(image, ((k % columns) * w, (k // columns) * h))
    draw, x = ImageDraw.Draw(sheet), 6
    for text, colour in legend:
        draw.rectangle([x, rows * h + 6, x + 12, rows * h + 16], fill=colour)
        draw.text((x + 16, rows * h + 5), text, fill=_TEXT)
        x += 30 + int(draw.textlength(text))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path

"""Small real datasets written by the tests: a COCO-format folder and an image + mask folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("scratch", "dent")


def write_coco(root: Path, n: int = 12, size: int = 96, seed: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:
    """``n`` RGB images with one or two bright rectangles each, and ``annotations.json`` naming them."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        pixels = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
        for k in range(1 + i % 2):
            w, h = (int(v) for v in rng.integers(12, 32, 2))
            x, y = (int(v) for v in rng.integers(0, size - 32, 2))
            label = (i + k) % len(classes)
            pixels[y:y + h, x:x + w] = (220, 60, 60) if label == 0 else (60, 60, 220)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        name = f"images/board_{i:03d}.png"
        Image.fromarray(pixels).save(root / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    return root


def write_mask_folder(root: Path, n: int = 10, size: int = 64, seed: int = 0) -> Path:
    """``images/`` (grey PNGs with a bright disc) and ``masks/`` (the disc as label 1)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = (int(v) for v in (*rng.integers(16, size - 16, 2), rng.integers(6, 14)))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = rng.integers(0, 50, (size, size), dtype=np.uint8)
        image[disc] = 200
        Image.fromarray(image).save(root / "images" / f"case_{i:02d}.png")
        Image.fromarray(disc.astype(np.uint8)).save(root / "masks" / f"case_{i:02d}.png")
    (root / "classes.txt").write_text("background\nlesion\n")
    return root


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "coco")


@pytest.fixture
def mask_dir(tmp_path: Path) -> Path:
    return write_mask_folder(tmp_path / "masks")

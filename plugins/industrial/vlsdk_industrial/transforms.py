"""Box-aware albumentations pipeline for PCB inspection (registered as ``industrial.default``).

Geometric transforms (flips, 90-degree rotations, a small affine) move the boxes with the image;
photometric ones (brightness/contrast, Gaussian noise, blur) touch the pixels only (the noise is
:class:`~vlsdk_industrial.noise.Int16GaussNoise`: the same noise as ``A.GaussNoise`` without its
float temporaries). A template
stacked as a second channel moves with the board, so template differencing still lines up.
After every transform boxes are clipped to the image, and a box that left the image (less than
``min_visibility`` of it still inside) is dropped and counted in :attr:`DetectionTransform.dropped`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["DetectionTransform", "build_transforms"]


class DetectionTransform:
    """``transform(sample) -> sample`` around an ``albumentations.Compose``.

    Args:
        compose: an ``albumentations.Compose`` with ``bbox_params`` in ``pascal_voc`` format and
            ``label_fields=["labels"]``, or ``None`` for the identity.

    Attributes:
        dropped: boxes dropped so far because a transform moved them out of the image (counted in
            the process that ran the transform).

    In a DataLoader worker the random state is reseeded from the worker's torch seed (which
    differs per worker and per epoch, and follows ``torch.manual_seed``): otherwise every worker
    would replay the same copy of the augmentation stream. OpenCV's own thread pool is switched
    off there too (``cv2.setNumThreads(0)``): the workers are the parallelism.
    """

    def __init__(self, compose: Any) -> None:
        self.compose = compose
        self.dropped = 0
        self._worker_seed: int | None = None

    def _reseed_in_worker(self) -> None:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        if info is not None and self._worker_seed is None:
            import cv2

            # one OpenCV thread per worker: N workers x all-core thread pools oversubscribe the CPU
            # (torch already runs one thread in a DataLoader worker)
            cv2.setNumThreads(0)
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            base = self.compose.seed if self.compose.seed is not None else 0
            self.compose.set_random_seed((base * 1_000_003 + info.seed) % 2**32)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Transform ``sample["image"]``, ``["boxes"]`` and ``["labels"]``; other keys are kept."""
        if self.compose is None:
            return dict(sample)
        self._reseed_in_worker()
        image = np.ascontiguousarray(sample["image"])
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(sample["labels"], np.int64).reshape(-1)
        out = self.compose(image=image, bboxes=boxes, labels=labels)
        new_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        self.dropped += len(boxes) - len(new_boxes)
        result = dict(sample)
        img = out["image"]
        result["image"] = img[..., None] if img.ndim == 2 else img
        result["boxes"] = new_boxes
        result["labels"] = np.asarray(out["labels"], np.int64).reshape(-1)
        return result

    def __repr__(self) -> str:
        return f"DetectionTransform({self.compose!r})"


def build_transforms(train: bool = True, *, size: int | None = None, flip: float = 0.5, rot90: float = 0.5,
                     affine: float = 0.3, photometric: float = 0.5, min_visibility: float = 0.3,
                     seed: int | None = None, int16_noise: bool = True) -> DetectionTransform:
    """The industrial augmentation pipeline.

    Args:
        train: ``True`` adds the augmentations; ``False`` only resizes (when ``size`` is set).
        size: resize boards to ``size x size`` (``None`` keeps their size).
        flip: probability of a horizontal and, independently, a vertical flip.
        rot90: probability of a random multiple-of-90-degree rotation.
        affine: probability of a small affine (scale 0.9-1.1, shift 5 %, rotation 5 degrees, black border).
        photometric: probability of each of brightness/contrast, Gaussian noise and blur.
        min_visibility: a box keeps at least this share of its area inside the image or is dropped.
        seed: seed of albumentations' random state (reproducible augmentation).
        int16_noise: Gaussian noise through :class:`~vlsdk_industrial.noise.Int16GaussNoise`
            (same noise, no float64 temporaries); ``False``: ``A.GaussNoise`` itself (for
            comparison, see ``benchmarks/data_loading.py``).

    Example:
        >>> t = build_transforms(size=320, seed=0)
        >>> s = t({"image": np.zeros((640, 640, 1), np.uint8), "boxes": np.array([[10, 10, 50, 40]]),
        ...        "labels": np.array([2])})
        >>> s["image"].shape, s["boxes"].shape
        ((320, 320, 1), (1, 4))
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI version check on import (see plugin.py)
    import albumentations as A
    import cv2

    for name, p in (("flip", flip), ("rot90", rot90), ("affine", affine), ("photometric", photometric),
                    ("min_visibility", min_visibility)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    if size is not None and (not isinstance(size, int) or size < 8):
        raise ValueError(f"size must be an int >= 8 or None, got {size!r}")
    if int16_noise:
        from vlsdk_industrial.noise import Int16GaussNoise as noise
    else:
        noise = A.GaussNoise
    ops: list[Any] = []
    if size is not None:
        ops.append(A.Resize(size, size, interpolation=cv2.INTER_AREA))
    if train:
        ops += [
            A.HorizontalFlip(p=flip),
            A.VerticalFlip(p=flip),
            A.RandomRotate90(p=rot90),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-5, 5), border_mode=cv2.BORDER_CONSTANT,
                     fill=0, p=affine),  # constant border: reflecting would duplicate defects and boxes
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=photometric),
            noise(std_range=(0.01, 0.05), p=photometric),
            A.GaussianBlur(blur_limit=(3, 5), p=photometric),
        ]
    if not ops:
        return DetectionTransform(None)
    compose = A.Compose(ops, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                                      min_visibility=min_visibility, clip=True,
                                                      filter_invalid_bboxes=True),
                        seed=seed)
    return DetectionTransform(compose)

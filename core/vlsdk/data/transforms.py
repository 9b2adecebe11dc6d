"""Small box- and mask-aware numpy transforms for generic detection and segmentation samples.

Each transform is a callable ``sample -> sample`` over the format of :mod:`vlsdk.data.samples`:
it changes ``"image"`` and, when present, ``"boxes"`` (scaled or flipped on the whole array) and
``"mask"`` (nearest neighbour, so class ids stay class ids); ``"size"`` keeps the size as read,
so predictions can be mapped back (see :mod:`vlsdk.data.coco_results`). No OpenCV.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Compose", "RandomFlip", "Resize"]

Sample = dict[str, Any]


class Compose:
    """Apply transforms in order.

    Args:
        transforms: callables ``sample -> sample``.

    Raises:
        ValueError: an entry is not callable.

    Example:
        >>> t = Compose([Resize(64), RandomFlip(0.5, seed=0)])
    """

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        bad = [t for t in transforms if not callable(t)]
        if bad:
            raise ValueError(f"Compose needs callables, got {bad!r}")
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize:
    """Resize to a fixed size: bilinear (antialiased) image, scaled boxes, nearest-neighbour mask.

    Args:
        size: ``(height, width)``, or one int for a square.

    Raises:
        ValueError: ``size`` is not one or two positive ints.

    Example:
        >>> s = Resize((32, 64))({"image": np.zeros((16, 16, 1), np.uint8),
        ...                       "boxes": np.array([[0, 0, 8, 8]], np.float32)})
        >>> s["image"].shape, s["boxes"].tolist()
        ((32, 64, 1), [[0.0, 0.0, 32.0, 16.0]])
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        self.size: tuple[int, int] = (int(hw[0]), int(hw[1]))

    def __call__(self, sample: Sample) -> Sample:
        import torch
        import torch.nn.functional as F

        image = sample["image"]
        h, w = image.shape[:2]
        th, tw = self.size
        out = dict(sample)
        if (h, w) != (th, tw):
            x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
            y = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
            out["image"] = y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
        if "boxes" in sample:
            scale = np.array([tw / w, th / h, tw / w, th / h], np.float32)
            out["boxes"] = np.asarray(sample["boxes"], np.float32).reshape(-1, 4) * scale
        if "mask" in sample:
            rows = np.minimum(((np.arange(th) + 0.5) * (h / th)).astype(np.int64), h - 1)
            cols = np.minimum(((np.arange(tw) + 0.5) * (w / tw)).astype(np.int64), w - 1)
            out["mask"] = np.asarray(sample["mask"])[rows[:, None], cols[None, :]]
        return out

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomFlip:
    """Flip horizontally with probability ``p`` (image, boxes and mask together).

    Args:
        p: flip probability in ``[0, 1]``.
        seed: seed of the transform's own generator (``None``: fresh entropy). DataLoader
            workers forked from one process share its state, so seed per worker for different flips.

    Raises:
        ValueError: ``p`` outside ``[0, 1]``.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p, self.seed = float(p), seed
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: Sample) -> Sample:
        if self.rng.random() >= self.p:
            return sample
        out = dict(sample)
        w = sample["image"].shape[1]
        out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
        if "boxes" in sample:
            b = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
            out["boxes"] = np.stack((w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]), axis=1)
        if "mask" in sample:
            out["mask"] = np.ascontiguousarray(np.asarray(sample["mask"])[:, ::-1])
        return out

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p}, seed={self.seed})"

"""Batches that stay ``uint8`` until they reach the training device (a quarter of the float bytes).

:func:`collate_uint8` stacks the samples' ``(H, W, C)`` ``uint8`` images without converting them,
so DataLoader workers hand over 4x fewer bytes and no pixels are pickled twice;
:func:`images_to_float` turns the batch into the model's float ``(B, C, H, W)`` input in ``[0, 1]``
on the device. Both are exact: the float values equal those of :func:`vlsdk.data.samples.collate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["collate_uint8", "images_to_float"]


def collate_uint8(samples: Sequence[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """Batch detection samples, leaving the pixels ``uint8`` (convert with :func:`images_to_float`).

    Args:
        samples: samples of one image size and channel count (``image``, ``boxes``, ``labels``).

    Returns:
        ``(images uint8 (B, H, W, C), targets [{"boxes", "labels"}], samples without "image")``.

    Raises:
        ValueError: no samples, images of different shapes, or images that are not ``uint8``.

    Example:
        >>> s = {"image": np.zeros((64, 64, 2), np.uint8), "boxes": np.zeros((0, 4)), "labels": np.zeros(0)}
        >>> images, targets, meta = collate_uint8([s, s])
        >>> tuple(images.shape), images.dtype, "image" in meta[0]
        ((2, 64, 64, 2), torch.uint8, False)
    """
    import torch

    if not samples:
        raise ValueError("collate_uint8 needs at least one sample")
    shapes = {s["image"].shape for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate_uint8 needs images of one shape (resize them in the transform), "
                         f"got {sorted(shapes)}")
    dtypes = {str(np.asarray(s["image"]).dtype) for s in samples}
    if dtypes != {"uint8"}:
        raise ValueError(f"collate_uint8 needs uint8 images, got {sorted(dtypes)}; use samples.collate for others")
    images = torch.from_numpy(np.stack([s["image"] for s in samples]))
    targets = [{"boxes": torch.as_tensor(np.asarray(s["boxes"], np.float32).reshape(-1, 4)),
                "labels": torch.as_tensor(np.asarray(s["labels"], np.int64).reshape(-1))} for s in samples]
    return images, targets, [{k: v for k, v in s.items() if k != "image"} for s in samples]


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """The model's input from a batch: ``uint8 (B, H, W, C)`` -> float ``(B, C, H, W)`` in ``[0, 1]``.

    A float batch (from :func:`vlsdk.data.samples.collate`) is returned as it is.

    Args:
        images: a :func:`collate_uint8` or :func:`~vlsdk.data.samples.collate` batch, on any device.
    """
    import torch

    if images.dtype != torch.uint8:
        return images
    if images.ndim != 4:
        raise ValueError(f"expected a uint8 (B, H, W, C) batch, got shape {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div_(255)

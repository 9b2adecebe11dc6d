"""Sliding-window inference of a lesion segmenter over full slices and volumes.

A :class:`vlsdk.VLModel` is a 2D network; a volume ``(C, X, Y, Z)`` is segmented slice by slice
along ``axis``: all its slices form one batch (a reshape, no Python loop over slices) that MONAI's
``sliding_window_inference`` tiles with ``roi_size`` windows, Gaussian-blended. Optional flip
test-time augmentation (:func:`flip_tta`) averages the probabilities of each window and its
mirror images in the slice plane.

Example:
    >>> probs = predict_volume(model, volume, head="lesion", roi_size=(128, 128))  # doctest: +SKIP
    >>> labels = probs_to_labels(probs)                                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["TTA_MODES", "flip_tta", "model_predictor", "predict_slices", "predict_volume", "probs_to_labels"]

#: Test-time augmentation choices: ``"none"``, ``"flip"`` (mean over the 4 flips of the slice plane).
TTA_MODES = ("none", "flip")


def model_predictor(model: torch.nn.Module, head: str, tta: str = "none") -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(images (B, C, H, W)) -> probabilities (B, K, H, W)`` for a segmentation head of a VLModel.

    A binary head (one logit) gives ``K = 1`` foreground probability; a multi-class head softmax.

    Args:
        model: a ``VLModel`` with the segmentation head ``head``.
        head: the head's name.
        tta: ``"none"`` or ``"flip"`` (:func:`flip_tta`: 4 forward passes per window).
    """
    if head not in getattr(model, "heads", {}):
        raise ValueError(f"model has no head {head!r}; heads: {sorted(getattr(model, 'heads', {}))}")
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")

    def predict(x: torch.Tensor) -> torch.Tensor:
        logits = model(x, heads=[head])[head].logits.float()
        return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(1)

    return flip_tta(predict) if tta == "flip" else predict


def flip_tta(predictor: Callable[[torch.Tensor], torch.Tensor],
             dims: Sequence[Sequence[int]] = ((), (-1,), (-2,), (-2, -1))) -> Callable[[torch.Tensor], torch.Tensor]:
    """Flip test-time augmentation: the mean of ``flip(predictor(flip(x)))`` over ``dims``.

    The flips are exact inverses of themselves, so no resampling is involved; the batch of all
    flipped copies goes through ``predictor`` in one call. (MONAI's ``TestTimeAugmentation``
    targets random, invertible dictionary transforms; for fixed flips this is the whole job.)

    Args:
        predictor: ``f((n, C, h, w)) -> (n, K, h, w)`` probabilities.
        dims: the flips (``()`` = identity); default: identity, left-right, up-down, both.
    """
    flips = [tuple(int(d) for d in f) for f in dims]
    if not flips:
        raise ValueError("flip_tta needs at least one flip (() is the identity)")

    def predict(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        batch = torch.cat([x.flip(f) if f else x for f in flips])
        out = predictor(batch)
        return torch.stack([out[i * n:(i + 1) * n].flip(f) if f else out[i * n:(i + 1) * n]
                            for i, f in enumerate(flips)]).mean(0)

    return predict


def _autocast(device: torch.device, amp: str | None) -> Any:
    if amp in (None, "none", "fp32"):
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    return torch.autocast(device.type, dtype=dtypes[amp])


@torch.no_grad()
def predict_slices(predictor: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   roi_size: Sequence[int] | int = 128, *, sw_batch_size: int = 16, overlap: float = 0.25,
                   mode: str = "gaussian", device: str | torch.device | None = None, amp: str | None = None
                   ) -> torch.Tensor:
    """Probabilities for ``(B, C, H, W)`` images of any size via ``sliding_window_inference``.

    Args:
        predictor: ``f((n, C, h, w)) -> (n, K, h, w)`` probabilities (see :func:`model_predictor`).
        images: the images.
        roi_size: window size (an int for both axes); windows larger than the image are padded.
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction in [0, 1).
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        device: where to run the predictor (default: the images' device); the result stays there.
        amp: ``None``, ``"bf16"`` or ``"fp16"`` autocast.
    """
    from monai.inferers import sliding_window_inference

    if images.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    size = (roi_size, roi_size) if isinstance(roi_size, int) else tuple(int(s) for s in roi_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"roi_size must be 2 positive ints, got {roi_size!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    dev = torch.device(device) if device is not None else images.device
    with _autocast(dev, amp):
        out = sliding_window_inference(images, size, int(sw_batch_size), predictor, overlap=overlap, mode=mode,
                                       sw_device=dev, device=dev)
    return torch.as_tensor(out).float()


@torch.no_grad()
def predict_volume(model: torch.nn.Module, volume: torch.Tensor, *, head: str = "lesion",
                   roi_size: Sequence[int] | int = 128, axis: int = 2, batch_slices: int = 64,
                   tta: str = "none", **options: Any) -> torch.Tensor:
    """Segment a ``(C, X, Y, Z)`` volume slice by slice along ``axis``; returns ``(K, X, Y, Z)``.

    Args:
        model: a ``VLModel`` with segmentation head ``head``.
        volume: channel-first volume (tensor or MONAI ``MetaTensor``).
        head: the head's name.
        roi_size: sliding-window size in the slice plane.
        axis: slice axis of the spatial dims (2 = Z).
        batch_slices: slices per sliding-window call (bounds memory).
        tta: ``"none"`` or ``"flip"`` (see :func:`flip_tta`).
        **options: :func:`predict_slices` options (``overlap``, ``sw_batch_size``, ``device``, ``amp``).
    """
    if volume.ndim != 4:
        raise ValueError(f"expected a (C, X, Y, Z) volume, got shape {tuple(volume.shape)}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    vol = torch.as_tensor(volume).float()
    slices = vol.movedim(axis + 1, 0)  # (S, C, a, b)
    predictor = model_predictor(model, head, tta)
    was_training = model.training
    model.eval()
    try:
        probs = torch.cat([predict_slices(predictor, slices[i:i + batch_slices], roi_size, **options).cpu()
                           for i in range(0, slices.shape[0], int(batch_slices))])
    finally:
        model.train(was_training)
    return probs.movedim(0, axis + 1)  # (K, ...) with the slice axis back in place


def probs_to_labels(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Label map from ``(K, *spatial)`` probabilities: threshold for ``K = 1``, else argmax.

    Args:
        probs: probabilities with the class axis first.
        threshold: foreground threshold of a binary map.
    """
    if probs.shape[0] == 1:
        return (probs[0] > threshold).long()
    return probs.argmax(0)

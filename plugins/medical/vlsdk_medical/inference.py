"""Sliding-window inference of a lesion segmenter over full slices and volumes.

A :class:`vlsdk.VLModel` is a 2D network; a volume ``(C, X, Y, Z)`` is segmented slice by slice
along ``axis``: all its slices form one batch (a reshape, no Python loop over slices) that MONAI's
``sliding_window_inference`` tiles with ``roi_size`` windows, Gaussian-blended. Optional flip
test-time augmentation (:func:`flip_tta`) averages the probabilities of each window and its
mirror images in the slice plane.

2.5D input: with ``context_slices = N`` each slice is fed with the ``N`` slices below and above
it of every modality as extra channels (:func:`stack_context`; the border slice is repeated at
the volume's edges). A model trained that way records ``N`` in its ``config.json``
(the ``medical.lesion`` task's metadata, or :func:`record_input`), so evaluation and ``vlsdk predict``
build the same input (:func:`recorded_input`).

Example:
    >>> probs = predict_volume(model, volume, head="lesion", roi_size=(128, 128))  # doctest: +SKIP
    >>> labels = probs_to_labels(probs)                                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["INPUT_KEY", "TTA_MODES", "centre_channels", "check_input_channels", "flip_tta", "model_predictor",
           "predict_slices", "predict_volume", "probs_to_labels", "record_input", "recorded_input",
           "stack_context"]

#: The ``config.json`` entry of a saved model that records its medical input (modalities, context slices).
INPUT_KEY = "medical_input"

#: Test-time augmentation choices: ``"none"``, ``"flip"`` (mean over the 4 flips of the slice plane).
TTA_MODES = ("none", "flip")


def stack_context(volume: torch.Tensor, index: torch.Tensor | Sequence[int], context_slices: int = 0,
                  axis: int = 2) -> torch.Tensor:
    """Slices ``index`` of a ``(C, X, Y, Z)`` volume with their neighbours as channels (2.5D input).

    One gather for all slices (no loop): slice ``k`` becomes the ``C * (2N + 1)`` channels
    ``[c0 at k-N, ..., c0 at k+N, c1 at k-N, ..., c1 at k+N, ...]`` (modality-major,
    :func:`centre_channels` are the slices themselves); indices outside the volume are clamped,
    so the border slice is repeated. ``context_slices=0`` is the plain slice.

    Args:
        volume: channel-first volume ``(C, X, Y, Z)``.
        index: the slice indices along ``axis`` (1-D).
        context_slices: ``N``, neighbours on each side (>= 0).
        axis: slice axis of the spatial dims (2 = Z).

    Returns:
        ``(S, C * (2N + 1), a, b)`` for ``S`` indices, ``(a, b)`` the other two spatial axes in order.

    Example:
        >>> vol = torch.arange(5.0).view(1, 1, 1, 5).expand(2, 3, 3, 5)
        >>> stack_context(vol, [0, 4], 1)[:, :, 0, 0].tolist()
        [[0.0, 0.0, 1.0, 0.0, 0.0, 1.0], [3.0, 4.0, 4.0, 3.0, 4.0, 4.0]]
    """
    if volume.ndim != 4:
        raise ValueError(f"expected a (C, X, Y, Z) volume, got shape {tuple(volume.shape)}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if not isinstance(context_slices, int) or context_slices < 0:
        raise ValueError(f"context_slices must be an int >= 0, got {context_slices!r}")
    ks = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    depth = volume.shape[axis + 1]
    if ks.numel() and (int(ks.min()) < 0 or int(ks.max()) >= depth):
        raise ValueError(f"slice indices must be in [0, {depth}), got {ks.min().item()}..{ks.max().item()}")
    vol = torch.as_tensor(volume).movedim(axis + 1, 0)  # (Z, C, a, b)
    if context_slices == 0:
        return vol.index_select(0, ks)
    offsets = torch.arange(-context_slices, context_slices + 1)
    near = (ks[:, None] + offsets[None, :]).clamp_(0, depth - 1)  # (S, 2N + 1)
    out = vol.index_select(0, near.reshape(-1)).unflatten(0, near.shape)  # (S, 2N + 1, C, a, b)
    return out.transpose(1, 2).flatten(1, 2)  # (S, C * (2N + 1), a, b)


def centre_channels(num_modalities: int, context_slices: int = 0) -> list[int]:
    """The channels of a :func:`stack_context` input that hold the slice itself, one per modality.

    Args:
        num_modalities: ``C`` of the volume.
        context_slices: ``N``.
    """
    width = 2 * int(context_slices) + 1
    return [c * width + int(context_slices) for c in range(int(num_modalities))]


def check_input_channels(model: torch.nn.Module, num_modalities: int, context_slices: int) -> None:
    """Raise ``ValueError`` unless the model's ``in_chans`` is ``num_modalities * (2 * context_slices + 1)``.

    Args:
        model: a ``VLModel``.
        num_modalities: image channels of the volume.
        context_slices: ``N``.
    """
    want = int(num_modalities) * (2 * int(context_slices) + 1)
    have = int(model.config.in_chans)
    if have != want:
        raise ValueError(f"the model takes {have} input channels, but {num_modalities} modalities with "
                         f"context_slices={context_slices} give {want}: evaluate with the modalities and "
                         "context_slices it was trained with")


def record_input(model_dir: str | Path, modalities: Sequence[str] | int, context_slices: int,
                 train_cases: Sequence[str] = ()) -> None:
    """Record the input a saved model takes in its ``config.json`` (entry :data:`INPUT_KEY`).

    Args:
        model_dir: a ``save_pretrained`` folder.
        modalities: the channel names (or their number).
        context_slices: ``N`` of :func:`stack_context`.
        train_cases: the patients it was trained on (a later evaluation on one of them warns).
    """
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    names = list(modalities) if not isinstance(modalities, int) else None
    config[INPUT_KEY] = {"modalities": names, "num_modalities": len(names) if names is not None else modalities,
                         "context_slices": int(context_slices), "train_cases": list(train_cases)}
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def recorded_input(model_dir: str | Path) -> dict[str, Any] | None:
    """The recorded input of a saved model, or ``None`` (a model saved without one).

    Models of the ``medical.lesion`` task keep it in their metadata (``config.json``'s
    ``metadata.training.medical_input``); :func:`record_input` writes it at the top level.

    Args:
        model_dir: a ``save_pretrained`` folder.
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    entry = config.get(INPUT_KEY)
    if entry is None:
        training = (config.get("metadata") or {}).get("training") or {}
        entry = training.get(INPUT_KEY) if isinstance(training, dict) else None
    return dict(entry) if isinstance(entry, dict) else None


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
                   tta: str = "none", context_slices: int = 0, **options: Any) -> torch.Tensor:
    """Segment a ``(C, X, Y, Z)`` volume slice by slice along ``axis``; returns ``(K, X, Y, Z)``.

    Args:
        model: a ``VLModel`` with segmentation head ``head``.
        volume: channel-first volume (tensor or MONAI ``MetaTensor``).
        head: the head's name.
        roi_size: sliding-window size in the slice plane.
        axis: slice axis of the spatial dims (2 = Z).
        batch_slices: slices per sliding-window call (bounds memory).
        tta: ``"none"`` or ``"flip"`` (see :func:`flip_tta`).
        context_slices: feed each slice with this many neighbours on each side (:func:`stack_context`),
            as the model was trained.
        **options: :func:`predict_slices` options (``overlap``, ``sw_batch_size``, ``device``, ``amp``).
    """
    if volume.ndim != 4:
        raise ValueError(f"expected a (C, X, Y, Z) volume, got shape {tuple(volume.shape)}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    vol = torch.as_tensor(volume).float()
    depth = vol.shape[axis + 1]
    predictor = model_predictor(model, head, tta)
    was_training = model.training
    model.eval()
    try:  # batches of slices (with their context channels) bound the memory
        probs = torch.cat([
            predict_slices(predictor, stack_context(vol, torch.arange(i, min(i + int(batch_slices), depth)),
                                                    context_slices, axis), roi_size, **options).cpu()
            for i in range(0, depth, int(batch_slices))])
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

"""Held-out evaluation of a lesion segmenter: whole-tumour Dice and HD95 per patient volume.

Full slices of every held-out patient go through sliding-window inference (optionally flip
test-time augmentation), ``threshold`` (binary head) or argmax, then ``postprocess`` per patient
volume (brain mask, largest 3D connected component: :mod:`vlsdk_medical.postprocess`). The same
predictions are scored before and after post-processing. Each slice is fed with its
``context_slices`` neighbours on each side, as in training.

Example:
    >>> result = evaluate_held_out(model, held_out_set, settings)   # doctest: +SKIP
    >>> result["dice_mean"], result["before"]["dice_mean"]          # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vlsdk_medical.dataset import LesionSliceDataset
    from vlsdk_medical.lesion_settings import LesionSettings

__all__ = ["CasePrediction", "evaluate_held_out", "predict_cases"]


@dataclass
class CasePrediction:
    """One held-out case's sliding-window probabilities, ready to threshold and post-process.

    Attributes:
        case_id: the patient.
        slices: the volume slice indices scored, ``(S,)``.
        images: the model input of those slices, ``(S, C * (2 * context_slices + 1), X, Y)``.
        labels: ground-truth labels, ``(S, X, Y)``.
        probs: foreground (binary head) or class probabilities, ``(S, 1 or K, X, Y)`` on the CPU.
        spacing: voxel size in mm (the slice step scaled when only a subset of slices is scored).
        brain: the brain mask of the scored slices, ``(X, Y, S)``.
        brain_source: where the mask came from (file or ``"foreground"``).
    """

    case_id: str
    slices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor
    spacing: list[float]
    brain: torch.Tensor
    brain_source: str

    def raw_labels(self, threshold: float) -> torch.Tensor:
        """``(S, X, Y)`` labels: foreground probability above ``threshold``, or the argmax class."""
        return (self.probs[:, 0] > threshold).long() if self.probs.shape[1] == 1 else self.probs.argmax(1)

    def postprocessed(self, raw: torch.Tensor, settings: LesionSettings) -> torch.Tensor:
        """``raw`` after ``settings.postprocess``, applied to the ``(X, Y, S)`` volume (components are 3D)."""
        from vlsdk_medical.postprocess import postprocess_labels

        return postprocess_labels(raw.movedim(0, -1), settings.postprocess, brain=self.brain,
                                  min_size=settings.min_component_mm3, spacing=self.spacing).movedim(-1, 0)


def predict_cases(model: torch.nn.Module, data: LesionSliceDataset, settings: LesionSettings,
                  head: str = "lesion", cases: Sequence[int] | None = None) -> Iterator[CasePrediction]:
    """Sliding-window predictions of the held-out slices of ``data``, one case at a time.

    Args:
        model: a ``VLModel`` with the segmentation head ``head`` (put in eval mode here), on its device
            (a module without parameters runs on the CPU).
        data: the held-out slices (:meth:`~vlsdk_medical.task.LesionTask.datasets` ``"val"``).
        settings: ``roi_size``, ``sw_overlap``, ``sw_mode``, ``tta``, ``precision``.
        head: the segmentation head.
        cases: positions of the cases of ``data`` to predict (default: all).

    Raises:
        ValueError: the model's ``in_chans`` does not fit the modalities and ``context_slices``.
    """
    from vlsdk_medical.inference import check_input_channels, model_predictor, predict_slices
    from vlsdk_medical.postprocess import case_brain_mask

    if hasattr(model, "config"):  # a VLModel (a wrapped runtime such as ONNX has no config)
        check_input_channels(model, len(settings.modalities), settings.context_slices)
    model.eval()
    weight = next(iter(model.parameters()), None)
    device = weight.device if weight is not None else torch.device("cpu")
    amp = None if settings.precision == "off" else settings.precision
    predictor = model_predictor(model, head, settings.tta)
    case_of = torch.tensor([c for c, _ in data.index])
    slice_of = torch.tensor([k for _, k in data.index])
    for ci in range(len(data.cases)) if cases is None else cases:
        ks = slice_of[case_of == ci]
        images = data.slice_images(ci, ks)
        with torch.no_grad():
            probs = predict_slices(predictor, images, settings.roi_size, sw_batch_size=32,
                                   overlap=settings.sw_overlap, mode=settings.sw_mode, device=device, amp=amp).cpu()
        spacing = list(data.spacings[ci])
        if len(ks) > 1:  # a subset of slices (eval_slices) is about evenly spaced: scale the slice step
            spacing[2] *= float(ks.diff().float().median())
        brain, source = case_brain_mask(data.cases[ci], data.images[ci])
        yield CasePrediction(data.cases[ci].case_id, ks, images,
                             data.labels[ci].index_select(3, ks)[0].movedim(2, 0).long(), probs, spacing,
                             brain.index_select(2, ks), source)


@torch.no_grad()
def evaluate_held_out(model: torch.nn.Module, data: LesionSliceDataset, settings: LesionSettings,
                      head: str = "lesion") -> dict[str, Any]:
    """Whole-tumour Dice and HD95 of ``model`` on every patient of ``data`` (see the module doc).

    Args:
        model: a ``VLModel`` with the segmentation head ``head``, on its device.
        data: the held-out slices.
        settings: the inference options (``threshold``, ``postprocess``, ``thresholds``...).
        head: the segmentation head.

    Returns:
        ``{"dice": {patient: value}, "dice_mean", "hd95", "hd95_mean", "overlap": {patient:
        {"precision", "recall", "volume_ratio"}}, "dice_per_class"`` (after post-processing; whole
        tumour), ``"before": {"dice", "dice_mean", "hd95", "hd95_mean", "overlap"}, "dice_at":
        {threshold: {patient: dice}}`` (after post-processing, for ``extra_thresholds``),
        ``"postprocess", "inference", "brain_mask": {patient: source}, "eval_cases", "shown":
        {patient: (images, whole, pred, slice_ids)}}`` (``images``: the slices' own channels).
    """
    from vlsdk.tasks.components import build
    from vlsdk_medical.inference import centre_channels

    def metrics(num_classes: int = 2) -> tuple[Any, Any]:  # whole tumour: label > 0
        return (build("metrics", settings.metric, "metric", num_classes=num_classes),
                build("metrics", settings.distance_metric, "distance_metric", num_classes=num_classes))

    after, before = metrics(), metrics()
    class_dice = metrics(5)[0] if settings.classes == "brats" else None
    shown: dict[str, Any] = {}
    sources: dict[str, str] = {}
    overlap: dict[str, dict[str, dict[str, float]]] = {"after": {}, "before": {}}
    dice_at: dict[float, dict[str, float]] = {float(t): {} for t in settings.extra_thresholds}
    for p in predict_cases(model, data, settings, head):
        cid, ks, cases = p.case_id, p.slices, [p.case_id] * len(p.slices)
        sources[cid] = p.brain_source
        raw = p.raw_labels(settings.threshold)
        classes = p.postprocessed(raw, settings)
        if class_dice is not None:
            class_dice.update(classes, p.labels, cases=cases)
        whole = (p.labels > 0).long()
        for (dice, hd95), pred in ((before, (raw > 0).long()), (after, (classes > 0).long())):
            dice.update(pred, whole, cases=cases, spacing=p.spacing)
            hd95.update(pred, whole, cases=cases, spacing=p.spacing)
        for key, pred in (("before", raw > 0), ("after", classes > 0)):
            overlap[key][cid] = _overlap(pred, whole > 0)
        for t in dice_at:
            dice = metrics()[0]
            dice.update((p.postprocessed(p.raw_labels(t), settings) > 0).long(), whole, cases=cases, spacing=p.spacing)
            dice_at[t][cid] = float(dice.compute()["per_case"][cid])
        own = p.images[:, centre_channels(len(settings.modalities), settings.context_slices)]  # (S, C, X, Y)
        shown[cid] = (own, whole, (classes > 0).long(), ks)
    (d, h), (d0, h0) = (m.compute() for m in after), (m.compute() for m in before)
    return {"dice": d["per_case"], "dice_mean": d["mean"], "hd95": h["per_case"], "hd95_mean": h["mean"],
            "overlap": overlap["after"],
            "dice_per_class": None if class_dice is None else class_dice.compute()["per_class"],
            "before": {"dice": d0["per_case"], "dice_mean": d0["mean"], "hd95": h0["per_case"],
                       "hd95_mean": h0["mean"], "overlap": overlap["before"]},
            "dice_at": dice_at,
            "postprocess": settings.postprocess if settings.min_component_mm3 is None
            else f"{settings.postprocess} (components >= {settings.min_component_mm3} mm3)",
            "inference": {"threshold": settings.threshold, "sw_overlap": settings.sw_overlap,
                          "sw_mode": settings.sw_mode, "tta": settings.tta},
            "brain_mask": sources, "eval_cases": list(shown), "shown": shown}


def _overlap(pred: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Voxel precision, recall and predicted / true volume of two boolean masks (NaN where undefined)."""
    tp, npred, ntrue = int((pred & true).sum()), int(pred.sum()), int(true.sum())
    return {"precision": tp / npred if npred else math.nan, "recall": tp / ntrue if ntrue else math.nan,
            "volume_ratio": npred / ntrue if ntrue else math.nan}

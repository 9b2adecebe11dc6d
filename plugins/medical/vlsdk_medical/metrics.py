"""Dice and 95th-percentile Hausdorff distance per case and overall, via ``monai.metrics``.

Registered as ``medical.dice`` (:class:`CaseDice`) and ``medical.hd95`` (:class:`CaseHD95`).
``update`` takes label maps, either whole cases (``(B, *spatial)`` with one case id per item) or
pieces of a case (slices of a volume with the same case id, stacked along ``stack_axis`` in the
order given) ; ``compute`` evaluates each case on its whole volume with MONAI's
``DiceMetric`` / ``HausdorffDistanceMetric(percentile=95)`` and returns the per-case values and
their mean over the cases where the metric is defined.

Example:
    >>> m = CaseDice(num_classes=2)
    >>> m.update(torch.ones(1, 8, 8, dtype=torch.long), torch.ones(1, 8, 8, dtype=torch.long), cases=["a"])
    >>> m.compute()["per_case"]["a"]
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["CaseDice", "CaseHD95", "CaseMetric"]


class CaseMetric:
    """Shared machinery: per-case buffers of label maps, one-hot, and the MONAI call.

    Args:
        num_classes: classes including background (2 for binary lesion masks).
        include_background: also score class 0.
        stack_axis: where slices of one case are stacked (``-1``: a new last axis, matching the
            slice axis of ``(X, Y, Z)`` volumes).
    """

    name = "metric"

    def __init__(self, num_classes: int = 2, *, include_background: bool = False, stack_axis: int = -1) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2 (background + lesion), got {num_classes}")
        self.num_classes = int(num_classes)
        self.include_background = bool(include_background)
        self.stack_axis = int(stack_axis)
        self.reset()

    def reset(self) -> None:
        """Forget every case."""
        self._pred: dict[str, list[torch.Tensor]] = {}
        self._true: dict[str, list[torch.Tensor]] = {}
        self._spacing: dict[str, Any] = {}

    def update(self, pred: torch.Tensor, target: torch.Tensor, cases: Sequence[str] | None = None,
               spacing: Sequence[float] | Sequence[Sequence[float]] | None = None) -> None:
        """Add label maps.

        Args:
            pred: ``(B, *spatial)`` integer labels (no channel axis).
            target: same shape as ``pred``.
            cases: one case id per item; items with the same id are stacked into one volume.
                ``None``: every item is its own case.
            spacing: voxel size (one per volume, or one per item) for distances in mm.

        Raises:
            ValueError: shapes differ, labels out of range, or the wrong number of case ids.
        """
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if pred.ndim < 3:
            raise ValueError(f"expected (B, *spatial) label maps, got shape {tuple(pred.shape)}")
        for name, t in (("pred", pred), ("target", target)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
                raise ValueError(f"{name} labels must be in [0, {self.num_classes}), got [{int(t.min())}, "
                                 f"{int(t.max())}]")
        b = pred.shape[0]
        if cases is None:
            start = sum(len(v) for v in self._pred.values())
            cases = [f"case{start + i}" for i in range(b)]
        if len(cases) != b:
            raise ValueError(f"got {len(cases)} case ids for a batch of {b}")
        if spacing is not None and len(spacing) and not isinstance(spacing[0], (int, float)):
            per_item = list(spacing)
        else:
            per_item = [spacing] * b
        for i, case in enumerate(cases):
            self._pred.setdefault(str(case), []).append(pred[i].detach().to("cpu", torch.int64))
            self._true.setdefault(str(case), []).append(target[i].detach().to("cpu", torch.int64))
            if per_item[i] is not None:
                self._spacing[str(case)] = tuple(float(s) for s in per_item[i])

    def _volume(self, parts: list[torch.Tensor]) -> torch.Tensor:
        vol = parts[0] if len(parts) == 1 else torch.stack(parts, self.stack_axis)
        onehot = F.one_hot(vol, self.num_classes).movedim(-1, 0)
        return onehot[None].float()  # (1, C, *spatial)

    def _score(self, pred: torch.Tensor, true: torch.Tensor, spacing: Any) -> torch.Tensor:
        raise NotImplementedError

    @property
    def cases(self) -> list[str]:
        """Case ids seen, in order."""
        return list(self._pred)

    def compute(self) -> dict[str, Any]:
        """``{"per_case": {case: value}, "per_class": {case: [per class]}, "mean": overall}``.

        Per case the value is the mean over the scored classes; ``nan`` where undefined (e.g. Dice
        of a case without lesion, or HD95 when one side is empty). ``mean`` averages the defined
        values (``nan`` if none).
        """
        per_case: dict[str, float] = {}
        per_class: dict[str, list[float]] = {}
        for case in self._pred:
            scores = self._score(self._volume(self._pred[case]), self._volume(self._true[case]),
                                 self._spacing.get(case))[0]
            finite = scores[torch.isfinite(scores)]
            per_class[case] = [float(s) for s in scores]
            per_case[case] = float(finite.mean()) if finite.numel() else math.nan
        values = [v for v in per_case.values() if math.isfinite(v)]
        return {"per_case": per_case, "per_class": per_class,
                "mean": sum(values) / len(values) if values else math.nan}


class CaseDice(CaseMetric):
    """Dice per case and overall (MONAI ``DiceMetric``; empty ground truth gives ``nan``).

    Args:
        num_classes: classes including background.
        include_background: also score class 0.
        stack_axis: where slices of one case are stacked.
    """

    name = "dice"

    def _score(self, pred: torch.Tensor, true: torch.Tensor, spacing: Any) -> torch.Tensor:
        from monai.metrics import DiceMetric

        metric = DiceMetric(include_background=self.include_background, reduction="none", ignore_empty=True)
        return metric(pred, true)


class CaseHD95(CaseMetric):
    """95th-percentile Hausdorff distance per case (mm when the spacing is known) and overall.

    Uses MONAI ``HausdorffDistanceMetric(percentile=95)``; ``nan`` when prediction or ground truth
    is empty.

    Args:
        num_classes: classes including background.
        include_background: also score class 0.
        stack_axis: where slices of one case are stacked.
    """

    name = "hd95"

    def _score(self, pred: torch.Tensor, true: torch.Tensor, spacing: Any) -> torch.Tensor:
        import warnings

        from monai.metrics import HausdorffDistanceMetric

        metric = HausdorffDistanceMetric(include_background=self.include_background, percentile=95,
                                         reduction="none")
        if spacing is not None and len(spacing) != pred.ndim - 2:
            raise ValueError(f"spacing {spacing} does not match the {pred.ndim - 2}-D volumes")
        with warnings.catch_warnings():  # MONAI warns on empty masks; we report nan instead
            warnings.simplefilter("ignore")
            out = metric(pred, true, spacing=list(spacing) if spacing is not None else None)
        empty = (pred.flatten(2).sum(-1) == 0) | (true.flatten(2).sum(-1) == 0)
        if not self.include_background:
            empty = empty[:, 1:]
        return torch.where(empty, torch.full_like(out, math.nan), out)

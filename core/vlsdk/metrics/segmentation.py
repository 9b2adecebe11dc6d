"""Dice overlap of predicted and true label maps, per class and averaged over foreground classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["DiceMetric"]


def _labels(value: Any, what: str) -> torch.Tensor:
    t = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            raise ValueError(f"{what}: {int((~torch.isfinite(t)).sum())} non-finite value(s); expected class ids")
        if (t != t.round()).any():
            raise ValueError(f"{what}: fractional values; expected integer class ids (take the argmax first)")
    return t.cpu().long().reshape(-1)


class DiceMetric:
    """Dice ``2|P & T| / (|P| + |T|)`` per class, accumulated over every pixel seen since :meth:`reset`.

    One confusion matrix (``torch.bincount`` of ``target * K + pred``) holds the counts, so a
    batch costs one pass whatever the number of classes. A class absent from both predictions and
    targets has no Dice (``nan``) and is left out of the mean.

    Args:
        num_classes: number of class ids ``K`` (labels ``0..K-1``); or give ``class_names``.
        class_names: one name per class id (default ``"0"``, ``"1"``, ...).
        background: class ids left out of the mean (default ``(0,)``; ``()`` to average all).

    Raises:
        ValueError: neither or inconsistent ``num_classes`` / ``class_names``, or a background id
            out of range.

    Example:
        >>> m = DiceMetric(2)
        >>> m.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]))
        >>> round(m.compute()["dice"], 4)
        0.8
    """

    def __init__(self, num_classes: int | None = None, *, class_names: Sequence[str] | None = None,
                 background: Sequence[int] = (0,)) -> None:
        if class_names is not None:
            class_names = tuple(str(c) for c in class_names)
            if num_classes is not None and num_classes != len(class_names):
                raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
            num_classes = len(class_names)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1 (or give class_names), got {num_classes!r}")
        if any(not 0 <= b < num_classes for b in background):
            raise ValueError(f"background ids must be in [0, {num_classes}), got {list(background)}")
        self.num_classes = num_classes
        self.class_names = class_names or tuple(str(k) for k in range(num_classes))
        self.background = tuple(int(b) for b in background)
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, pred_labels: Any, target_labels: Any) -> None:
        """Add label maps of any matching shape (e.g. ``(B, H, W)``).

        Args:
            pred_labels: predicted class ids (tensor or array; take the argmax of logits first).
            target_labels: true class ids, same shape.

        Raises:
            ValueError: shapes differ, or a value is not a class id in ``[0, K)``.
        """
        shape_p, shape_t = tuple(np.shape(pred_labels)), tuple(np.shape(target_labels))
        if shape_p != shape_t:
            raise ValueError(f"pred_labels {shape_p} and target_labels {shape_t} must have the same shape")
        k = self.num_classes
        pred, target = _labels(pred_labels, "pred_labels"), _labels(target_labels, "target_labels")
        for what, t in (("pred_labels", pred), ("target_labels", target)):
            bad = (t < 0) | (t >= k)
            if bad.any():
                raise ValueError(f"{what}: {int(bad.sum())} value(s) outside the class ids [0, {k}), e.g. "
                                 f"{t[bad][:5].tolist()}")
        self.confusion += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, Any]:
        """``{"dice": mean over foreground classes, "per_class": {name: dice}}`` (``nan`` where undefined)."""
        c = self.confusion.double()
        inter, denom = c.diagonal(), c.sum(0) + c.sum(1)
        dice = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.full_like(denom, float("nan")))
        fg = torch.ones(self.num_classes, dtype=torch.bool)
        fg[list(self.background)] = False
        chosen = dice[fg & ~dice.isnan()]
        mean = float(chosen.mean()) if chosen.numel() else float("nan")
        return {"dice": mean, "per_class": dict(zip(self.class_names, dice.tolist(), strict=True))}

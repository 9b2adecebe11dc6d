"""Pictures of lesion segmentations, kept apart from training: prediction and ground truth over the image.

Example:
    >>> write_overlay("overlay.png", images, labels, pred, title="pat0001")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["write_overlay"]


def write_overlay(path: str | Path, images: torch.Tensor, labels: torch.Tensor, pred: torch.Tensor, *,
                  num: int = 4, title: str = "", slice_ids: Sequence[int] | None = None,
                  panel: str = "slice") -> Path:
    """PNG of the ``num`` slices with most lesion: image, ground truth (green), prediction (red).

    Args:
        path: the PNG file.
        images: ``(S, C, X, Y)`` slices (channel 0 is shown).
        labels: ``(S, X, Y)`` ground truth.
        pred: ``(S, X, Y)`` prediction.
        num: slices to show.
        title: figure title.
        slice_ids: the volume slice index of each slice, for the panel titles.
        panel: the panel title's word (``"slice 12"``; ``"image"`` for 2D images).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not images.shape[0] == labels.shape[0] == pred.shape[0]:
        raise ValueError("images, labels and pred need the same number of slices")
    order = labels.flatten(1).sum(1).argsort(descending=True)[: max(1, num)]
    fig, axes = plt.subplots(1, len(order), figsize=(3 * len(order), 3.2), squeeze=False)
    for ax, i in zip(axes[0], order.tolist(), strict=True):
        # (X, Y) RAS -> show with anterior up and patient right on the left (radiological view)
        ax.imshow(images[i, 0].T.flip(0).numpy(), cmap="gray")
        for mask, colour in ((labels[i], "lime"), (pred[i], "red")):
            m = mask.T.flip(0).float().numpy()
            if m.any():
                ax.contour(m, levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(f"{panel} {slice_ids[i] if slice_ids is not None else i}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{title}  green: ground truth, red: prediction", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path

"""Vectorised box operations on ``xyxy`` boxes: area, IoU, generalised IoU, clipping and NMS."""

from __future__ import annotations

import torch

__all__ = ["box_area", "box_iou", "generalized_box_iou", "clip_boxes", "nms", "batched_nms", "padded_nms"]


def _check_boxes(name: str, boxes: torch.Tensor) -> None:
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape (..., 4) in xyxy order, got {tuple(boxes.shape)}")


def _broadcast(a: torch.Tensor, b: torch.Tensor, pairwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _check_boxes("a", a)
    _check_boxes("b", b)
    if pairwise:
        if a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"pairwise IoU expects (N, 4) and (M, 4) boxes, got {tuple(a.shape)} and {tuple(b.shape)}")
        return a[:, None, :], b[None, :, :]
    if a.shape != b.shape:
        raise ValueError(f"paired IoU expects boxes of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def _iou_and_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union of broadcastable ``(..., 4)`` boxes."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).eps), union


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``(..., 4)`` xyxy boxes (0 for degenerate boxes).

    Example:
        >>> box_area(torch.tensor([[0.0, 0.0, 2.0, 3.0]]))
        tensor([6.])
    """
    return (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)


def box_iou(a: torch.Tensor, b: torch.Tensor, *, pairwise: bool = True) -> torch.Tensor:
    """Intersection over union of xyxy boxes.

    Args:
        a: ``(N, 4)`` boxes (``(..., 4)`` when ``pairwise=False``).
        b: ``(M, 4)`` boxes (same shape as ``a`` when ``pairwise=False``).
        pairwise: ``True``: every ``a`` against every ``b``, ``(N, M)``; ``False``: ``a[i]``
            against ``b[i]``, shape ``a.shape[:-1]``.

    Example:
        >>> box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3], [0.0, 0, 2, 2]]))
        tensor([[0.1429, 1.0000]])
    """
    a, b = _broadcast(a, b, pairwise)
    return _iou_and_union(a, b)[0]


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor, *, pairwise: bool = True) -> torch.Tensor:
    """Generalised IoU (Rezatofighi et al. 2019) of xyxy boxes, in ``[-1, 1]``.

    Args:
        a: ``(N, 4)`` boxes (``(..., 4)`` when ``pairwise=False``).
        b: ``(M, 4)`` boxes (same shape as ``a`` when ``pairwise=False``).
        pairwise: ``True``: ``(N, M)`` matrix; ``False``: element-wise, shape ``a.shape[:-1]``.

    Example:
        >>> generalized_box_iou(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[2.0, 0, 3, 1]]), pairwise=False)
        tensor([-0.3333])
    """
    a, b = _broadcast(a, b, pairwise)
    iou, union = _iou_and_union(a, b)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=torch.finfo(hull.dtype).eps)


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clamp ``(..., 4)`` xyxy boxes to an image of ``size = (H, W)`` pixels.

    Example:
        >>> clip_boxes(torch.tensor([[-5.0, 2, 50, 70]]), (64, 32))
        tensor([[ 0.,  2., 32., 64.]])
    """
    h, w = size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression within groups, without a Python loop over boxes.

    Exactly the greedy rule: in descending score order (ties keep input order), a box is kept
    unless a *kept* box of the same group ranked before it overlaps it with IoU
    ``> iou_threshold``. The IoU matrix is computed once; boxes of different groups (classes,
    images) never suppress each other, through a same-group mask rather than the coordinate
    offset trick, which loses float precision for many groups or large coordinates. The kept set
    is the unique fixed point of ``keep[i] = not any(keep[j] and sup[j, i] for j < i)``, reached
    by iterating that rule on whole tensors from "keep everything": iteration ``t`` settles rank
    ``t`` at the latest, so at most ``n`` iterations, in practice as many as the longest chain of
    suppressions. Memory is ``O(n^2)``: cap ``n`` (top-k by score) before calling it.

    Args:
        boxes: ``(N, 4)`` xyxy boxes.
        scores: ``(N,)`` scores.
        idxs: ``(N,)`` integer group of each box (class id, or ``image * num_classes + class``).
        iou_threshold: boxes overlapping a kept box by more than this are discarded.

    Returns:
        ``(K,)`` long indices into ``boxes`` of the kept boxes, by decreasing score.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10], [0.0, 0, 10, 10]])
        >>> batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]), 0.5)
        tensor([0, 2])
    """
    _check_boxes("boxes", boxes)
    n = boxes.shape[0]
    if boxes.dim() != 2 or scores.shape != (n,) or idxs.shape != (n,):
        raise ValueError(f"batched_nms expects boxes (N, 4), scores (N,) and idxs (N,), got "
                         f"{tuple(boxes.shape)}, {tuple(scores.shape)} and {tuple(idxs.shape)}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b, g = boxes[order], idxs[order]
    # sup[j, i]: box j (ranked before i) would suppress box i if j is kept.
    sup = (box_iou(b, b) > iou_threshold) & (g[:, None] == g[None, :])
    sup = sup.triu(diagonal=1).float()
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for _ in range(n):
        new = (keep.to(sup.dtype) @ sup) == 0  # counts of kept suppressors; exact for n < 2**24
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression over all boxes as one group (see :func:`batched_nms`).

    Example:
        >>> nms(torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10]]), torch.tensor([0.8, 0.9]), 0.5)
        tensor([1])
    """
    return batched_nms(boxes, scores, torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device),
                       iou_threshold)


def padded_nms(boxes: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-wise greedy NMS of a batch of images at once, on padded ``(B, K)`` candidates.

    The same rule as :func:`batched_nms` (see there), for every image in one set of tensor ops:
    candidates must already be in decreasing score order within each image (as ``topk`` returns
    them; equal scores keep their order), padding marked ``False`` in ``valid``. One IoU tensor
    ``(B, K, K)``, then the fixed-point iteration as a batched matrix product, with one host read
    per iteration for the whole batch instead of one per iteration and image. Memory is
    ``O(B K^2)``: trim ``K`` to the longest valid prefix first.

    Args:
        boxes: ``(B, K, 4)`` xyxy boxes.
        labels: ``(B, K)`` integer class of each box; boxes of different classes never suppress each other.
        valid: ``(B, K)`` bool, ``False`` for padding.
        iou_threshold: boxes overlapping a kept box by more than this are discarded.

    Returns:
        ``(B, K)`` bool, the kept candidates.

    Example:
        >>> boxes = torch.tensor([[[0.0, 0, 10, 10], [1.0, 1, 10, 10], [0.0, 0, 10, 10]]])
        >>> padded_nms(boxes, torch.tensor([[0, 0, 1]]), torch.tensor([[True, True, True]]), 0.5)
        tensor([[ True, False,  True]])
    """
    _check_boxes("boxes", boxes)
    b, k = valid.shape
    if boxes.shape != (b, k, 4) or labels.shape != (b, k):
        raise ValueError(f"padded_nms expects boxes (B, K, 4), labels (B, K) and valid (B, K), got "
                         f"{tuple(boxes.shape)}, {tuple(labels.shape)} and {tuple(valid.shape)}")
    if valid.numel() == 0:
        return valid.clone()
    iou = _iou_and_union(boxes[:, :, None, :], boxes[:, None, :, :])[0]
    # sup[b, j, i]: box j (ranked before i) would suppress box i of the same image if j is kept.
    sup = (iou > iou_threshold) & (labels[:, :, None] == labels[:, None, :]) & valid[:, :, None]
    sup = sup.triu(diagonal=1).float()
    keep = valid
    for _ in range(k):
        new = valid & (torch.bmm(keep[:, None, :].to(sup.dtype), sup)[:, 0] == 0)
        if torch.equal(new, keep):
            break
        keep = new
    return keep

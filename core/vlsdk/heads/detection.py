"""Anchor-free (YOLOX/FCOS-style) object detection: FPN/PAN neck, decoupled head, NMS decoding."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.heads.base import ConvNormAct, Head, resolve_strides
from vlsdk.models.features import EncoderFeatures
from vlsdk.ops.boxes import batched_nms, clip_boxes, generalized_box_iou, padded_nms

__all__ = [
    "decode_detections", "DetectionHead", "DetectionOutput", "Detections", "assign_targets", "pad_targets"]


@dataclass
class DetectionOutput:
    """Raw predictions of :class:`DetectionHead`, every level concatenated (``A`` locations).

    Locations are ordered level by level (finest first), row-major within a level.

    Attributes:
        cls_logits: ``(B, A, C)`` class logits.
        obj_logits: ``(B, A)`` objectness logits.
        ltrb: ``(B, A, 4)`` positive distances (pixels) from each location to the box's left,
            top, right and bottom sides.
        anchors: ``(A, 2)`` location centres ``(x, y)`` in pixels.
        strides: ``(A,)`` stride of each location's level.
        level_sizes: ``(h, w)`` of each level, to split ``A`` back into levels.
        image_size: ``(H, W)`` of the input images.
    """

    cls_logits: torch.Tensor
    obj_logits: torch.Tensor
    ltrb: torch.Tensor
    anchors: torch.Tensor
    strides: torch.Tensor
    level_sizes: list[tuple[int, int]]
    image_size: tuple[int, int]

    @property
    def boxes(self) -> torch.Tensor:
        """``(B, A, 4)`` predicted xyxy boxes in pixels (not clipped)."""
        return torch.cat((self.anchors - self.ltrb[..., :2], self.anchors + self.ltrb[..., 2:]), dim=-1)


@dataclass
class Detections:
    """Detections of one image.

    Attributes:
        boxes: ``(n, 4)`` xyxy boxes in pixels, inside the image.
        scores: ``(n,)`` ``sigmoid(objectness) * sigmoid(class)``, decreasing.
        labels: ``(n,)`` long class ids.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def pad_targets(targets: Sequence[Mapping[str, torch.Tensor]], device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack per-image ``{"boxes": (n, 4), "labels": (n,)}`` into padded batch tensors.

    Args:
        targets: one dict per image; ``n`` may be 0.
        device: device of the results.
        dtype: dtype of the boxes.

    Returns:
        ``boxes (B, M, 4)``, ``labels (B, M)`` long and ``valid (B, M)`` bool, with
        ``M = max(1, max n)`` (padding rows are zeros and not valid).

    Example:
        >>> boxes, labels, valid = pad_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)},
        ...                                     {"boxes": torch.ones(2, 4), "labels": torch.tensor([1, 2])}])
        >>> boxes.shape, valid.tolist()
        (torch.Size([2, 2, 4]), [[False, False], [True, True]])
    """
    counts = []
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"expected each target as {{'boxes': (n, 4), 'labels': (n,)}}, target {i} has {sorted(t)}")
        n = t["boxes"].shape[0]
        if t["boxes"].shape != (n, 4) or t["labels"].shape != (n,):
            raise ValueError(f"expected target {i} boxes (n, 4) and labels (n,), got {tuple(t['boxes'].shape)} and "
                             f"{tuple(t['labels'].shape)}")
        counts.append(n)
    m = max([1, *counts])
    boxes = torch.zeros(len(targets), m, 4, device=device, dtype=dtype)
    labels = torch.zeros(len(targets), m, device=device, dtype=torch.long)
    for i, (t, n) in enumerate(zip(targets, counts, strict=True)):  # one copy per image, no per-box work
        boxes[i, :n] = t["boxes"].to(device=device, dtype=dtype)
        labels[i, :n] = t["labels"].to(device=device, dtype=torch.long)
    valid = torch.arange(m, device=device)[None] < torch.tensor(counts, device=device, dtype=torch.long)[:, None]
    return boxes, labels, valid


def assign_targets(anchors: torch.Tensor, strides: torch.Tensor, size_ranges: torch.Tensor, gt_boxes: torch.Tensor,
                   gt_valid: torch.Tensor, center_radius: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Match locations to ground-truth boxes (centre sampling with one level per box), vectorised.

    A location is a candidate for a box when all of these hold:

    - the box's longest side lies in the location's level range ``size_ranges`` (``(lo, hi]``),
      so each box is learnt on one level;
    - the location lies within ``center_radius`` strides of the box centre (both axes);
    - the location lies inside the box, or it is the location whose cell holds the box centre
      (within half a stride on both axes), so that even a box smaller than a stride is learnt.

    A location that is a candidate for several boxes takes the smallest (by area).

    Args:
        anchors: ``(A, 2)`` location centres ``(x, y)``.
        strides: ``(A,)`` stride of each location.
        size_ranges: ``(A, 2)`` ``(lo, hi]`` of box longest sides each location's level learns.
        gt_boxes: ``(B, M, 4)`` xyxy boxes.
        gt_valid: ``(B, M)`` which boxes are real (see :func:`pad_targets`).
        center_radius: centre-sampling radius in strides (at least 0.5).

    Returns:
        ``matched (B, A)`` long index into ``M`` (0 for negatives) and ``positive (B, A)`` bool.

    Example:
        >>> anchors = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
        >>> m, pos = assign_targets(anchors, torch.full((2,), 8.0), torch.tensor([[0.0, 1e9]] * 2),
        ...                         torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]), torch.tensor([[True]]))
        >>> pos.tolist()
        [[True, False]]
    """
    ax, ay = anchors[:, 0].view(1, -1, 1), anchors[:, 1].view(1, -1, 1)
    s = strides.view(1, -1, 1).to(anchors.dtype)
    x1, y1, x2, y2 = (gt_boxes[..., i].unsqueeze(1) for i in range(4))  # (B, 1, M)
    w, h = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    dx, dy = (ax - (x1 + x2) / 2).abs(), (ay - (y1 + y2) / 2).abs()
    side = torch.maximum(w, h)
    fits = (side > size_ranges[:, 0].view(1, -1, 1)) & (side <= size_ranges[:, 1].view(1, -1, 1))
    centred = (dx < center_radius * s) & (dy < center_radius * s)
    inside = (ax > x1) & (ax < x2) & (ay > y1) & (ay < y2)
    centre_cell = (dx <= s / 2) & (dy <= s / 2)
    candidate = fits & centred & (inside | centre_cell) & gt_valid.unsqueeze(1)
    cost = torch.where(candidate, (w * h).expand_as(candidate), torch.full_like(w, math.inf))
    best, matched = cost.min(dim=2)
    return matched, torch.isfinite(best)


class DetectionHead(Head):
    """YOLO-style anchor-free detector head on the encoder's pyramid.

    A light FPN (top-down) + PAN (bottom-up) neck at ``width`` channels over the levels used,
    then a decoupled head shared across levels: a class tower -> ``C`` logits, and a box tower ->
    objectness and ``ltrb`` distances ``softplus(x * scale_level) * stride``. Training matches
    locations to boxes with :func:`assign_targets`; the loss is BCE objectness on every
    location, BCE (or focal) class loss and GIoU box loss on the positives, each normalised by
    the number of positives.

    Args:
        channels: stride -> channels of the encoder's pyramid.
        num_classes: number of object classes (at least 1).
        strides: levels to detect on (default: those of 8, 16, 32 the pyramid has).
        width: channels of the neck and head.
        num_convs: 3x3 convs in each of the class and box towers.
        center_radius: centre-sampling radius, in strides.
        level_scale: a level of stride ``s`` learns boxes whose longest side is in
            ``(level_scale * s_prev, level_scale * s]`` (finest level from 0, coarsest unbounded).
        box_weight: weight of the GIoU loss.
        focal_gamma: focusing parameter of the class loss (0 = plain BCE).
        prior_prob: initial foreground probability of the objectness and class outputs.

    Example:
        >>> head = DetectionHead({4: 8, 8: 16, 16: 32}, num_classes=3, width=16)
        >>> head.strides
        (8, 16)
        >>> feats = EncoderFeatures(torch.zeros(1, 4, 32), (2, 2), {4: torch.zeros(1, 8, 16, 16),
        ...                         8: torch.zeros(1, 16, 8, 8), 16: torch.zeros(1, 32, 4, 4)}, (64, 64))
        >>> out = head(feats)
        >>> out.cls_logits.shape, out.boxes.shape
        (torch.Size([1, 80, 3]), torch.Size([1, 80, 4]))
    """

    task = "detection"

    def __init__(self, channels: Mapping[int, int], num_classes: int, strides: Sequence[int] | None = None,
                 width: int = 64, num_convs: int = 2, center_radius: float = 2.5, level_scale: float = 8.0,
                 box_weight: float = 5.0, focal_gamma: float = 0.0, prior_prob: float = 0.01) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"expected num_classes >= 1, got {num_classes}")
        if width < 1 or num_convs < 0:
            raise ValueError(f"expected width >= 1 and num_convs >= 0, got width={width}, num_convs={num_convs}")
        if center_radius < 0.5 or level_scale <= 0:
            raise ValueError(f"expected center_radius >= 0.5 and level_scale > 0, got {center_radius}, {level_scale}")
        if box_weight < 0 or focal_gamma < 0 or not 0 < prior_prob < 1:
            raise ValueError(f"expected box_weight >= 0, focal_gamma >= 0 and 0 < prior_prob < 1, got "
                             f"{box_weight}, {focal_gamma}, {prior_prob}")
        super().__init__(channels)
        self.strides = resolve_strides(self.channels, strides, default=(8, 16, 32))
        self.num_classes = int(num_classes)
        self.center_radius = float(center_radius)
        self.box_weight = float(box_weight)
        self.focal_gamma = float(focal_gamma)
        his = [level_scale * s for s in self.strides[:-1]] + [math.inf]
        #: ``(lo, hi]`` of the longest box side each level learns.
        self.size_ranges = list(zip([0.0, *his[:-1]], his, strict=True))
        n = len(self.strides)
        self.lateral = nn.ModuleList(ConvNormAct(self.channels[s], width, 1) for s in self.strides)
        self.top_down = nn.ModuleList(ConvNormAct(width, width, 3) for _ in range(n - 1))
        self.downsample = nn.ModuleList(ConvNormAct(width, width, 3, stride=2) for _ in range(n - 1))
        self.bottom_up = nn.ModuleList(ConvNormAct(width, width, 3) for _ in range(n - 1))
        self.cls_tower = nn.Sequential(*(ConvNormAct(width, width, 3) for _ in range(num_convs)))
        self.box_tower = nn.Sequential(*(ConvNormAct(width, width, 3) for _ in range(num_convs)))
        self.cls_pred = nn.Conv2d(width, self.num_classes, 1)
        self.obj_pred = nn.Conv2d(width, 1, 1)
        self.box_pred = nn.Conv2d(width, 4, 1)
        self.scales = nn.Parameter(torch.ones(n))
        bias = -math.log((1 - prior_prob) / prior_prob)
        for conv, b in ((self.cls_pred, bias), (self.obj_pred, bias), (self.box_pred, math.log(math.e - 1))):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, b)  # box: softplus(b) = 1, i.e. boxes 2 strides wide

    def _neck(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(m) for conv, m in zip(self.lateral, maps, strict=True)]
        td = lat[:]
        for i in range(len(lat) - 2, -1, -1):
            up = F.interpolate(td[i + 1], size=lat[i].shape[-2:], mode="nearest")
            td[i] = self.top_down[i](lat[i] + up)
        out = [td[0]]
        for i in range(1, len(td)):
            down = self.downsample[i - 1](out[-1])
            if down.shape[-2:] != td[i].shape[-2:]:
                down = F.interpolate(down, size=td[i].shape[-2:], mode="nearest")
            out.append(self.bottom_up[i - 1](td[i] + down))
        return out

    def forward(self, features: EncoderFeatures) -> DetectionOutput:
        levels = self._neck(self.levels(features, self.strides))
        cls, obj, ltrb, anchors, strides, sizes = [], [], [], [], [], []
        for i, (s, x) in enumerate(zip(self.strides, levels, strict=True)):
            h, w = x.shape[-2:]
            c, r = self.cls_tower(x), self.box_tower(x)
            cls.append(self.cls_pred(c).flatten(2).transpose(1, 2))
            obj.append(self.obj_pred(r).flatten(1))
            ltrb.append((F.softplus(self.box_pred(r) * self.scales[i]) * s).flatten(2).transpose(1, 2))
            ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                                    torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
            anchors.append((torch.stack((xs, ys), dim=-1).reshape(-1, 2) + 0.5) * s)
            strides.append(torch.full((h * w,), float(s), device=x.device, dtype=x.dtype))
            sizes.append((int(h), int(w)))
        return DetectionOutput(torch.cat(cls, 1), torch.cat(obj, 1), torch.cat(ltrb, 1), torch.cat(anchors),
                               torch.cat(strides), sizes, tuple(features.image_size))

    def _size_ranges(self, output: DetectionOutput) -> torch.Tensor:
        ranges = torch.tensor(self.size_ranges, device=output.anchors.device, dtype=output.anchors.dtype)
        counts = torch.tensor([h * w for h, w in output.level_sizes], device=ranges.device)
        return ranges.repeat_interleave(counts, dim=0)

    def assign(self, output: DetectionOutput, targets: Sequence[Mapping[str, torch.Tensor]]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Match ``output``'s locations to ``targets``.

        Returns:
            ``positive (B, A)`` bool, and for every location its matched ``boxes (B, A, 4)``,
            ``labels (B, A)`` and box index ``matched (B, A)`` (meaningful where positive).
        """
        if len(targets) != output.obj_logits.shape[0]:
            raise ValueError(f"expected one target dict per image ({output.obj_logits.shape[0]}), got {len(targets)}")
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, output.anchors.device, output.anchors.dtype)
        if bool((gt_valid & ((gt_labels < 0) | (gt_labels >= self.num_classes))).any()):
            raise ValueError(f"expected labels in [0, {self.num_classes}), got {gt_labels[gt_valid].unique().tolist()}")
        matched, positive = assign_targets(output.anchors, output.strides, self._size_ranges(output), gt_boxes,
                                           gt_valid, self.center_radius)
        boxes = gt_boxes.gather(1, matched[..., None].expand(-1, -1, 4))
        labels = gt_labels.gather(1, matched)
        return positive, boxes, labels, matched

    def loss(self, output: DetectionOutput, targets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Objectness + class + GIoU box loss.

        Args:
            output: this head's output.
            targets: one dict per image: ``"boxes"`` ``(n, 4)`` xyxy pixels (float), ``"labels"``
                ``(n,)`` long; ``n`` may be 0.

        Returns:
            ``{"loss", "obj", "cls", "box", "num_pos"}``; the components are detached.
        """
        positive, boxes, labels, _ = self.assign(output, targets)
        num_pos = positive.sum()
        norm = num_pos.clamp(min=1).to(output.obj_logits.dtype)
        obj = F.binary_cross_entropy_with_logits(output.obj_logits, positive.to(output.obj_logits.dtype),
                                                 reduction="sum") / norm
        logits = output.cls_logits[positive]
        onehot = F.one_hot(labels[positive], self.num_classes).to(logits.dtype)
        cls = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        if self.focal_gamma > 0:
            p = torch.sigmoid(logits)
            cls = cls * (1 - (p * onehot + (1 - p) * (1 - onehot))).pow(self.focal_gamma)
        cls = cls.sum() / norm
        giou = generalized_box_iou(output.boxes[positive], boxes[positive], pairwise=False)
        box = (1 - giou).sum() / norm
        total = obj + cls + self.box_weight * box
        return {"loss": total, "obj": obj.detach(), "cls": cls.detach(), "box": box.detach(),
                "num_pos": num_pos.detach().to(total.dtype)}

    def decode(self, output: DetectionOutput, score_threshold: float = 0.05, iou_threshold: float = 0.5,
               max_detections: int = 100, pre_nms_topk: int = 1000, batched: bool | None = None) -> list[Detections]:
        """Per-image detections; see :func:`decode_detections`."""
        return decode_detections(output, score_threshold, iou_threshold, max_detections, pre_nms_topk, batched)


@torch.no_grad()
def decode_detections(output: DetectionOutput, score_threshold: float = 0.05, iou_threshold: float = 0.5,
                      max_detections: int = 100, pre_nms_topk: int = 1000,
                      batched: bool | None = None) -> list[Detections]:
    """Per-image detections: score threshold, top-k, class-wise NMS, at most ``max_detections``.

    Scores are ``sigmoid(objectness) * sigmoid(class)``; a location may yield several classes.

    Args:
        output: this head's output.
        score_threshold: drop candidates scoring at most this.
        iou_threshold: class-wise NMS threshold (see :func:`vlsdk.ops.boxes.batched_nms`).
        max_detections: detections kept per image.
        pre_nms_topk: candidates per image entering NMS (bounds its ``O(k^2)`` memory).
        batched: decode every image in one set of tensor ops (:func:`vlsdk.ops.boxes.padded_nms`:
            a few host reads per batch) instead of a loop over images (a few per image). ``None``:
            batched on GPU, where host reads cost the most; the loop on CPU, where the padding to
            the batch's longest candidate list would cost more. Both give the same detections.
    """
    if not 0 <= score_threshold < 1 or not 0 <= iou_threshold <= 1:
        raise ValueError(f"expected score_threshold in [0, 1) and iou_threshold in [0, 1], got "
                         f"{score_threshold}, {iou_threshold}")
    if max_detections < 1 or pre_nms_topk < 1:
        raise ValueError(f"expected max_detections >= 1 and pre_nms_topk >= 1, got "
                         f"{max_detections}, {pre_nms_topk}")
    scores = torch.sigmoid(output.obj_logits)[..., None] * torch.sigmoid(output.cls_logits)  # (B, A, C)
    boxes = clip_boxes(output.boxes, output.image_size)
    if scores.is_cuda if batched is None else batched:
        return _decode_batched(scores, boxes, score_threshold, iou_threshold, max_detections, pre_nms_topk)
    c = scores.shape[-1]
    results = []
    for img_scores, img_boxes in zip(scores.flatten(1), boxes, strict=True):
        top = img_scores.topk(min(pre_nms_topk, img_scores.numel()))
        keep = top.values > score_threshold
        flat, sc = top.indices[keep], top.values[keep]
        bx, lb = img_boxes[flat // c], flat % c
        kept = batched_nms(bx, sc, lb, iou_threshold)[:max_detections]
        results.append(Detections(bx[kept], sc[kept], lb[kept]))
    return results


def _decode_batched(scores: torch.Tensor, boxes: torch.Tensor, score_threshold: float, iou_threshold: float,
                    max_detections: int, pre_nms_topk: int) -> list[Detections]:
    """:func:`decode_detections` for the whole batch at once: ``(B, A, C)`` scores, ``(B, A, 4)`` boxes."""
    c = scores.shape[-1]
    top = scores.flatten(1).topk(min(pre_nms_topk, scores.shape[1] * c), dim=1)  # sorted: valid ones lead
    valid = top.values > score_threshold
    n = int(valid.sum(1).max()) if valid.numel() else 0  # host read: the longest candidate list
    vals, flat, valid = top.values[:, :n], top.indices[:, :n], valid[:, :n]
    bx = boxes.gather(1, torch.div(flat, c, rounding_mode="floor")[..., None].expand(-1, -1, 4))
    lb = flat % c
    keep = padded_nms(bx, lb, valid, iou_threshold)
    keep &= keep.cumsum(1) <= max_detections
    counts = keep.sum(1).tolist()  # host read: detections per image
    return [Detections(*parts) for parts in zip(*(t[keep].split(counts) for t in (bx, vals, lb)), strict=True)]

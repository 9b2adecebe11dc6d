"""CenterPoint-style 3D detection on the BEV feature map (registered head ``driving.bev_detection``).

Per class a centre heatmap, and per cell the sub-cell centre offset, the centre height, the log
box size, the heading as ``(sin, cos)`` and optionally the velocity (Yin et al., "Center-based 3D
Object Detection and Tracking", CVPR 2021). Targets are drawn as Gaussians around each box
centre with CenterPoint's size-dependent radius, for every box of the batch at once; decoding
keeps the local maxima of the heatmap (3x3 max-pool) and turns them into :class:`Boxes3D`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.heads.base import ConvNormAct, Head
from vlsdk.heads.segmentation import UNetDecoder
from vlsdk.models.features import EncoderFeatures
from vlsdk_driving.sample import DETECTION_CLASSES, Boxes3D

__all__ = ["BEVDetectionHead", "BEVDetectionOutput", "gaussian_radius", "centernet_focal_loss", "NMS_RADIUS"]

#: Circle-NMS radius per class (metres): CenterPoint's nuScenes thresholds (``sqrt`` of its squared ones).
NMS_RADIUS: dict[str, float] = {
    "car": 2.0, "truck": 3.5, "construction_vehicle": 3.5, "bus": 3.2, "trailer": 3.2, "barrier": 1.0,
    "motorcycle": 0.9, "bicycle": 0.9, "pedestrian": 0.42, "traffic_cone": 0.42,
}


@dataclass
class BEVDetectionOutput:
    """Raw predictions of :class:`BEVDetectionHead` on an ``(h, w)`` map of ``cell``-metre cells.

    Attributes:
        heatmap: ``(B, K, h, w)`` centre logits per class.
        offset: ``(B, 2, h, w)`` sub-cell centre offset ``(dcol, drow)`` in cells.
        z: ``(B, 1, h, w)`` centre height, metres.
        size: ``(B, 3, h, w)`` ``log`` of ``(l, w, h)``.
        rot: ``(B, 2, h, w)`` ``(sin, cos)`` of the heading.
        velocity: ``(B, 2, h, w)`` ``(vx, vy)`` m/s, or ``None``.
    """

    heatmap: torch.Tensor
    offset: torch.Tensor
    z: torch.Tensor
    size: torch.Tensor
    rot: torch.Tensor
    velocity: torch.Tensor | None = None


def gaussian_radius(length: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.1) -> torch.Tensor:
    """CornerNet/CenterPoint Gaussian radius (in the units of ``length``/``width``) for a box footprint.

    Args:
        length: box extents along one axis.
        width: box extents along the other.
        min_overlap: the IoU a centre shifted by the radius must still reach.
    """
    h, w = length, width
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def centernet_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
                         beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced focal loss of CenterNet, normalised by the number of centres (target == 1).

    Args:
        logits: ``(B, K, h, w)`` heatmap logits.
        target: same shape, Gaussian heatmap in ``[0, 1]`` with 1 exactly at box centres.
        alpha: focusing exponent.
        beta: penalty-reduction exponent around centres.
    """
    pos = target.eq(1).to(logits.dtype)
    logp = F.logsigmoid(logits)
    log1mp = F.logsigmoid(-logits)
    p = logp.exp()
    pos_loss = -((1 - p) ** alpha) * logp * pos
    neg_loss = -((1 - target) ** beta) * (p**alpha) * log1mp * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


class BEVDetectionHead(Head):
    """CenterPoint-style BEV 3D detection head on the backbone's feature pyramid.

    The backbone sees a BEV pseudo-image of ``grid`` (e.g. from :class:`PillarEncoder`); this
    head fuses the pyramid with a U-Net decoder to its finest level (stride ``s``), so one
    heatmap cell is ``resolution * s`` metres.

    Args:
        channels: stride -> channels of the encoder's pyramid.
        num_classes: detection classes (the first ``num_classes`` of :data:`DETECTION_CLASSES`).
        x_range: ``(min, max)`` metres of the BEV grid along ``x`` (its columns).
        y_range: ``(min, max)`` metres along ``y`` (rows).
        resolution: metres per pseudo-image pixel.
        strides: pyramid levels to fuse (default ``(4, 8, 16)`` where present).
        head_channels: width of the shared conv and the branches.
        velocity: also regress ``(vx, vy)``.
        min_radius: smallest Gaussian radius, in cells.
        reg_weight: weight of the L1 regression terms against the heatmap loss.
        score_threshold: decoding keeps scores above this.
        max_detections: decoding keeps at most this many boxes per sample.
        circle_nms: after the 3x3 peak pick, drop a box when a higher-scoring box of its class
            lies within its class's :data:`NMS_RADIUS` (vectorised "fast NMS": every pair at once).

    Example:
        >>> head = BEVDetectionHead({4: 16, 8: 32}, x_range=(-16, 16), y_range=(-16, 16), resolution=0.5)
        >>> feats = EncoderFeatures(torch.zeros(1, 4, 64), (2, 2),
        ...                         {4: torch.zeros(1, 16, 16, 16), 8: torch.zeros(1, 32, 8, 8)}, (64, 64))
        >>> head(feats).heatmap.shape
        torch.Size([1, 10, 16, 16])
    """

    task = "driving.bev_detection"

    def __init__(self, channels: Mapping[int, int], num_classes: int = len(DETECTION_CLASSES), *,
                 x_range: Sequence[float] = (-51.2, 51.2), y_range: Sequence[float] = (-51.2, 51.2),
                 resolution: float = 0.2, strides: Sequence[int] | None = None, head_channels: int = 64,
                 velocity: bool = False, min_radius: int = 2, reg_weight: float = 0.25,
                 score_threshold: float = 0.1, max_detections: int = 100, circle_nms: bool = True) -> None:
        if not isinstance(num_classes, int) or not 1 <= num_classes <= len(DETECTION_CLASSES):
            raise ValueError(f"num_classes must be an int in [1, {len(DETECTION_CLASSES)}], got {num_classes!r}")
        if len(x_range) != 2 or len(y_range) != 2 or not (x_range[0] < x_range[1] and y_range[0] < y_range[1]):
            raise ValueError(f"x_range and y_range must be (min, max) with min < max, got {x_range}, {y_range}")
        if not resolution > 0:
            raise ValueError(f"resolution must be > 0 metres, got {resolution!r}")
        if head_channels < 1 or min_radius < 0 or reg_weight < 0 or max_detections < 1:
            raise ValueError(f"expected head_channels >= 1, min_radius >= 0, reg_weight >= 0, max_detections >= 1; "
                             f"got {head_channels}, {min_radius}, {reg_weight}, {max_detections}")
        if not 0 <= score_threshold < 1:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold!r}")
        super().__init__(channels)
        if strides is None:
            strides = [s for s in (4, 8, 16) if s in self.channels] or [min(self.channels)]
        self.decoder = UNetDecoder(self.channels, strides)
        self.strides = self.decoder.strides
        self.out_stride = self.decoder.out_stride
        self.num_classes = num_classes
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.y_range = (float(y_range[0]), float(y_range[1]))
        self.resolution = float(resolution)
        self.cell = self.resolution * self.out_stride
        self.velocity = bool(velocity)
        self.min_radius = int(min_radius)
        self.reg_weight = float(reg_weight)
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.circle_nms = bool(circle_nms)
        self.register_buffer("nms_radius", torch.tensor([NMS_RADIUS[c] for c in DETECTION_CLASSES[:num_classes]]),
                             persistent=False)
        c = head_channels
        self.shared = ConvNormAct(self.decoder.out_channels, c, 3)

        def branch(out: int, bias: float = 0.0) -> nn.Sequential:
            seq = nn.Sequential(ConvNormAct(c, c, 3), nn.Conv2d(c, out, 1))
            nn.init.constant_(seq[-1].bias, bias)
            return seq

        self.heatmap = branch(num_classes, -2.19)  # sigmoid(-2.19) = 0.1, CenterPoint's prior
        self.reg = branch(2 + 1 + 3 + 2 + (2 if self.velocity else 0))

    # -- forward ---------------------------------------------------------------------------
    def forward(self, features: EncoderFeatures) -> BEVDetectionOutput:
        pyramid = dict(zip(self.strides, self.levels(features, self.strides), strict=True))
        x = self.shared(self.decoder(pyramid))
        reg = self.reg(x)
        return BEVDetectionOutput(
            heatmap=self.heatmap(x), offset=reg[:, 0:2], z=reg[:, 2:3], size=reg[:, 3:6], rot=reg[:, 6:8],
            velocity=reg[:, 8:10] if self.velocity else None)

    # -- targets and loss ------------------------------------------------------------------
    def _cells(self, xy: torch.Tensor) -> torch.Tensor:
        origin = xy.new_tensor([self.x_range[0], self.y_range[0]])
        return (xy - origin) / self.cell

    def build_targets(self, boxes: Sequence[Boxes3D], shape: tuple[int, int],
                      device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Heatmap and regression targets of a batch of ground truth (every box at once).

        Args:
            boxes: one :class:`Boxes3D` per sample (LiDAR frame).
            shape: ``(h, w)`` of the heatmap.
            device: where to build them.

        Returns:
            ``heatmap (B, K, h, w)``, and for the ``n`` boxes whose centre is on the map:
            ``batch, row, col (n,)``, ``reg (n, 8 or 10)`` targets (offset, z, log size, sin, cos,
            velocity) and ``reg_mask (n, 8 or 10)``.
        """
        h, w = shape
        k = self.num_classes
        arr = [torch.as_tensor(b.boxes, dtype=torch.float32) for b in boxes]
        labels = torch.cat([torch.as_tensor(b.labels) for b in boxes]).to(device) if boxes else torch.zeros(0)
        batch = torch.cat([torch.full((len(b),), i) for i, b in enumerate(boxes)]).to(device)
        gt = torch.cat(arr).to(device) if arr else torch.zeros(0, 7, device=device)
        vel = torch.cat([torch.as_tensor(b.velocity if b.velocity is not None else np.full((len(b), 2), np.nan),
                                         dtype=torch.float32) for b in boxes]).to(device)
        keep = labels < k
        cells = self._cells(gt[:, :2])
        ci = cells.floor().long()
        keep &= (ci[:, 0] >= 0) & (ci[:, 0] < w) & (ci[:, 1] >= 0) & (ci[:, 1] < h)
        gt, labels, batch, cells, ci, vel = gt[keep], labels[keep], batch[keep], cells[keep], ci[keep], vel[keep]
        radius = gaussian_radius(gt[:, 3] / self.cell, gt[:, 4] / self.cell).floor().clamp(min=self.min_radius)
        sigma = (2 * radius + 1) / 6
        ys = torch.arange(h, device=device, dtype=torch.float32)
        xs = torch.arange(w, device=device, dtype=torch.float32)
        dy = ys[None, :, None] - ci[:, 1, None, None]
        dx = xs[None, None, :] - ci[:, 0, None, None]
        g = torch.exp(-(dx**2 + dy**2) / (2 * sigma[:, None, None] ** 2))
        g = g * ((dx.abs() <= radius[:, None, None]) & (dy.abs() <= radius[:, None, None]))
        heat = torch.zeros(len(boxes) * k, h * w, device=device)
        index = (batch * k + labels)[:, None].expand(-1, h * w)
        heat.scatter_reduce_(0, index, g.view(-1, h * w), "amax")  # overlapping Gaussians: the max
        heat = heat.view(len(boxes), k, h, w)
        heat[batch, labels, ci[:, 1], ci[:, 0]] = 1.0
        reg = torch.cat([cells - ci, gt[:, 2:3], gt[:, 3:6].clamp(min=1e-3).log(),
                         torch.sin(gt[:, 6:7]), torch.cos(gt[:, 6:7])], 1)
        if self.velocity:
            reg = torch.cat([reg, vel], 1)
        mask = torch.isfinite(reg)
        return {"heatmap": heat, "batch": batch, "row": ci[:, 1], "col": ci[:, 0],
                "reg": torch.nan_to_num(reg), "reg_mask": mask.to(torch.float32)}

    def loss(self, output: BEVDetectionOutput, targets: Sequence[Boxes3D] | Mapping[str, torch.Tensor]
             ) -> dict[str, torch.Tensor]:
        """Focal heatmap loss plus ``reg_weight`` times the L1 regression loss at box centres.

        Args:
            output: this head's output.
            targets: one :class:`Boxes3D` per sample, or what :meth:`build_targets` returned.

        Returns:
            ``{"loss", "heatmap", "offset", "z", "size", "rot"[, "velocity"], "num_boxes"}``.
        """
        shape = tuple(output.heatmap.shape[-2:])
        if not isinstance(targets, Mapping):
            if len(targets) != output.heatmap.shape[0]:
                raise ValueError(f"expected {output.heatmap.shape[0]} Boxes3D (one per sample), got {len(targets)}")
            targets = self.build_targets(targets, shape, output.heatmap.device)
        heat = centernet_focal_loss(output.heatmap.float(), targets["heatmap"])
        parts = [output.offset, output.z, output.size, output.rot] + ([output.velocity] if self.velocity else [])
        pred = torch.cat(parts, 1).float()[targets["batch"], :, targets["row"], targets["col"]]  # (n, R)
        mask = targets["reg_mask"]
        l1 = (pred - targets["reg"]).abs() * mask
        n = max(1, len(pred))
        names = {"offset": slice(0, 2), "z": slice(2, 3), "size": slice(3, 6), "rot": slice(6, 8)}
        if self.velocity:
            names["velocity"] = slice(8, 10)
        comps = {k: l1[:, s].sum() / n for k, s in names.items()}
        reg = sum(comps.values())
        total = heat + self.reg_weight * reg
        return {"loss": total, "heatmap": heat.detach(), **{k: v.detach() for k, v in comps.items()},
                "num_boxes": torch.tensor(float(len(pred)))}

    # -- decoding --------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, output: BEVDetectionOutput, score_threshold: float | None = None,
               max_detections: int | None = None) -> list[Boxes3D]:
        """3D boxes in the LiDAR frame, one :class:`Boxes3D` (with scores) per sample.

        Args:
            output: this head's output.
            score_threshold: override of the head's threshold.
            max_detections: override of the head's maximum per sample.
        """
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        top = self.max_detections if max_detections is None else int(max_detections)
        heat = torch.sigmoid(output.heatmap.float())
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
        b, k, h, w = heat.shape
        scores, idx = peaks.flatten(1).topk(min(top, k * h * w), dim=1)
        cls = idx // (h * w)
        row = (idx % (h * w)) // w
        col = idx % w
        bi = torch.arange(b, device=heat.device)[:, None].expand_as(idx)

        def at(t: torch.Tensor) -> torch.Tensor:
            return t.float()[bi, :, row, col]  # (b, top, C)

        off, z, size, rot = at(output.offset), at(output.z), at(output.size), at(output.rot)
        cells = torch.stack([col, row], -1).float() + off
        xy = cells * self.cell + heat.new_tensor([self.x_range[0], self.y_range[0]])
        yaw = torch.atan2(rot[..., 0], rot[..., 1])
        boxes = torch.cat([xy, z, size.clamp(max=5).exp(), yaw[..., None]], -1).cpu().numpy()
        vel = at(output.velocity).cpu().numpy() if output.velocity is not None else None
        keep = scores > thr
        if self.circle_nms:  # scores are sorted: j < i means j scores higher
            d2 = (xy[:, :, None, :] - xy[:, None, :, :]).pow(2).sum(-1)  # (b, top, top)
            r = self.nms_radius.to(xy.device)[cls]
            close = (d2 < (r * r)[:, :, None]) & (cls[:, :, None] == cls[:, None, :])
            higher = torch.ones_like(close[0]).tril(-1).bool()  # [i, j] = j < i
            keep &= ~(close & higher & keep[:, None, :]).any(-1)
        keep_np, scores_np, cls_np = keep.cpu().numpy(), scores.cpu().numpy(), cls.cpu().numpy()
        out = []
        for i in range(b):
            m = keep_np[i]
            out.append(Boxes3D(boxes[i][m], cls_np[i][m], scores_np[i][m], None if vel is None else vel[i][m]))
        return out

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, cell={self.cell} m, x_range={self.x_range}, "
                f"y_range={self.y_range}, velocity={self.velocity}")

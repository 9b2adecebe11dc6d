"""Dense depth regression: the U-Net decoder, a positive output, and the scale-invariant log loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.heads.base import Head
from vlsdk.heads.segmentation import UNetDecoder
from vlsdk.models.features import EncoderFeatures

__all__ = ["DepthHead", "DepthOutput", "silog_loss"]


@dataclass
class DepthOutput:
    """What :class:`DepthHead` returns.

    Attributes:
        depth: ``(B, 1, H, W)`` positive depth at the input image size (same unit as the targets).
    """

    depth: torch.Tensor


def silog_loss(pred: torch.Tensor, target: torch.Tensor, lam: float = 0.85, min_depth: float = 1e-3) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014) over valid pixels, averaged over images.

    Per image, with ``d = log(pred) - log(target)`` over its ``n`` valid pixels (``target > 0``
    and finite): ``mean(d^2) - lam * mean(d)^2``. ``lam = 1`` makes it invariant to a global
    scale of ``pred``; ``lam = 0`` is plain log-MSE. Images without a valid pixel are skipped; a
    batch without any gives 0, still connected to ``pred`` so ``backward`` works.

    Args:
        pred: ``(B, 1, H, W)`` or ``(B, H, W)`` positive predictions.
        target: same shape; 0 (or negative, or non-finite) = no measurement.
        lam: variance weight ``lambda`` in ``[0, 1]``.
        min_depth: predictions are clamped to at least this before the log.

    Example:
        >>> t = torch.tensor([[[0.0, 2.0], [4.0, 8.0]]])
        >>> float(silog_loss(3 * t.clamp(min=1), t, lam=1.0)) < 1e-6
        True
    """
    if pred.shape != target.shape:
        raise ValueError(f"expected pred and target of the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    valid = (target > 0) & torch.isfinite(target)
    d = torch.where(valid, pred.clamp(min=min_depth).log() - torch.where(valid, target, 1.0).log(), 0.0)
    validf = valid.flatten(1).to(pred.dtype)
    d = d.flatten(1)
    n = validf.sum(1)
    mean_d = d.sum(1) / n.clamp(min=1)
    mean_d2 = (d * d).sum(1) / n.clamp(min=1)
    per_image = mean_d2 - lam * mean_d * mean_d
    has = n > 0
    return (per_image * has).sum() / has.sum().clamp(min=1)  # still a function of pred when empty


class DepthHead(Head):
    """Dense depth head: :class:`UNetDecoder` -> 1x1 conv -> bilinear to image size -> positive.

    Args:
        channels: stride -> channels of the encoder's pyramid.
        max_depth: with ``activation="sigmoid"``, depth is ``max_depth * sigmoid(x)``.
        activation: ``"sigmoid"`` (bounded, ``(0, max_depth)``) or ``"softplus"``
            (``softplus(x) + min_depth``, unbounded).
        min_depth: floor of the prediction inside the log of the loss (and of softplus output).
        strides: pyramid levels to decode from (default: all).
        decoder_channels: decoder width per level, coarsest first (see :class:`UNetDecoder`).
        si_lambda: ``lambda`` of the scale-invariant log loss.

    Example:
        >>> head = DepthHead({4: 8, 8: 16}, max_depth=10.0)
        >>> feats = EncoderFeatures(torch.zeros(1, 4, 16), (2, 2),
        ...                         {4: torch.zeros(1, 8, 8, 8), 8: torch.zeros(1, 16, 4, 4)}, (30, 32))
        >>> head(feats).depth.shape
        torch.Size([1, 1, 30, 32])
    """

    task = "depth"

    def __init__(self, channels: Mapping[int, int], max_depth: float = 80.0,
                 activation: Literal["sigmoid", "softplus"] = "sigmoid", min_depth: float = 1e-3,
                 strides: Sequence[int] | None = None, decoder_channels: Sequence[int] | None = None,
                 si_lambda: float = 0.85) -> None:
        if activation not in ("sigmoid", "softplus"):
            raise ValueError(f"expected activation 'sigmoid' or 'softplus', got {activation!r}")
        if not 0 < min_depth < max_depth:
            raise ValueError(f"expected 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
        if not 0 <= si_lambda <= 1:
            raise ValueError(f"expected si_lambda in [0, 1], got {si_lambda}")
        super().__init__(channels)
        self.max_depth = float(max_depth)
        self.min_depth = float(min_depth)
        self.activation = activation
        self.si_lambda = float(si_lambda)
        self.decoder = UNetDecoder(self.channels, strides, decoder_channels)
        self.strides = self.decoder.strides
        self.regressor = nn.Conv2d(self.decoder.out_channels, 1, 1)

    def forward(self, features: EncoderFeatures) -> DepthOutput:
        pyramid = dict(zip(self.strides, self.levels(features, self.strides), strict=True))
        x = self.regressor(self.decoder(pyramid))
        x = F.interpolate(x, size=tuple(features.image_size), mode="bilinear", align_corners=False)
        if self.activation == "sigmoid":
            depth = self.max_depth * torch.sigmoid(x)
        else:
            depth = F.softplus(x) + self.min_depth
        return DepthOutput(depth)

    def loss(self, output: DepthOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scale-invariant log loss on the pixels with a measurement.

        Args:
            output: this head's output.
            targets: ``(B, 1, H, W)`` or ``(B, H, W)`` depth at the output's size, 0 = no
                measurement (sparse LiDAR).

        Returns:
            ``{"loss", "silog", "valid_fraction"}``.
        """
        pred = output.depth
        if targets.dim() == 3:
            targets = targets[:, None]
        if targets.shape != pred.shape:
            raise ValueError(f"expected targets of shape {tuple(pred.shape)} or "
                             f"{tuple(pred.shape[:1] + pred.shape[2:])}, got {tuple(targets.shape)}")
        targets = targets.to(pred.dtype)
        loss = silog_loss(pred, targets, self.si_lambda, self.min_depth)
        valid = ((targets > 0) & torch.isfinite(targets)).to(pred.dtype).mean()
        return {"loss": loss, "silog": loss.detach(), "valid_fraction": valid}

    @torch.no_grad()
    def decode(self, output: DepthOutput) -> torch.Tensor:
        """``(B, H, W)`` depth map."""
        return output.depth.detach()[:, 0]

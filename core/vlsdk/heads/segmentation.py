"""Semantic segmentation: a U-Net decoder over the feature pyramid, CE/BCE + soft Dice loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.heads.base import ConvNormAct, Head, resolve_strides
from vlsdk.models.features import EncoderFeatures

__all__ = ["UNetDecoder", "SegmentationHead", "SegmentationOutput", "SegmentationPrediction", "soft_dice"]


class UNetDecoder(nn.Module):
    """U-Net decoder: from the coarsest pyramid level up through the finer ones, with skips.

    At each finer level the running map is upsampled (bilinear, to the skip map's exact size, so
    odd and non-square sizes work), concatenated with the skip map and fused by two 3x3
    :class:`ConvNormAct`. The result lives at the finest stride used.

    Args:
        channels: stride -> channels of the encoder's pyramid.
        strides: the levels to use (default: all of them).
        decoder_channels: width after each level, coarsest first (default: 128 halving at each
            finer level, at least 32).

    Example:
        >>> dec = UNetDecoder({4: 8, 8: 16, 16: 32})
        >>> pyr = {4: torch.zeros(1, 8, 13, 9), 8: torch.zeros(1, 16, 7, 5), 16: torch.zeros(1, 32, 4, 3)}
        >>> dec(pyr).shape, dec.out_stride
        (torch.Size([1, 32, 13, 9]), 4)
    """

    def __init__(self, channels: Mapping[int, int], strides: Sequence[int] | None = None,
                 decoder_channels: Sequence[int] | None = None) -> None:
        levels = resolve_strides(channels, strides)[::-1]  # coarsest first
        if decoder_channels is None:
            decoder_channels = [max(32, 128 >> i) for i in range(len(levels))]
        widths = [int(c) for c in decoder_channels]
        if len(widths) != len(levels) or min(widths) < 1:
            raise ValueError(f"expected {len(levels)} positive decoder_channels (one per stride {levels}, coarsest "
                             f"first), got {tuple(decoder_channels)}")
        super().__init__()
        self.strides = levels
        self.stem = ConvNormAct(channels[levels[0]], widths[0], 3)
        self.blocks = nn.ModuleList(
            nn.Sequential(ConvNormAct(widths[i - 1] + channels[levels[i]], widths[i], 3),
                          ConvNormAct(widths[i], widths[i], 3))
            for i in range(1, len(levels))
        )
        self.out_channels = widths[-1]
        self.out_stride = levels[-1]

    def forward(self, pyramid: Mapping[int, torch.Tensor]) -> torch.Tensor:
        x = self.stem(pyramid[self.strides[0]])
        for stride, block in zip(self.strides[1:], self.blocks, strict=True):
            skip = pyramid[stride]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat((x, skip), dim=1))
        return x


@dataclass
class SegmentationOutput:
    """What :class:`SegmentationHead` returns.

    Attributes:
        logits: ``(B, C, H, W)`` class logits at the input image size (``C = 1``: binary, sigmoid).
    """

    logits: torch.Tensor


@dataclass
class SegmentationPrediction:
    """Decoded segmentation.

    Attributes:
        labels: ``(B, H, W)`` long label map (0/1 for a binary head).
        probs: ``(B, C, H, W)`` class probabilities (softmax; sigmoid foreground for ``C = 1``).
    """

    labels: torch.Tensor
    probs: torch.Tensor


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice per class over the batch, ``(C,)``, counting only ``valid`` pixels.

    Args:
        probs: ``(B, C, H, W)`` probabilities.
        onehot: ``(B, C, H, W)`` 0/1 targets.
        valid: ``(B, 1, H, W)`` or broadcastable 0/1 mask of pixels to count.
        eps: keeps empty classes finite.

    Example:
        >>> p = torch.ones(1, 1, 2, 2)
        >>> soft_dice(p, p, torch.ones(1, 1, 2, 2))
        tensor([1.])
    """
    dims = (0, 2, 3)
    probs, onehot = probs * valid, onehot * valid
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return (2 * inter + eps) / (denom + eps)


class SegmentationHead(Head):
    """Semantic segmentation head: :class:`UNetDecoder` -> 1x1 classifier -> bilinear to image size.

    Args:
        channels: stride -> channels of the encoder's pyramid.
        num_classes: number of classes; 1 means binary (sigmoid, foreground = label 1).
        strides: pyramid levels to decode from (default: all, i.e. 4 and 8 from the CNN stem plus
            the ViT levels).
        decoder_channels: decoder width per level, coarsest first (see :class:`UNetDecoder`).
        ignore_index: label value excluded from the loss.
        dice_weight: weight of the soft Dice term against cross-entropy.

    Example:
        >>> head = SegmentationHead({4: 8, 8: 16}, num_classes=3)
        >>> feats = EncoderFeatures(torch.zeros(1, 4, 16), (2, 2),
        ...                         {4: torch.zeros(1, 8, 8, 8), 8: torch.zeros(1, 16, 4, 4)}, (30, 32))
        >>> head(feats).logits.shape
        torch.Size([1, 3, 30, 32])
    """

    task = "segmentation"

    def __init__(self, channels: Mapping[int, int], num_classes: int, strides: Sequence[int] | None = None,
                 decoder_channels: Sequence[int] | None = None, ignore_index: int = 255,
                 dice_weight: float = 1.0) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"expected num_classes >= 1 (1 = binary), got {num_classes}")
        if dice_weight < 0:
            raise ValueError(f"expected dice_weight >= 0, got {dice_weight}")
        super().__init__(channels)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.dice_weight = float(dice_weight)
        self.decoder = UNetDecoder(self.channels, strides, decoder_channels)
        self.strides = self.decoder.strides
        self.classifier = nn.Conv2d(self.decoder.out_channels, self.num_classes, 1)

    def forward(self, features: EncoderFeatures) -> SegmentationOutput:
        pyramid = dict(zip(self.strides, self.levels(features, self.strides), strict=True))
        logits = self.classifier(self.decoder(pyramid))
        logits = F.interpolate(logits, size=tuple(features.image_size), mode="bilinear", align_corners=False)
        return SegmentationOutput(logits)

    def loss(self, output: SegmentationOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy (BCE when binary) plus soft Dice.

        Args:
            output: this head's output.
            targets: ``(B, H, W)`` long label map at the logits' size; ``ignore_index`` pixels
                count nowhere.

        Returns:
            ``{"loss", "ce", "dice"}``; ``"dice"`` is ``1 - mean Dice`` over the classes present
            in the (valid) targets, 0 when none is.
        """
        logits = output.logits
        b, c, h, w = logits.shape
        if targets.shape != (b, h, w):
            raise ValueError(f"expected targets of shape {(b, h, w)} (a label map per image), "
                             f"got {tuple(targets.shape)}")
        targets = targets.long()
        valid = targets != self.ignore_index
        labels = torch.where(valid, targets, 0)
        if bool(((labels < 0) | (labels >= max(c, 2))).any()):
            raise ValueError(f"expected labels in [0, {max(c, 2)}) or ignore_index={self.ignore_index}, "
                             f"got values {labels.unique().tolist()}")
        validf = valid[:, None].to(logits.dtype)
        if c == 1:
            fg = labels[:, None].to(logits.dtype)
            ce = F.binary_cross_entropy_with_logits(logits, fg, weight=validf, reduction="sum")
            ce = ce / validf.sum().clamp(min=1)
            probs, onehot = torch.sigmoid(logits), fg
        else:
            ce = F.cross_entropy(logits, targets, ignore_index=self.ignore_index, reduction="sum")
            ce = ce / valid.sum().clamp(min=1)
            probs = logits.softmax(1)
            onehot = F.one_hot(labels, c).permute(0, 3, 1, 2).to(logits.dtype)
        dice = soft_dice(probs, onehot, validf)
        present = (onehot * validf).sum((0, 2, 3)) > 0
        dice_loss = ((1 - dice) * present).sum() / present.sum().clamp(min=1)
        return {"loss": ce + self.dice_weight * dice_loss, "ce": ce.detach(), "dice": dice_loss.detach()}

    @torch.no_grad()
    def decode(self, output: SegmentationOutput, threshold: float = 0.5) -> SegmentationPrediction:
        """Label map and probabilities.

        Args:
            output: this head's output.
            threshold: foreground probability threshold of a binary head.
        """
        logits = output.logits.detach()
        if logits.shape[1] == 1:
            probs = torch.sigmoid(logits)
            return SegmentationPrediction((probs[:, 0] > threshold).long(), probs)
        probs = logits.softmax(1)
        return SegmentationPrediction(probs.argmax(1), probs)

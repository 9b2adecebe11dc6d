"""ResNet-18-style convolutional stem: low-level features at stride 4 and stride 8."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ConvStem", "norm2d"]


def norm2d(kind: str, channels: int) -> nn.Module:
    """``"batch"`` (BatchNorm, fuses into convs for export) or ``"group"`` (GroupNorm, batch-size free)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convolutions with batch norm and a residual path."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = norm2d(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = norm2d(norm, out_ch)
        self.act = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or in_ch != out_ch:
            self.down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm2d(norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + skip)


class ConvStem(nn.Module):
    """ResNet-18 ``conv1 -> maxpool -> layer1 -> layer2``, keeping the stride-4 and stride-8 maps.

    Args:
        in_chans: input channels (1, 3 or more).
        widths: channels at stride 4 and stride 8.
        blocks: basic blocks in each of the two stages.
        norm: ``"batch"`` or ``"group"`` normalisation.
        entry: ``"resnet"`` (``conv1`` 7x7 stride 2, then a 3x3 stride-2 max-pool) or ``"patchify"``
            (``conv1`` 4x4 stride 4 and no pool, ConvNeXt's stem; the image is zero-padded to a
            multiple of 4, so both give ``ceil(H / 4)`` rows).

    Example:
        >>> f4, f8 = ConvStem(1, (16, 32))(torch.zeros(2, 1, 64, 64))
        >>> f4.shape, f8.shape
        (torch.Size([2, 16, 16, 16]), torch.Size([2, 32, 8, 8]))
    """

    def __init__(self, in_chans: int, widths: tuple[int, int] = (64, 128), blocks: tuple[int, int] = (2, 2),
                 norm: str = "batch", entry: str = "resnet") -> None:
        super().__init__()
        if in_chans < 1 or min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"ConvStem needs positive in_chans, widths and blocks, got {in_chans}, {widths}, {blocks}")
        if entry not in ("resnet", "patchify"):
            raise ValueError(f"ConvStem entry must be 'resnet' or 'patchify', got {entry!r}")
        c4, c8 = widths
        self.patchify = entry == "patchify"
        self.conv1 = nn.Conv2d(in_chans, c4, 4, 4, bias=False) if self.patchify else \
            nn.Conv2d(in_chans, c4, 7, 2, 3, bias=False)
        self.bn1 = norm2d(norm, c4)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.Identity() if self.patchify else nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(*[BasicBlock(c4, c4, norm=norm) for _ in range(blocks[0])])
        self.layer2 = nn.Sequential(BasicBlock(c4, c8, 2, norm),
                                    *[BasicBlock(c8, c8, norm=norm) for _ in range(blocks[1] - 1)])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.patchify:
            x = F.pad(x, (0, (-x.shape[-1]) % 4, 0, (-x.shape[-2]) % 4))
        f4 = self.layer1(self.pool(self.act(self.bn1(self.conv1(x)))))
        return f4, self.layer2(f4)

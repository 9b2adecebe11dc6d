"""The plain-ViT side of ``BackboneConfig(stem="patch")``: pyramid levels 4 and 8 from the token map.

A plain ViT has one token stride (16), but the detection, segmentation and depth heads read the
pyramid at strides 4 and 8 as well. Following ViTDet's *simple feature pyramid* (Li et al. 2022,
"Exploring Plain Vision Transformer Backbones for Object Detection"), those levels are made by
learned upsampling (transposed convolutions with kernel = stride: 2x2 for stride-16 tokens) of
the token map, with no CNN features at all. The two levels are chained (stride 4 upsamples the
stride-8 output) so the 4x path shares its first convolution, and each transposed convolution is
followed by a norm and a GELU.
The heads bring their own 3x3 convolutions, so no refinement convolution is added here.
"""

from __future__ import annotations

import torch
from torch import nn

from vlsdk.models.stem import norm2d

__all__ = ["SimpleFeaturePyramid", "upsample"]


def upsample(in_ch: int, out_ch: int, norm: str, scale: int) -> nn.Sequential:
    """ViTDet's learned upsampling: a ``scale x scale`` transposed convolution (stride ``scale``), norm, GELU."""
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, scale, scale), norm2d(norm, out_ch), nn.GELU())


class SimpleFeaturePyramid(nn.Module):
    """Upsample a token map (stride 16 by default) to the stride-8 and stride-4 pyramid levels.

    The outputs are cropped to ``ceil(H / 8)`` and ``ceil(H / 4)`` (likewise for ``W``), the sizes
    the CNN stem gives, so heads see the same shapes whichever stem built the pyramid.

    Args:
        dim: channels of the token map (the ViT width).
        widths: output channels at stride 4 and stride 8.
        stride: stride of the token map, a multiple of 8 (``8 * patch_size``).
        norm: ``"batch"`` or ``"group"`` normalisation after each transposed convolution.

    Example:
        >>> sfp = SimpleFeaturePyramid(64, (16, 32))
        >>> f4, f8 = sfp(torch.zeros(2, 64, 5, 6), image_size=(70, 96))
        >>> f4.shape, f8.shape
        (torch.Size([2, 16, 18, 24]), torch.Size([2, 32, 9, 12]))
    """

    def __init__(self, dim: int, widths: tuple[int, int] = (64, 128), norm: str = "batch", stride: int = 16) -> None:
        super().__init__()
        if dim < 1 or len(widths) != 2 or min(widths) < 1:
            raise ValueError(f"SimpleFeaturePyramid needs a positive dim and two positive widths, got {dim}, {widths}")
        if stride < 8 or stride % 8:
            raise ValueError(f"SimpleFeaturePyramid needs a token stride that is a multiple of 8, got {stride}")
        c4, c8 = widths
        self.up8 = upsample(dim, c8, norm, stride // 8)
        self.up4 = upsample(c8, c4, norm, 2)

    def forward(self, x16: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, dim, h, w)`` token map -> ``(f4, f8)``, cropped to the image's strided size."""
        h, w = image_size
        f8 = self.up8(x16)
        f4 = self.up4(f8)
        return f4[..., : -(-h // 4), : -(-w // 4)], f8[..., : -(-h // 8), : -(-w // 8)]

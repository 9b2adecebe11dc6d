"""4-bit group-wise weight-only quantisation of frozen ``nn.Linear`` layers (QLoRA-style), plain torch.

Each :class:`Int4Linear` keeps its weight as unsigned 4-bit values, two per byte, with one
bfloat16 scale and one bfloat16 zero per group of ``group_size`` consecutive input weights of a
row (asymmetric min/max, the convention of torch's ``_weight_int4pack_mm`` and torchao's int4
weight-only layout; a layer whose width the group does not divide takes a nearby group,
:func:`layer_group_size`)::

    w[o, i] ~= (q[o, i] - 8) * scale[o, i // group_size] + zero[o, i // group_size]

At the default group of 128 that is 0.5 + 4/128 bytes per weight: about 0.27x of bfloat16 and
0.13x of float32. The forward dequantises the weight in float32 and multiplies in the input's
dtype. Gradients reach the input exactly (LoRA adapters upstream train through the layer), and
the backward dequantises again instead of keeping the float weight alive in between.

Why not an int4 kernel: on this project's CPU (2 cores, AVX-512 with bf16), at ``base``'s shapes
and 64-4096 tokens, torch's ``_weight_int4pack_mm_for_cpu`` ran at 0.38-0.63x the speed of a
bfloat16 ``F.linear`` where dequantising and then ``F.linear`` ran at 0.45-0.99x, and 60-100x
slower than float32 for float32 inputs (``benchmarks/int4_base.py``, BENCHMARKS.md). Its packed
layout also depends on the CPU's instruction set, so it could not be the saved format. The weight here
is stored in a portable nibble order: byte ``j`` of a row holds input ``2j`` in its low and
``2j + 1`` in its high four bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlsdk.quant.base import QuantizedLinear, require_finite

__all__ = ["Int4Linear", "quantize_weight_int4", "layer_group_size", "DEFAULT_GROUP_SIZE"]

#: input weights per scale/zero pair (torchao's int4 weight-only default)
DEFAULT_GROUP_SIZE = 128


def _groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def _check_group_size(group_size: object) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be a positive even integer, got {group_size!r}")


def layer_group_size(in_features: int, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """The group a layer of width ``in_features`` uses when ``group_size`` is asked for.

    The width splits into as few groups as ``group_size`` allows, of equal size rounded up to an
    even number, so at most one input per group is padding.

    Raises:
        ValueError: ``group_size`` is not a positive even integer.

    Example:
        >>> [layer_group_size(k, 128) for k in (768, 192, 97, 130, 1000)]
        [128, 96, 98, 66, 126]
    """
    _check_group_size(group_size)
    size = -(-in_features // _groups(in_features, group_size))
    return size + size % 2


def quantize_weight_int4(weight: torch.Tensor,
                         group_size: int = DEFAULT_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise 4-bit weight: ``(qweight, scale_zero)``.

    ``qweight`` is uint8 ``(out, groups * group_size / 2)``, two values a byte; ``scale_zero`` is
    bfloat16 ``(out, groups, 2)``.

    The zero is rounded to bfloat16 first and the scale then chosen to reach both ends of the
    group from it, so a group far from 0 with a narrow range keeps its precision. A row whose
    width is not a multiple of ``group_size`` is padded with copies of its last value (which
    leave the last group's range as it is). A group of equal values is exact where its value is
    a bfloat16 number.

    Args:
        weight: a float ``(out_features, in_features)`` weight.
        group_size: input weights per scale and zero; an even number.

    Raises:
        ValueError: not a 2-D weight, a weight holding NaN or infinity or values too large for
            bfloat16 scales (the row is named), or an odd or non-positive ``group_size``.

    Example:
        >>> q, sz = quantize_weight_int4(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), group_size=4)
        >>> q.shape, sz.shape, [round(v, 3) for v in sz[0, 0].float().tolist()]
        (torch.Size([1, 2]), torch.Size([1, 1, 2]), [0.2, 1.602])
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D (out_features, in_features) weight, got shape {tuple(weight.shape)}")
    _check_group_size(group_size)
    w = require_finite(weight)
    out_features, in_features = w.shape
    groups = _groups(in_features, group_size)
    pad = groups * group_size - in_features
    if pad:
        w = F.pad(w.unsqueeze(0), (0, pad), mode="replicate").squeeze(0)
    w = w.view(out_features, groups, group_size)
    low, high = w.amin(-1), w.amax(-1)
    zero = (low + (high - low) * (8 / 15)).bfloat16()  # q = 8; q = 0 at the minimum, 15 at the maximum
    scale = torch.maximum((high - zero.float()) / 7, (zero.float() - low) / 8).bfloat16()
    scale_zero = torch.stack([scale, zero], dim=-1)
    if not torch.isfinite(scale_zero).all():
        row = int((~torch.isfinite(scale_zero)).nonzero()[0, 0])
        raise ValueError(f"row {row} of the weight spans values too large for bfloat16 scales "
                         f"(max |w| {float(w[row].abs().max()):.3g})")
    safe = torch.where(scale == 0, 1.0, scale.float())
    q = torch.round((w - zero.float()[..., None]) / safe[..., None] + 8).clamp_(0, 15).to(torch.uint8)
    q = q.view(out_features, groups * group_size)
    return q[:, 0::2] | (q[:, 1::2] << 4), scale_zero


class Int4Linear(QuantizedLinear):
    """A frozen linear layer with a 4-bit group-wise weight, bfloat16 scales and zeros, and a float bias.

    Build one from a trained layer with :meth:`from_linear`; :meth:`dequantize` gives an
    ``nn.Linear`` back (with the rounding of the quantisation).

    Args:
        in_features: input width.
        out_features: output width.
        bias: keep a bias (a float buffer).
        device: where the buffers live.
        dtype: float dtype of the bias.
        group_size: input weights per scale/zero pair asked for (an even number; default 128);
            the layer uses :func:`layer_group_size` of it, which avoids padding where it can.

    Raises:
        ValueError: a size below 1 or a bad ``group_size``; in the forward, an input of the wrong width.

    Example:
        >>> from torch import nn
        >>> q = Int4Linear.from_linear(nn.Linear(256, 8))
        >>> q.qweight.dtype, tuple(q.qweight.shape), q(torch.zeros(3, 256)).shape
        (torch.uint8, (8, 128), torch.Size([3, 8]))
    """

    bits = 4
    scale_buffers = ("scale_zero",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 group_size: int = DEFAULT_GROUP_SIZE) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.group_size = layer_group_size(in_features, group_size)
        groups = _groups(in_features, self.group_size)
        self.register_buffer("qweight", torch.full((out_features, groups * self.group_size // 2), 0x88,
                                                   dtype=torch.uint8, device=device))
        self.register_buffer("scale_zero", torch.zeros(out_features, groups, 2, dtype=torch.bfloat16, device=device))

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Re-quantise from a float ``(out_features, in_features)`` weight (e.g. after a LoRA merge)."""
        qweight, scale_zero = quantize_weight_int4(self._check_weight(weight), self.group_size)
        self.qweight.copy_(qweight)
        self.scale_zero.copy_(scale_zero)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the 4-bit one stands for (see the module doc)."""
        rows, groups = self.out_features, self.scale_zero.shape[1]
        w = torch.empty(*self.qweight.shape, 2, dtype=torch.float32, device=self.qweight.device)
        w[..., 0] = self.qweight & 15  # (in-place on one buffer: 10x faster on the CPU than stack + addcmul)
        w[..., 1] = self.qweight >> 4
        scale_zero = self.scale_zero.float()
        scale = scale_zero[..., :1]
        w = w.view(rows, groups, self.group_size).mul_(scale).add_(scale_zero[..., 1:] - 8 * scale)
        return w.view(rows, groups * self.group_size)[:, :self.in_features].to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._linear(x)

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        bias = self.bias.to(dtype) if self.bias is not None else None
        return F.linear(x.to(dtype), self.dequantize_weight(dtype), bias)

    def _input_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad @ self.dequantize_weight(grad.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}")

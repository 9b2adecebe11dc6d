"""What every frozen quantised linear layer of vlsdk shares: sizes, a float bias, float round trips.

:class:`QuantizedLinear` is the base of :class:`~vlsdk.quant.Int8Linear` and
:class:`~vlsdk.quant.Int4Linear`. A subclass stores its weight in buffers of its own format (the
main one named ``qweight``, the name peft looks for when it places an adapter beside a quantised
layer) and implements :meth:`~QuantizedLinear.set_weight` (quantise a float weight into them) and
:meth:`~QuantizedLinear.dequantize_weight` (the float weight they stand for); construction from
an ``nn.Linear``, the way back to one, and the input check come from here. peft LoRA builds its
adapter on any ``QuantizedLinear`` through that pair (``vlsdk.train.lora``).
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["QuantizedLinear", "require_finite"]

_Q = TypeVar("_Q", bound="QuantizedLinear")
_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def require_finite(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as float32, after checking that every value is finite (the first bad one is named)."""
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        where = ", column ".join(map(str, (~torch.isfinite(w)).nonzero()[0].tolist()))
        raise ValueError(f"cannot quantise a weight holding NaN or infinity (first at row {where}); "
                         "the float layer is broken")
    return w


class _FrozenLinear(torch.autograd.Function):
    """A quantised layer's float forward whose backward dequantises again, saving nothing.

    Autograd would keep the dequantised float weight (and the input) of every layer alive until
    the backward, several times the quantised weight's bytes, which would undo much of what a
    quantised base saves while LoRA trains above it; bitsandbytes' ``MatMul4Bit`` does the same.
    The layers are frozen, so only the input's gradient is computed.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer._float_forward(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.layer._input_grad(grad), None


class QuantizedLinear(nn.Module):
    """A frozen linear layer with a quantised weight (buffers only) and a float bias buffer.

    Args:
        in_features: input width.
        out_features: output width.
        bias: keep a bias (a float buffer).
        device: where the buffers live.
        dtype: float dtype of the bias.

    Raises:
        ValueError: a size below 1.
    """

    #: bits per stored weight value (8 or 4); set by each subclass
    bits: int = 0
    #: float buffers of the quantisation (scales, zeros) whose dtype ``.half()``, ``.bfloat16()``
    #: or ``.to(dtype)`` must not change: a float16 scale of small weights is subnormal
    scale_buffers: tuple[str, ...] = ()

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if in_features < 1 or out_features < 1:
            raise ValueError(f"{type(self).__name__} needs positive sizes, got in_features={in_features}, "
                             f"out_features={out_features}")
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias: torch.Tensor | None
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype or torch.float32, device=device))
        else:
            self.bias = None

    def _apply(self, fn: Any, recurse: bool = True) -> QuantizedLinear:
        """As ``nn.Module._apply``, with the scale buffers passed by dtype casts (device moves still
        move them): they ride as integer views of the same bytes, which casts leave alone."""
        kept = {name: self._buffers[name].dtype for name in self.scale_buffers if self._buffers.get(name) is not None}
        for name, dtype in kept.items():
            self._buffers[name] = self._buffers[name].view(_SAME_SIZE_INT[dtype.itemsize])
        try:
            return super()._apply(fn, recurse)
        finally:
            for name, dtype in kept.items():
                self._buffers[name] = self._buffers[name].view(dtype)

    @classmethod
    def from_linear(cls: type[_Q], linear: nn.Linear, **options: Any) -> _Q:
        """Quantise ``linear`` (its weight and bias are copied, ``linear`` is left untouched).

        Args:
            linear: the float layer.
            **options: keyword options of the subclass (``compute=``, ``group_size=``).

        Raises:
            ValueError: ``linear`` is not an ``nn.Linear``, its weight holds NaN or infinity, or an
                option is invalid.
        """
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"from_linear expects an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                     device=weight.device, dtype=weight.dtype, **options)
        module.set_weight(weight)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def set_weight(self, weight: torch.Tensor) -> None:
        """Re-quantise from a float ``(out_features, in_features)`` weight (e.g. after a LoRA merge)."""
        raise NotImplementedError

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float ``(out_features, in_features)`` weight the quantised one stands for."""
        raise NotImplementedError

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward in float (dequantised weight); no gradient is tracked through it."""
        raise NotImplementedError

    def _input_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient with respect to the input of :meth:`_float_forward`, given the output's."""
        raise NotImplementedError

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_float_forward`, through :class:`_FrozenLinear` when the input needs a gradient."""
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenLinear.apply(x, self)
        return self._float_forward(x)

    def _check_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` as float32, after checking its shape and that every value is finite."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"expected a weight of shape {(self.out_features, self.in_features)}, "
                             f"got {tuple(weight.shape)}")
        return require_finite(weight)

    def _check_input(self, x: torch.Tensor) -> None:
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expects inputs of width {self.in_features}, "
                             f"got {tuple(x.shape)}")

    def dequantize(self) -> nn.Linear:
        """A float ``nn.Linear`` with the dequantised weight and the bias."""
        dtype = self.bias.dtype if self.bias is not None else torch.float32
        weight = self.dequantize_weight(dtype)
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=weight.device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

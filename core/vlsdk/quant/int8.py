"""Int8 quantisation of frozen ``nn.Linear`` layers, in plain torch (CPU and GPU).

Each quantised layer keeps an ``int8`` weight with one symmetric fp32 scale per output channel
(``w ~= qweight * scale[:, None]``) and its bias in float, so memory really is one byte per
weight. A quantised layer is frozen: it has no parameters, only buffers. Two forwards compute
the same function up to rounding, chosen per call by ``Int8Linear(..., compute=...)``:

* **int8** (W8A8 dynamic): each input row (token) is quantised to int8 with its own symmetric
  scale, ``torch._int_mm`` multiplies int8 x int8 into int32 (oneDNN VNNI/AMX kernels on CPU,
  cuBLASLt on CUDA), and the result is rescaled by the row and channel scales and gets the bias.
  Compute and memory traffic are int8. ``torch._int_mm`` has no backward, and on CUDA it needs
  more than 16 rows and an input and output width that are multiples of 8.
* **dequant** (weight-only): ``y = (x @ qweight.T) * scale + bias`` in the input's float dtype.
  Storage is int8 but the matmul is float. Exact gradients with respect to the input.

* **triton** (weight-only, fused; opt-in): one Triton kernel reads the int8 weight and converts it
  tile by tile in registers, the scales and bias in its epilogue (:mod:`vlsdk.quant.triton_w8`).
  Inference on CUDA (or the CPU under Triton's interpreter); not yet timed against bf16 on a GPU,
  so ``auto`` does not pick it.

``compute="auto"`` (the default) takes the int8 path on the CPU where it runs (float32/float16/
bfloat16 inputs; no gradient needed through the input), where it is 2-3.4x faster than float32,
and the dequantising one otherwise: when a LoRA adapter upstream is training, and on every other
device. On an H100 the int8 path (a per-token quantisation, ``torch._int_mm``, rescaling) ran at
0.08-0.20x the speed of a bf16 ``nn.Linear`` at ``base``'s shapes and the dequantising one at
0.3-0.7x (``benchmarks/int8_matmul.py --device cuda``, BENCHMARKS.md): ``compute="int8"`` still
forces it there.

The buffer is called ``qweight`` on purpose: it is the name peft (and GPTQ/AWQ layers) look for
when placing a LoRA adapter on the device of a quantised base layer. LoRA on top of
:class:`Int8Linear` goes through ``vlsdk.train.lora`` (``attach_lora(..., quantize_base=True)``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from vlsdk.quant.base import QuantizedLinear, require_finite

__all__ = ["Int8Linear", "quantize_weight"]

Compute = Literal["auto", "int8", "dequant", "triton"]
_COMPUTE = ("auto", "int8", "dequant", "triton")
_INT8_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``(qweight int8 (out, in), scale fp32 (out,))``.

    Example:
        >>> q, s = quantize_weight(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
        >>> q.tolist(), s.tolist()
        ([[127, -64], [0, 0]], [0.007874015718698502, 1.0])
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D (out_features, in_features) weight, got shape {tuple(weight.shape)}")
    w = require_finite(weight)
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    qweight = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return qweight, scale


class Int8Linear(QuantizedLinear):
    """A frozen linear layer with an int8 weight, per-output-channel fp32 scales and a float bias.

    Build one from a trained layer with :meth:`from_linear`; :meth:`dequantize` gives an
    ``nn.Linear`` back (with the rounding of the quantisation).

    Args:
        in_features: input width.
        out_features: output width.
        bias: keep a bias (a float buffer).
        device: where the buffers live.
        dtype: float dtype of the bias (the scales are always fp32).
        compute: ``"auto"`` (int8 matmul on the CPU where it can run, else dequantise: see the
            module doc; :meth:`path` tells which a given input takes),
            ``"int8"`` (always the int8 matmul; a call it cannot serve raises), ``"dequant"``
            (always dequantise the weight and multiply in float), ``"triton"`` (the fused
            weight-only kernel; inference on CUDA). Not saved in the state dict;
            change it any time with ``layer.compute = ...``.

    Raises:
        ValueError: a size below 1 or an unknown ``compute``; in the forward, an input of the
            wrong width, or with ``compute="int8"`` or ``"triton"`` a call that path cannot serve
            (the reason is named).

    Example:
        >>> from torch import nn
        >>> lin = nn.Linear(16, 8)
        >>> q = Int8Linear.from_linear(lin)
        >>> q.qweight.dtype, q(torch.zeros(3, 16)).shape
        (torch.int8, torch.Size([3, 8]))
    """

    bits = 8
    scale_buffers = ("scale",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 compute: Compute = "auto") -> None:
        if compute not in _COMPUTE:
            raise ValueError(f"compute must be one of {_COMPUTE}, got {compute!r}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.compute: Compute = compute
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32, device=device))

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Re-quantise from a float ``(out_features, in_features)`` weight (e.g. after a LoRA merge)."""
        qweight, scale = quantize_weight(self._check_weight(weight))
        self.qweight.copy_(qweight)
        self.scale.copy_(scale)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the int8 one stands for: ``qweight * scale[:, None]``."""
        return (self.qweight.float() * self.scale[:, None]).to(dtype)

    def int8_refusal(self, x: torch.Tensor) -> str | None:
        """Why the int8 path cannot serve input ``x`` (``None`` when it can)."""
        rows = x.numel() // self.in_features
        if x.dtype not in _INT8_DTYPES:
            return f"input dtype {x.dtype} (the int8 path takes {', '.join(map(str, _INT8_DTYPES))})"
        if torch.is_grad_enabled() and x.requires_grad:
            return "the input needs a gradient and torch._int_mm has no backward"
        if x.device.type == "cuda":
            if rows <= 16 or self.in_features % 8 or self.out_features % 8:
                return (f"on CUDA torch._int_mm needs more than 16 rows and widths that are multiples of 8, "
                        f"got {rows} rows, in_features={self.in_features}, out_features={self.out_features}")
        elif x.device.type != "cpu":
            return f"torch._int_mm runs on CPU and CUDA only, not {x.device.type}"
        return None

    def triton_refusal(self, x: torch.Tensor) -> str | None:
        """Why the Triton path cannot serve input ``x`` (``None`` when it can)."""
        from vlsdk.ops.triton_launch import interpreted, triton_importable

        if torch.is_grad_enabled() and x.requires_grad:
            return "the input needs a gradient and the Triton kernel has no backward"
        if x.dtype not in _INT8_DTYPES:
            return f"input dtype {x.dtype} (it takes {', '.join(map(str, _INT8_DTYPES))})"
        if not (x.is_cuda or (x.device.type == "cpu" and interpreted())):
            return f"it runs on CUDA (or the CPU under TRITON_INTERPRET=1), not {x.device.type}"
        return None if triton_importable() else "triton is not installed"

    def path(self, x: torch.Tensor) -> Literal["int8", "dequant", "triton"]:
        """The forward that input ``x`` takes under this layer's ``compute`` (see the module doc).

        Args:
            x: an input of the layer (only its device, dtype, size and ``requires_grad`` are read).

        Raises:
            ValueError: ``compute="int8"`` or ``"triton"`` and that path cannot serve ``x`` (the reason
                is named).
        """
        if self.compute == "triton":
            refusal = self.triton_refusal(x)
            if refusal is not None:
                raise ValueError(f"Int8Linear(compute='triton') cannot serve this input: {refusal}")
            return "triton"
        if self.compute == "dequant" or (self.compute == "auto" and x.device.type != "cpu"):
            return "dequant"
        refusal = self.int8_refusal(x)
        if refusal is None:
            return "int8"
        if self.compute == "int8":
            raise ValueError(f"Int8Linear(compute='int8') cannot take the int8 path: {refusal}; "
                             "compute='auto' falls back to the dequantising path")
        return "dequant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        path = self.path(x)
        if path == "triton":
            from vlsdk.quant.triton_w8 import w8a16_linear

            device = x.device.type
            if torch.is_autocast_enabled(device):  # as F.linear would run under autocast
                x = x.to(torch.get_autocast_dtype(device))
            return w8a16_linear(x, self.qweight, self.scale, self.bias)
        return self._forward_int8(x) if path == "int8" else self._linear(x)

    def _input_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return (grad * self.scale.to(grad.dtype)) @ self.qweight.to(grad.dtype)

    def _float_forward(self, x: torch.Tensor) -> torch.Tensor:
        # int8 values are exact in fp16/bf16/fp32; the per-row scale is applied to the (smaller) output
        out = F.linear(x, self.qweight.to(x.dtype))
        out = out * self.scale.to(out.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def _forward_int8(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        rows = x.reshape(-1, self.in_features).float()
        amax = rows.abs().amax(dim=1, keepdim=True)
        # an all-zero row gets scale 1; a row holding NaN/inf keeps a non-finite scale, so that row
        # of the output is non-finite too, as in float (never quantised to plausible numbers)
        row_scale = torch.where(amax == 0, 1.0, amax / 127.0)
        qrows = (rows / row_scale).round_().clamp_(-127, 127).to(torch.int8)
        out = torch._int_mm(qrows, self.qweight.t()).float()
        out.mul_(row_scale).mul_(self.scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(out_dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"compute={self.compute!r}")

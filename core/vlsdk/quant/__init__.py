"""Quantisation of frozen linear layers in plain torch: :class:`Int8Linear` (int8 per channel,
computes in int8 on the CPU) and :class:`Int4Linear` (4-bit group-wise, weight-only)."""

from vlsdk.quant.base import QuantizedLinear
from vlsdk.quant.int4 import Int4Linear, quantize_weight_int4
from vlsdk.quant.int8 import Int8Linear, quantize_weight
from vlsdk.quant.layers import DEFAULT_EXCLUDE, quantize_linear_layers, weight_bytes

__all__ = ["DEFAULT_EXCLUDE", "Int4Linear", "Int8Linear", "QuantizedLinear", "quantize_linear_layers",
           "quantize_weight", "quantize_weight_int4", "weight_bytes"]

"""Quantisation of frozen layers: int8 weight-only :class:`Int8Linear` in plain torch."""

from vlsdk.quant.int8 import DEFAULT_EXCLUDE, Int8Linear, quantize_linear_layers, quantize_weight, weight_bytes

__all__ = ["DEFAULT_EXCLUDE", "Int8Linear", "quantize_linear_layers", "quantize_weight", "weight_bytes"]

"""Quantise a model's frozen ``nn.Linear`` layers in place (int8 or 4-bit), and count weight bytes."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Literal, get_args

from torch import nn

from vlsdk.quant.base import QuantizedLinear
from vlsdk.quant.int4 import DEFAULT_GROUP_SIZE, Int4Linear
from vlsdk.quant.int8 import Compute, Int8Linear

__all__ = ["DEFAULT_EXCLUDE", "quantize_linear_layers", "weight_bytes"]

#: Module names never quantised by default: the MoE routers (tiny and precision-sensitive), the
#: task heads (usually trained), and LoRA's own ``lora_A``/``lora_B`` layers.
DEFAULT_EXCLUDE: tuple[str, ...] = ("router", "heads", "lora_")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(p in name or fnmatch.fnmatchcase(name, p) for p in patterns)


def quantize_linear_layers(model: nn.Module, include: Sequence[str] | None = None,
                           exclude: Sequence[str] = DEFAULT_EXCLUDE, compute: Compute = "auto", *,
                           bits: Literal[8, 4] = 8, group_size: int = DEFAULT_GROUP_SIZE) -> list[str]:
    """Replace matching ``nn.Linear`` layers of ``model`` by quantised ones (int8 or 4-bit), in place.

    A pattern matches a module name (``"encoder.stages.0.blocks.0.ffn.experts.generic.3.fc1"``)
    when it is a substring of it or matches it as a glob (``"*.experts.*.fc?"``). A MoE layer's
    stacked generic experts are first given one module each where a pattern reaches their
    ``fc1``/``fc2`` (:meth:`~vlsdk.models.moe.DynamicMoE.unstack_generic`). Layers already
    wrapped by peft LoRA are quantised underneath (their ``base_layer``); LoRA's own layers are
    never touched. The quantised layers are frozen (they hold buffers, not parameters).

    Args:
        model: the model to change.
        include: patterns a layer must match (default: every ``nn.Linear``).
        exclude: patterns that keep a layer in float (default :data:`DEFAULT_EXCLUDE`: routers,
            heads, LoRA layers).
        compute: the forward of int8 layers (see :class:`~vlsdk.quant.Int8Linear`); 4-bit layers
            always dequantise, so only ``"auto"`` goes with ``bits=4``.
        bits: 8 (:class:`~vlsdk.quant.Int8Linear`, one scale per output channel) or 4
            (:class:`~vlsdk.quant.Int4Linear`, one scale and zero per ``group_size`` inputs).
        group_size: the 4-bit layers' group (ignored for ``bits=8``).

    Returns:
        The names of the replaced modules, in ``named_modules`` order.

    Raises:
        ValueError: ``include``/``exclude`` given as one string, an unknown ``compute`` or
            ``bits``, a bad ``group_size``, or a chosen layer whose weight holds NaN or infinity
            (named; then no layer is replaced).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> quantize_linear_layers(net, exclude=("2",))
        ['0']
        >>> net4 = nn.Sequential(nn.Linear(256, 8))
        >>> quantize_linear_layers(net4, bits=4), type(net4[0]).__name__
        (['0'], 'Int4Linear')
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise ValueError("include and exclude are sequences of patterns, e.g. exclude=('router',), not one string")
    if compute not in get_args(Compute):
        raise ValueError(f"compute must be one of {get_args(Compute)}, got {compute!r}")
    if bits not in (8, 4) or isinstance(bits, bool):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    if bits == 4 and compute != "auto":
        raise ValueError(f"4-bit layers always dequantise; compute={compute!r} applies to bits=8 only")
    from vlsdk.models.expert_layout import unstack_generic_experts  # (lazy: vlsdk.quant does not need the models)

    def wanted(name: str) -> bool:
        return (include is None or _matches(name, include)) and not _matches(name, exclude)

    def quantized(name: str, linear: nn.Linear) -> QuantizedLinear:
        try:
            if bits == 4:
                return Int4Linear.from_linear(linear, group_size=group_size)
            return Int8Linear.from_linear(linear, compute=compute)
        except ValueError as err:
            raise ValueError(f"cannot quantise layer {name!r}: {err}") from None

    unstack_generic_experts(model, lambda n: n.endswith((".fc1", ".fc2")) and wanted(n))  # stacked: no nn.Linear
    chosen = [name for name, module in model.named_modules() if type(module) is nn.Linear and name and wanted(name)]
    replacements = {name: quantized(name, model.get_submodule(name)) for name in chosen}  # all, before any swap
    for name, layer in replacements.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
    return chosen


def weight_bytes(model: nn.Module, names: Iterable[str] | None = None) -> int:
    """Bytes held by the parameters and buffers of ``model`` (or of its submodules ``names``).

    Shared tensors are counted once.

    Example:
        >>> weight_bytes(nn.Linear(4, 2))  # (8 + 2) float32 values
        40
    """
    modules = [model] if names is None else [model.get_submodule(n) for n in names]
    seen: set[int] = set()
    total = 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total

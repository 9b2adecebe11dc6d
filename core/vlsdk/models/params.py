"""Parameter counts: total, and active per token (what a sparse MoE actually computes with)."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

__all__ = ["ParamCounts", "count_module_parameters"]


class ParamCounts(NamedTuple):
    """``total`` parameters and ``active`` ones (a token meets ``top_k`` routed experts per layer)."""

    total: int
    active: int

    def __str__(self) -> str:
        return f"{self.total / 1e6:.1f}M total, {self.active / 1e6:.1f}M active"


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_module_parameters(model: nn.Module) -> ParamCounts:
    """Count the parameters of a built model: all of them, and those one token is computed with.

    :func:`vlsdk.models.model.count_parameters` also takes a config name and builds the model.
    """
    from vlsdk.models.moe import DynamicMoE

    total = _numel(model)
    active = total
    for layer in (m for m in model.modules() if isinstance(m, DynamicMoE)):
        routed = [_numel(e) for e in layer._modules_in_order()]
        active -= sum(routed)
        active += round(layer.top_k * sum(routed) / len(routed))
    return ParamCounts(total, active)

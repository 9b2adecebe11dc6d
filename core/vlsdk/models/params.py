"""Parameter counts: total, and active per token (what a sparse MoE actually computes with)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vlsdk.models.config import BackboneConfig, get_config

__all__ = ["ParamCounts", "count_parameters"]


class ParamCounts(NamedTuple):
    """``total`` parameters and ``active`` ones (a token meets ``top_k`` routed experts per layer)."""

    total: int
    active: int

    def __str__(self) -> str:
        return f"{self.total / 1e6:.1f}M total, {self.active / 1e6:.1f}M active"


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(model: nn.Module | BackboneConfig | str) -> ParamCounts:
    """Count the parameters of a model, or of the :class:`VLModel` a config builds (on the meta device).

    Example:
        >>> counts = count_parameters("base")
        >>> counts.active < counts.total
        True
    """
    from vlsdk.models.model import VLModel

    if isinstance(model, str):
        model = get_config(model)
    if isinstance(model, BackboneConfig):
        with torch.device("meta"):
            model = VLModel(model)
    from vlsdk.models.moe import DynamicMoE

    total = _numel(model)
    active = total
    for layer in (m for m in model.modules() if isinstance(m, DynamicMoE)):
        routed = [_numel(e) for e in layer._modules_in_order()]
        active -= sum(routed)
        active += round(layer.top_k * sum(routed) / len(routed))
    return ParamCounts(total, active)

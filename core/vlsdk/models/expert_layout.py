"""Whole-model helpers for the two layouts of the generic experts (stacked or one module each).

Per-module tools (peft LoRA targets, int8 quantisation) call :func:`unstack_generic_experts`
before they match module names; checkpoint loading calls :func:`match_generic_layout` before it
compares key names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vlsdk.models.generic_experts import convert_generic_keys
from vlsdk.models.moe import DynamicMoE

__all__ = ["match_generic_layout", "unstack_generic_experts"]


def unstack_generic_experts(model: nn.Module, wanted: Callable[[str], bool]) -> list[str]:
    """Unstack the generic experts (:meth:`DynamicMoE.unstack_generic`) of every MoE layer of
    ``model`` where ``wanted`` holds for one of the module names they would get
    (``<layer>.experts.generic.<i>``, ``...<i>.fc1``, ``...<i>.fc2``). Returns those layers' names.

    Used by per-module tools (peft LoRA targets, int8 quantisation) before they match module names.
    """
    done = []
    for name, module in model.named_modules():
        if isinstance(module, DynamicMoE) and module.stacked:
            prefix = f"{name}.experts.generic." if name else "experts.generic."
            names = (f"{prefix}{i}{leaf}" for i in range(module.num_generic) for leaf in ("", ".fc1", ".fc2"))
            if any(wanted(n) for n in names):
                module.unstack_generic()
                done.append(name)
    return done


def match_generic_layout(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Rewrite, in place, the generic experts' tensors of a ``model`` state dict (a checkpoint's) to
    the layout each of ``model``'s MoE layers has (stacked or per expert; see
    :func:`~vlsdk.models.generic_experts.convert_generic_keys`). ``load_state_dict`` does this by
    itself; this is for comparing key names first."""
    for name, module in model.named_modules():
        if isinstance(module, DynamicMoE):
            prefix = f"{name}.experts.generic." if name else "experts.generic."
            convert_generic_keys(state_dict, prefix, stacked=module.stacked, num_experts=module.num_generic)

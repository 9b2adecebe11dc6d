"""The backbone's generic experts of one MoE layer as four stacked ``(E, ...)`` parameters.

``fc1_weight`` ``(E, h, d)``, ``fc1_bias`` ``(E, h)``, ``fc2_weight`` ``(E, d, h)`` and
``fc2_bias`` ``(E, d)``: expert ``i`` is the GELU MLP ``fc2(gelu(fc1(x)))`` of slice ``i``. The
loop path runs one slice, the grouped GEMM and the export path read the whole stacks: none of
them copies a weight to get its layout, and a training step updates four tensors per layer, not
``4 E``.

Layers that need one module per expert (peft LoRA on a generic expert, int8 ``Int8Linear``
layers) get them from :meth:`GenericExperts.unstack`; checkpoints of either layout load into
either (:func:`convert_generic_keys`).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import MutableMapping

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.models.experts import ExpertMLP

__all__ = ["GenericExperts", "STACKED_NAMES", "convert_generic_keys"]

#: the stacked parameters, in the order of one expert's ``fc1.weight, fc1.bias, fc2.weight, fc2.bias``
STACKED_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
_PER_EXPERT = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


class GenericExperts(nn.Module):
    """``num_experts`` GELU MLPs ``(n, dim) -> (n, dim)`` stored as stacked parameters.

    The values are those of ``num_experts`` :class:`~vlsdk.models.experts.ExpertMLP` built one
    after another, so a seed gives the same experts in either layout.

    Args:
        num_experts: ``E``.
        dim: token width ``d``.
        hidden: hidden width ``h`` of each expert.

    Example:
        >>> experts = GenericExperts(4, 8, 16)
        >>> experts.fc1_weight.shape, experts.run(2, torch.zeros(5, 8)).shape
        (torch.Size([4, 16, 8]), torch.Size([5, 8]))
    """

    def __init__(self, num_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        modules = [ExpertMLP(dim, hidden) for _ in range(num_experts)]
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        for name, key in zip(STACKED_NAMES, _PER_EXPERT, strict=True):
            stack = torch.stack([m.get_parameter(key).detach() for m in modules])
            self.register_parameter(name, nn.Parameter(stack))
        self._frozen: dict[int, tuple[torch.Tensor, ...]] = {}  # expert -> its values when frozen
        self.register_load_state_dict_pre_hook(_stack_per_expert_keys)

    def stacks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The four stacks, as the computation should read them: with gradients on and some experts
        frozen, their slices are cut from the graph (no copy otherwise)."""
        params = (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)
        if not self._frozen or not torch.is_grad_enabled() or not params[0].requires_grad:
            return params
        mask = torch.zeros(self.num_experts, dtype=torch.bool, device=params[0].device)
        mask[list(self._frozen)] = True
        return tuple(torch.where(mask.view(-1, *([1] * (p.dim() - 1))), p.detach(), p) for p in params)

    def per_expert(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Each expert's ``(fc1_w, fc1_b, fc2_w, fc2_b)``, views of the stacks by one ``unbind`` per
        stack: in backward the experts' gradients are stacked once (indexing each expert instead
        would fill a stack-sized gradient per expert)."""
        return list(zip(*(s.unbind(0) for s in self.stacks()), strict=True))

    def run(self, i: int, x: torch.Tensor,
            weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Expert ``i`` on ``(n, d)`` rows; ``weights``: its entry of :meth:`per_expert`, when the
        caller runs several experts."""
        w1, b1, w2, b2 = weights if weights is not None else self.per_expert()[i]
        return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every expert on every ``(T, d)`` row, mixed by ``weights`` ``(T, E)``: the export path.

        Static shapes, one ``Linear`` pair per expert on its slices (an exporter folds the slices
        into per-expert weight matrices, which ONNX quantisers handle, unlike a batched GEMM).
        """
        out = torch.zeros_like(x)
        for i, params in enumerate(self.per_expert()):  # loop over experts, not tokens
            out = out + weights[:, i:i + 1] * self.run(i, x, params)
        return out

    def expert(self, i: int) -> ExpertMLP:
        """Expert ``i`` as an :class:`ExpertMLP` whose parameters alias slice ``i`` of the stacks.

        For reading and editing values (an in-place edit is an edit of the stacks). It is not part
        of the model: gradients and ``requires_grad`` belong to the stacks (:meth:`set_frozen`).
        """
        with torch.device("meta"):
            view = ExpertMLP(self.dim, self.hidden)
        for key, stack in zip(_PER_EXPERT, (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias),
                              strict=True):
            layer, attr = key.split(".")
            setattr(view.get_submodule(layer), attr, nn.Parameter(stack[i].detach(), requires_grad=False))
        return view.train(self.training)

    def is_frozen(self, i: int) -> bool:
        """Whether expert ``i`` gets no update."""
        return not self.fc1_weight.requires_grad or i in self._frozen

    def set_frozen(self, i: int, frozen: bool) -> None:
        """Freeze or unfreeze expert ``i``.

        When every expert is frozen the stacks stop requiring gradients. When only some are, their
        slices are cut from the graph and put back after every optimizer step, so neither weight
        decay nor an optimizer's momentum moves them.
        """
        if not 0 <= i < self.num_experts:
            raise IndexError(f"expert {i} of {self.num_experts}")
        params = [self.get_parameter(n) for n in STACKED_NAMES]
        if not params[0].requires_grad:  # all frozen so far: the others stay frozen
            self._frozen = {j: self._snapshot(j) for j in range(self.num_experts)}
            for p in params:
                p.requires_grad_(True)
        if frozen:
            self._frozen[i] = self._snapshot(i)
        else:
            self._frozen.pop(i, None)
        if len(self._frozen) == self.num_experts:
            self._frozen.clear()
            for p in params:
                p.requires_grad_(False)
        if self._frozen:
            _watch_optimizers()
            _PARTLY_FROZEN.add(self)
        else:
            _PARTLY_FROZEN.discard(self)

    def _snapshot(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(self.get_parameter(n)[i].detach().clone() for n in STACKED_NAMES)

    def restore_frozen(self) -> None:
        """Put the frozen experts' values back (after an optimizer step)."""
        with torch.no_grad():
            for i, values in self._frozen.items():
                for name, value in zip(STACKED_NAMES, values, strict=True):
                    param = self.get_parameter(name)
                    if not torch.equal(param[i], value.to(param.device, param.dtype)):
                        param[i].copy_(value)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        out = super()._apply(fn, recurse)
        self._frozen = {i: tuple(fn(v) for v in values) for i, values in self._frozen.items()}
        return out

    def unstack(self) -> nn.ModuleDict:
        """One :class:`ExpertMLP` per expert (copies of the slices), keyed ``"0"`` ... ``"E-1"``,
        with ``requires_grad`` as frozen here."""
        device = self.fc1_weight.device
        experts = nn.ModuleDict()
        for i in range(self.num_experts):
            with torch.device("meta"):
                module = ExpertMLP(self.dim, self.hidden)
            module.to_empty(device=device)
            module.to(self.fc1_weight.dtype)
            with torch.no_grad():
                for key, name in zip(_PER_EXPERT, STACKED_NAMES, strict=True):
                    module.get_parameter(key).copy_(self.get_parameter(name)[i])
            module.requires_grad_(not self.is_frozen(i))
            experts[str(i)] = module
        return experts.train(self.training)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, dim={self.dim}, hidden={self.hidden}"


_PARTLY_FROZEN: weakref.WeakSet[GenericExperts] = weakref.WeakSet()
_watching = False


def _restore_after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    if not _PARTLY_FROZEN:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for experts in list(_PARTLY_FROZEN):
        if id(experts.fc1_weight) in stepped or id(experts.fc2_weight) in stepped:
            experts.restore_frozen()


def _watch_optimizers() -> None:
    """Register :func:`_restore_after_step` as a global ``torch.optim`` post-step hook, once."""
    global _watching
    if not _watching:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_restore_after_step)
        _watching = True


def _per_expert_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(re.escape(prefix) + r"(\d+)\.(fc[12]\.(?:weight|bias))")


def _stack_per_expert_keys(module: GenericExperts, state_dict: MutableMapping[str, torch.Tensor], prefix: str,
                           *args: object) -> None:
    """``load_state_dict`` pre-hook: a checkpoint of the per-expert layout loads into the stacks."""
    convert_generic_keys(state_dict, prefix, stacked=True, num_experts=module.num_experts)


def convert_generic_keys(state_dict: MutableMapping[str, torch.Tensor], prefix: str, *, stacked: bool,
                         num_experts: int) -> None:
    """Rewrite, in place, one layer's generic-expert tensors to the layout the model has.

    Args:
        state_dict: a model's (or a checkpoint's) tensors.
        prefix: the generic experts' key prefix, e.g. ``"encoder.stages.0.blocks.1.ffn.experts.generic."``.
        stacked: the target layout: ``prefix + "fc1_weight"`` ... (``True``) or
            ``prefix + "3.fc1.weight"`` ... (``False``).
        num_experts: ``E``. Per-expert keys are stacked only when all ``E`` experts are present
            (otherwise they are left for ``load_state_dict`` to report as missing or unexpected).
    """
    if stacked:
        pattern = _per_expert_pattern(prefix)
        found = {m.groups(): k for k in state_dict if (m := pattern.fullmatch(k))}
        if not found or any(prefix + n in state_dict for n in STACKED_NAMES):
            return
        wanted = [(str(i), key) for i in range(num_experts) for key in _PER_EXPERT]
        if any(w not in found for w in wanted):
            return
        for name, key in zip(STACKED_NAMES, _PER_EXPERT, strict=True):
            state_dict[prefix + name] = torch.stack([state_dict.pop(found[(str(i), key)])
                                                     for i in range(num_experts)])
        return
    if not all(prefix + n in state_dict for n in STACKED_NAMES):
        return
    for name, key in zip(STACKED_NAMES, _PER_EXPERT, strict=True):
        stack = state_dict.pop(prefix + name)
        if stack.shape[0] != num_experts:  # leave a mismatch for load_state_dict to report
            state_dict[prefix + name] = stack
            continue
        for i in range(num_experts):
            state_dict[f"{prefix}{i}.{key}"] = stack[i]

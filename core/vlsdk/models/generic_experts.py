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

import copy
import re
import warnings
import weakref
from collections.abc import MutableMapping

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.models.experts import ExpertMLP

__all__ = ["GenericExperts", "STACKED_NAMES", "convert_generic_keys"]

#: The stacked parameters' names, in the order of one expert's ``fc1.weight, fc1.bias, fc2.weight,
#: fc2.bias`` (and of :meth:`GenericExperts.stacks`).
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
        self._frozen: set[int] = set()  # experts frozen while others train (all frozen: requires_grad off)
        self._before_step: dict[int, tuple[torch.Tensor, ...]] = {}  # their values, during an optimizer step
        self.register_load_state_dict_pre_hook(_stack_per_expert_keys)

    def stacks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The four stacks, as the computation should read them: with gradients on and some experts
        frozen, their slices are cut from the graph (no copy otherwise)."""
        params = (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)
        if not self._frozen or not torch.is_grad_enabled() or not params[0].requires_grad:
            return params
        _watch(self)  # (again: a deep copy or an unpickled module is not registered yet)
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

        Static shapes, one ``Linear`` pair per expert on its slices, each taken by indexing: the
        ONNX exporter folds an indexed constant into a per-expert weight matrix, which the ONNX
        quantisers then quantise (an ``unbind`` stays a ``Split`` of a 3-D constant, which they skip).
        This path is for inference; its backward would fill a stack-sized gradient per expert.
        """
        w1, b1, w2, b2 = self.stacks()
        out = torch.zeros_like(x)
        for i in range(self.num_experts):  # loop over experts, not tokens
            out = out + weights[:, i:i + 1] * self.run(i, x, (w1[i], b1[i], w2[i], b2[i]))
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
        slices are cut from the graph, and every ``torch.optim`` step that updates the stacks puts
        their values back afterwards, so neither weight decay nor an optimizer's momentum moves
        them (the values are those just before the step: loading or editing them stays possible).
        """
        if not 0 <= i < self.num_experts:
            raise IndexError(f"expert {i} of {self.num_experts}")
        params = [self.get_parameter(n) for n in STACKED_NAMES]
        if not params[0].requires_grad:  # all frozen so far: the others stay frozen
            self._frozen = set(range(self.num_experts))
            for p in params:
                p.requires_grad_(True)
        if frozen:
            self._frozen.add(i)
        else:
            self._frozen.discard(i)
        if len(self._frozen) == self.num_experts:
            self._frozen.clear()
            for p in params:
                p.requires_grad_(False)
        if self._frozen:
            _watch(self)

    def _save_frozen(self) -> None:
        """Before an optimizer step: copy the frozen experts' slices."""
        with torch.no_grad():
            self._before_step = {i: tuple(self.get_parameter(n)[i].clone() for n in STACKED_NAMES)
                                 for i in self._frozen}

    def _restore_frozen(self) -> None:
        """After an optimizer step: put the frozen experts' slices back."""
        with torch.no_grad():
            for i, values in self._before_step.items():
                for name, value in zip(STACKED_NAMES, values, strict=True):
                    param = self.get_parameter(name)
                    if not torch.equal(param[i], value):
                        param[i].copy_(value)
        self._before_step = {}

    def unstack(self) -> nn.ModuleDict:
        """One :class:`ExpertMLP` per expert (copies of the slices), keyed ``"0"`` ... ``"E-1"``,
        with ``requires_grad`` as frozen here."""
        experts = nn.ModuleDict()
        for i in range(self.num_experts):
            module = copy.deepcopy(self.expert(i))  # the view's parameters, copied: storage of their own
            experts[str(i)] = module.requires_grad_(not self.is_frozen(i))
        return experts.train(self.training)

    def extra_repr(self) -> str:
        """The layout, for ``print(model)``."""
        return f"experts={self.num_experts}, dim={self.dim}, hidden={self.hidden}"


_PARTLY_FROZEN: weakref.WeakSet[GenericExperts] = weakref.WeakSet()
_watching = False


def _stepped(optimizer: torch.optim.Optimizer) -> list[GenericExperts]:
    """The partly frozen expert stacks that ``optimizer`` updates (any of their four tensors)."""
    if not _PARTLY_FROZEN:
        return []
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [e for e in list(_PARTLY_FROZEN)
            if e._frozen and any(id(p) in ids for p in e._parameters.values())]


def _save_before_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    for experts in _stepped(optimizer):
        experts._save_frozen()


def _restore_after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    for experts in _stepped(optimizer):
        experts._restore_frozen()


def _watch(experts: GenericExperts) -> None:
    """Register ``experts`` for the optimizer step hooks, and the hooks (global, once)."""
    global _watching
    if not _watching:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        register_optimizer_step_pre_hook(_save_before_step)
        register_optimizer_step_post_hook(_restore_after_step)
        _watching = True
    _PARTLY_FROZEN.add(experts)


def _per_expert_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(re.escape(prefix) + r"(\d+)\.(fc[12]\.(?:weight|bias))")


def _stack_per_expert_keys(module: GenericExperts, state_dict: MutableMapping[str, torch.Tensor], prefix: str,
                           local_metadata: object, strict: bool, missing_keys: list[str], *args: object) -> None:
    """``load_state_dict`` pre-hook: a checkpoint of the per-expert layout loads into the stacks.

    A checkpoint holding only some experts' tensors loads those; the others keep their values and
    are reported as missing keys (by their per-expert names: ``load_state_dict(strict=True)``
    raises naming them, ``strict=False`` returns them) with a warning. (torch passes the hooks
    ``strict=True`` whatever the caller asked, so the hook cannot tell the two apart.)
    """
    pattern = _per_expert_pattern(prefix)
    found = {m.groups() for k in state_dict if (m := pattern.fullmatch(k))}
    if found and not any(prefix + n in state_dict for n in STACKED_NAMES):
        absent = [f"{prefix}{i}.{key}" for i in range(module.num_experts) for key in _PER_EXPERT
                  if (str(i), key) not in found]
        if absent:
            for name in absent:
                i, _, key = name[len(prefix):].partition(".")
                stack = module.get_parameter(STACKED_NAMES[_PER_EXPERT.index(key)])
                state_dict[name] = stack[int(i)].detach().clone()
            missing_keys.extend(absent)
            warnings.warn(f"{len(absent)} of the generic experts' tensors are not in the state dict and keep their "
                          f"values: {absent[:4]}{' ...' if len(absent) > 4 else ''}", stacklevel=3)
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

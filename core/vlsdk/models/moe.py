"""Sparse mixture-of-experts feed-forward layer with named, insertable expert slots."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from vlsdk.models import moe_kernels
from vlsdk.models.amp import autocast_enabled
from vlsdk.models.config import MoEConfig
from vlsdk.models.dispatch import gather_slots, inverse_permutation, unsort_rows, unsort_slots
from vlsdk.models.expert_loop import generic_loop
from vlsdk.models.experts import ExpertMLP, accepts_context, check_expert, resolve_hidden
from vlsdk.models.features import TRAINING_STATS, ExpertContext, RouterStats
from vlsdk.models.generic_experts import GenericExperts, convert_generic_keys
from vlsdk.models.grouped_mm import StackedWeights, grouped_mm
from vlsdk.models.router import Router, Routing, count_assignments, sort_key_dtype

__all__ = ["DynamicMoE", "split_expert_name"]


def split_expert_name(name: str) -> tuple[str, str]:
    """``"medical.lesion" -> ("medical", "lesion")``; raises ``ValueError`` for other shapes."""
    group, dot, leaf = name.partition(".")
    if not dot or not group.isidentifier() or not (leaf.isidentifier() or leaf.isdigit()):
        raise ValueError(f"expert names look like '<group>.<name>' (e.g. 'medical.lesion'), got {name!r}")
    return group, leaf


class DynamicMoE(nn.Module):
    """Top-k routed experts plus always-on shared experts, with named slots that can grow.

    Tokens are dispatched by sorting their (token, expert) assignments by expert, running every
    expert once on its contiguous slice, and combining the ``k`` outputs of each token with its
    renormalised gate weights. There is no Python loop over tokens; the loop is over experts
    that received tokens. ``dense=True`` (the export path) instead runs every expert on every
    token with masked weights, which is slower but has static shapes.

    The backbone's generic experts are one :class:`~vlsdk.models.generic_experts.GenericExperts`
    (stacked parameters ``experts.generic.fc1_weight`` ...); domain experts are modules in
    ``self.experts[group][leaf]`` (``experts.medical.lesion...``). All are addressed by
    ``"group.leaf"`` names (``"generic.3"``); :attr:`expert_names` gives the router's row order.
    :meth:`unstack_generic` turns the generic experts into one module each, for per-expert
    module surgery (peft LoRA, ``Int8Linear``).

    Args:
        dim: token width.
        config: the MoE settings (experts, top-k, hidden size, shared experts, score, capacity).

    Example:
        >>> moe = DynamicMoE(64, MoEConfig(num_experts=4, top_k=2, expert_hidden=32))
        >>> y, stats = moe(torch.randn(2, 9, 64), grid=(3, 3))
        >>> y.shape, stats.tokens_per_expert.sum().item()
        (torch.Size([2, 9, 64]), 36)
    """

    def __init__(self, dim: int, config: MoEConfig) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.config = dim, config
        self.top_k = config.top_k
        self.capacity_factor = config.capacity_factor
        self.router = Router(dim, config.num_experts, config.top_k, config.score, config.jitter)
        hidden = resolve_hidden(dim, config.expert_hidden, 4 * dim)
        self.experts = nn.ModuleDict({"generic": GenericExperts(config.num_experts, dim, hidden)})
        self.shared = ExpertMLP(dim, config.expert_hidden * config.num_shared) if config.num_shared > 0 else None
        self.expert_names = [f"generic.{i}" for i in range(config.num_experts)]
        self._backbone_experts = frozenset(self.expert_names)
        self._wants_context: dict[str, bool] = {}
        self.dense = False
        #: one grouped GEMM per projection for the generic experts (``torch._grouped_mm``), no host
        #: sync; ``None`` = automatic: bf16 on CUDA with 16-aligned widths, and any CPU dtype while
        #: ``torch.compile`` traces the layer. Used only while the layer is dropless (with a capacity factor the loop
        #: path, with its host read of the split sizes, serves); domain experts then run on every token.
        self.grouped: bool | None = None
        #: on the grouped path in inference, route, gather and combine with the Triton kernels of
        #: :mod:`vlsdk.models.moe_kernels` (and the shared expert as one more GEMM group);
        #: ``None`` = on CUDA where they are available (gradients off, not compiling), ``True`` = also on the
        #: CPU under Triton's interpreter (tests), ``False`` = never
        self.fused: bool | None = None
        self._stacked = StackedWeights(self._fold_for_gemm)
        self._constants: dict[tuple, torch.Tensor] = {}  # small per-device tensors for eager calls
        self.register_load_state_dict_pre_hook(_per_expert_keys)

    # -- slots -------------------------------------------------------------------------------
    @property
    def stacked(self) -> bool:
        """Whether the generic experts are stacked parameters (else one module each)."""
        return type(self.experts._modules["generic"]) is GenericExperts

    @property
    def num_generic(self) -> int:
        """How many generic (backbone) experts the layer has: the router's first rows."""
        return len(self._backbone_experts)

    def expert(self, name: str) -> nn.Module:
        """The expert module called ``name`` (``"shared"`` for the shared experts).

        A stacked generic expert comes as a view (:meth:`GenericExperts.expert`): its parameters
        alias the stacks' slices, for reading and editing; freeze it with :meth:`set_frozen`.
        """
        if name == "shared":
            if self.shared is None:
                raise KeyError("this MoE layer has no shared experts (num_shared=0)")
            return self.shared
        group, leaf = split_expert_name(name)
        if name not in self.expert_names:
            raise KeyError(f"no expert {name!r} in this layer; experts: {self.expert_names}")
        if name in self._backbone_experts and self.stacked:
            return self.experts["generic"].expert(int(leaf))
        return self.experts[group][leaf]

    def unstack_generic(self) -> None:
        """Give each generic expert a module of its own (``experts.generic.3.fc1`` ...), values and
        frozen state kept, so that per-module tools (peft LoRA, ``Int8Linear``) can target them.
        Such experts run on the per-expert loop path. A no-op when already unstacked."""
        if self.stacked:
            self.experts["generic"] = self.experts["generic"].unstack()
            self._stacked.clear()

    def add_expert(self, name: str, module: nn.Module, init_bias: float = -30.0) -> None:
        """Insert ``module`` as a new routed expert and grow the router by one row.

        The new row has zero weights and bias ``init_bias``: with the default the new expert
        wins no token, so existing routing and outputs are unchanged until it is opened
        (:meth:`set_router_bias`) or trained.
        """
        group, leaf = split_expert_name(name)
        if name in self.expert_names:
            raise ValueError(f"expert {name!r} is already in this layer")
        check_expert(name, module, self.dim)
        ref = self.router.weight
        if ref.device.type != "meta":
            module = module.to(device=ref.device)
        if group not in self.experts:
            self.experts[group] = nn.ModuleDict()
        self.experts[group][leaf] = module
        self.expert_names.append(name)
        self._wants_context[name] = accepts_context(module)
        self.router.grow(1, init_bias)
        self._stacked.clear()
        self._constants.clear()

    def remove_expert(self, name: str) -> nn.Module:
        """Remove a domain expert and its router row; returns the module."""
        group, leaf = split_expert_name(name)
        if name in self._backbone_experts:
            raise ValueError(f"{name!r} is one of the backbone's own experts and cannot be removed")
        if name not in self.expert_names:
            raise KeyError(f"no expert {name!r} in this layer; experts: {self.expert_names}")
        row = self.expert_names.index(name)
        self.router.remove(row)
        self.expert_names.pop(row)
        self._wants_context.pop(name, None)
        module = self.experts[group][leaf]
        del self.experts[group][leaf]
        if len(self.experts[group]) == 0:
            del self.experts[group]
        self._stacked.clear()
        self._constants.clear()
        return module

    def set_router_bias(self, name: str, value: float) -> None:
        """Set the router bias of one expert (e.g. 0.0 to open a newly inserted expert)."""
        self.router.set_bias(self.expert_names.index(name), value)

    def set_frozen(self, name: str, frozen: bool) -> None:
        """Freeze or unfreeze one expert (``"shared"`` too) and, for routed experts, its router row."""
        if name in self._backbone_experts and self.stacked:
            self.experts["generic"].set_frozen(int(split_expert_name(name)[1]), frozen)
        else:
            for p in self.expert(name).parameters():
                p.requires_grad_(not frozen)
        if name != "shared":
            self.router.set_frozen(self.expert_names.index(name), frozen)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        out = super()._apply(fn, recurse)  # .to() / .half() / .cuda(): new parameters, new constants
        self._stacked.clear()
        self._constants.clear()
        return out

    def _modules_in_order(self) -> list[nn.Module]:
        """Every routed expert's module, in router order (views for stacked generic experts)."""
        return [self.expert(n) for n in self.expert_names]

    def _domain_modules(self) -> list[nn.Module]:
        """The domain experts' modules, in router order (after the generic experts)."""
        return [self.experts[g][leaf] for g, _, leaf in
                (n.partition(".") for n in self.expert_names[self.num_generic:])]

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, RouterStats]:
        """Apply the layer to ``(B, N, d)`` tokens laid out row-major on ``grid`` (h, w)."""
        batch, n_tok, dim = x.shape
        if dim != self.dim:
            raise ValueError(f"expected tokens of width {self.dim}, got {tuple(x.shape)}")
        grid2 = (grid[0], grid[1]) if grid is not None else (1, n_tok)
        grid3 = (batch, *grid2)
        flat = x.reshape(-1, dim)
        fused = (self.fused or (self.fused is None and flat.is_cuda)) and not self.dense and self._use_grouped(flat) \
            and moe_kernels.available(flat)
        shared_done = False
        if fused:
            try:
                routing = self.router(flat, fused=True)
                (routed, shared_done), counts, dropped = self._fused(flat, routing, grid3), None, None
            except moe_kernels.KernelError:  # warned once; the kernels are off on this device from now on
                fused = False
        if not fused:
            routing = self.router(flat)
            weight = routing.topk_weight.to(x.dtype)
            path = self._dense if self.dense else self._sparse
            routed, counts, dropped = path(flat, routing.topk_idx, weight, grid3)
        out = routed if self.shared is None or shared_done else routed + self.shared(flat)
        # Statistics nobody asked for cost ~20 small kernels per layer: with gradients off they are
        # computed when read (RouterStats keeps the logits); with gradients on, the losses and counts
        # are computed now, in the graph, and the entropy when read.
        grad = torch.is_grad_enabled()
        stats = RouterStats(list(self.expert_names), counts, routing.topk_idx, routing.topk_weight,
                            dropped_fraction=dropped, logits=routing.logits, probs=routing.probs if grad else None,
                            score=self.router.score, dropped_dtype=x.dtype, grid=grid2)
        if grad:
            stats.materialize(TRAINING_STATS)
        return out.reshape(batch, n_tok, dim), stats

    def _call(self, i: int, module: nn.Module, xs: torch.Tensor, flat: torch.Tensor, index: torch.Tensor,
              grid3: tuple[int, int, int]) -> torch.Tensor:
        if self._wants_context.get(self.expert_names[i], False):
            return module(xs, context=ExpertContext(tokens=flat, index=index, grid=grid3, every_token=xs is flat))
        return module(xs)

    def _sparse(self, flat: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                grid3: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The loop path, or the grouped one; counts and dropped share are ``None`` where not needed."""
        n_tok, k = idx.shape
        num_experts = len(self.expert_names)
        assignment = idx.reshape(-1)                                   # (T*k,) expert of each slot
        if self._use_grouped(flat):                                    # (dropless: no capacity)
            key = assignment.to(sort_key_dtype(num_experts))          # 1-byte keys: 1 radix pass, not 8
            experts, order = torch.sort(key, stable=True)              # slots grouped by expert
            return self._grouped(flat, idx, weight, order, experts, grid3), None, None
        order = torch.argsort(assignment, stable=True)                 # slots grouped by expert
        counts = count_assignments(assignment, num_experts)            # no host sync (bincount has one)
        kept = counts
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * n_tok * k / num_experts)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(order.numel(), device=order.device) - starts[assignment[order]]
            order = order[rank < capacity]                             # first `capacity` per expert
            kept = counts.clamp(max=capacity)
        tokens = order // k                                            # token of each sorted slot
        gates = weight.reshape(-1, 1)[order]                           # gate weight of each sorted slot
        routed = torch.zeros_like(flat)
        xs = flat[tokens]
        n_generic = self.num_generic
        generic = self.experts._modules["generic"]
        sizes = kept.tolist()                                          # (the loop path's one host read)
        start = 0
        if type(generic) is GenericExperts:  # the generic experts in one function over the stacks
            ys = generic_loop(xs[:sum(sizes[:n_generic])], sizes[:n_generic], *generic.stacks())
            for y, n in zip(ys, sizes, strict=False):
                if n:
                    sl = slice(start, start + n)
                    routed.index_add_(0, tokens[sl], y * gates[sl])  # weighted scatter-back
                start += n
            modules = [None] * n_generic + self._domain_modules()
            first = n_generic
        else:
            modules, first = self._modules_in_order(), 0
        for i in range(first, len(sizes)):                             # loop over experts, not tokens
            n = sizes[i]
            if n:
                sl = slice(start, start + n)
                y = self._call(i, modules[i], xs[sl], flat, tokens[sl], grid3)
                routed.index_add_(0, tokens[sl], y * gates[sl])  # weighted scatter-back
            start += n
        dropped = 1.0 - kept.sum().float() / max(n_tok * k, 1)
        return routed, counts, dropped

    def _use_grouped(self, flat: torch.Tensor) -> bool:
        aligned = self.dim % 16 == 0 and self.config.expert_hidden % 16 == 0
        dtype = _compute_dtype(flat)
        fast = flat.is_cuda and dtype == torch.bfloat16 and aligned
        auto = fast or (flat.device.type == "cpu" and torch.compiler.is_compiling())
        wanted = auto if self.grouped is None else self.grouped
        return (wanted and hasattr(torch, "_grouped_mm") and dtype in _GROUPED_DTYPES and self.capacity_factor is None
                and self._plain_generic())

    def _plain_generic(self) -> bool:
        """Whether the generic experts are stacked, which is what the grouped GEMM reads. Experts
        given modules of their own (:meth:`unstack_generic`: peft LoRA, ``Int8Linear``) take the
        loop path, which calls the modules themselves."""
        return type(self.experts._modules["generic"]) is GenericExperts

    def _grouped_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(w1, w2, b2)`` for :func:`grouped_mm`, read from the stacked parameters; folded and
        cast once per weight update while gradients are off."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # (inductor freezing folds the stack)
            return _fold(*self.experts["generic"].stacks(), dtype=dtype)
        return self._stacked.get(self._generic_params(), dtype)  # folded and cast once, not per call

    def _fold_for_gemm(self, params: list[torch.Tensor], dtype: torch.dtype,
                       shared: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        stacks = params[:4]  # with `shared`, its four parameters follow
        if shared:
            stacks = [torch.cat([s, p[None].to(s.dtype)]) for s, p in zip(stacks, params[4:], strict=True)]
        return _fold(*stacks, dtype=dtype)

    def _foldable_shared(self) -> list[torch.Tensor] | None:
        """The shared expert's ``fc1.w, fc1.b, fc2.w, fc2.b`` if it can be one more group of the
        grouped GEMM (a plain :class:`ExpertMLP` of one generic expert's width), else ``None``."""
        shared = self.shared
        if type(shared) is not ExpertMLP:
            return None
        fc1, fc2 = shared._modules["fc1"], shared._modules["fc2"]
        if type(fc1) is not nn.Linear or type(fc2) is not nn.Linear or fc1.out_features != self.config.expert_hidden:
            return None
        params = [fc1._parameters.get("weight"), fc1._parameters.get("bias"), fc2._parameters.get("weight"),
                  fc2._parameters.get("bias")]
        return None if any(p is None for p in params) else params  # (no bias, or a parametrisation: not folded)

    def _fused(self, flat: torch.Tensor, routing: Routing,
               grid3: tuple[int, int, int]) -> tuple[torch.Tensor, bool]:
        """The grouped path in inference with the kernels of :mod:`~vlsdk.models.moe_kernels`.

        The same GEMMs as :meth:`_grouped`; the shared expert, when it has one generic expert's
        width, is one more group whose rows (one per token) follow the routed slots. Returns the
        output and whether the shared expert is in it.
        """
        idx, weight = routing.topk_idx, routing.topk_weight
        n_tok, k = idx.shape
        n_generic = self.num_generic
        dtype = _compute_dtype(flat)
        shared_params = self._foldable_shared()
        shared = shared_params is not None
        params = self._generic_params()
        w1, w2, b2 = self._stacked.get(params + shared_params if shared else params, dtype, shared)
        experts, order = torch.sort(routing.key, stable=True)
        offs = torch.searchsorted(experts, self._constant("ends", flat.device, experts.dtype), right=True,
                                  out_int32=True)
        if shared:  # the shared group ends after one row per token
            offs = torch.cat([offs, self._constant("shared_end", flat.device, torch.int32, rows=n_tok * (k + 1))])
        xs, inverse = moe_kernels.gather_rows(flat, order, k, _PAD, dtype, shared=shared)
        ys = grouped_mm(torch.nn.functional.gelu(grouped_mm(xs, w1, offs)), w2, offs)
        routed = moe_kernels.combine(ys, inverse, idx, weight, b2, n_generic, flat.dtype, shared=shared)
        if len(self.expert_names) > n_generic:
            combine = torch.zeros(n_tok, len(self.expert_names), dtype=flat.dtype, device=flat.device)
            routed = self._add_domain(routed, flat, combine.scatter_(1, idx, weight.to(flat.dtype)), grid3)
        return routed, shared

    def _generic_params(self) -> list[torch.Tensor]:
        """The four stacked parameters ``fc1_weight, fc1_bias, fc2_weight, fc2_bias`` (stacked layout)."""
        return list(self.experts._modules["generic"]._parameters.values())

    def _constant(self, name: str, device: torch.device, dtype: torch.dtype | None = None,
                  rows: int | None = None) -> torch.Tensor:
        """A small constant tensor, made once per device and dtype in eager calls (fresh while compiling).

        ``"pad"``: the row ``[1, 0, ..., 0]`` (``_PAD`` wide) appended to every token for the fc1 bias,
        expanded to ``(rows, _PAD)`` (a view, kept per row count).
        ``"ends"``: ``[0, 1, ..., G - 2, E]`` for ``G`` generic of ``E`` experts, whose
        ``searchsorted`` in the expert-sorted slots gives the grouped GEMM's group ends (the last
        generic group runs to the end and carries the domain experts' slots).
        ``"shared_end"``: ``[rows]`` (``T * (k + 1)``), the end of the shared expert's group on the fused path.
        """
        key = (name, device, dtype, len(self.expert_names), rows)
        compiling = torch.compiler.is_compiling() or torch.jit.is_tracing()
        value = None if compiling else self._constants.get(key)
        if value is None:
            with torch.inference_mode(False) if not compiling else nullcontext():  # normal tensors, for training too
                if name == "shared_end":  # the end of the shared expert's group: after the slots and one row per token
                    value = torch.tensor([rows], device=device, dtype=dtype)
                elif name == "pad":
                    value = torch.zeros(1, _PAD, dtype=dtype, device=device)
                    value[0, 0] = 1.0
                    value = value.expand(rows, _PAD)
                else:
                    n_generic = self.num_generic
                    value = torch.tensor([*range(n_generic - 1), len(self.expert_names)], device=device,
                                         dtype=dtype)
            if not compiling:
                if len(self._constants) >= _CONSTANTS_KEPT:
                    self._constants.pop(next(iter(self._constants)))  # the oldest (token counts vary)
                self._constants[key] = value
        return value

    def _grouped(self, flat: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, order: torch.Tensor,
                 experts: torch.Tensor, grid3: tuple[int, int, int]) -> torch.Tensor:
        """The generic experts as two grouped GEMMs over the expert-sorted slots, with gathers only.

        The fc1 bias rides in the first GEMM: each row gets a constant 1 (padded to 16 columns for
        the GEMM's alignment) that meets the bias row of the stacked ``w1``, so no ``(T*k, hidden)``
        bias tensor is gathered. ``experts`` is the sorted assignment (``assignment[order]``): the
        group ends are one ``searchsorted`` in it, not a count, a cumsum and a cast. The outputs go
        back to slot order with the inverse permutation and each token's ``k`` rows are summed with
        their gate weights; the fc2 biases,
        ``sum_j w_tj * b2[i_tj]``, are one small ``(T, E) x (E, d)`` product.

        Domain experts (router rows after the generic ones, so their slots sort last) run on every
        token and are mixed in with their column of the combine weights, which is zero where they
        were not chosen: no host read of their token counts, static shapes. Their slots ride along
        in the last generic expert's group with gate weight zero.
        """
        n_tok, k = idx.shape
        n_generic = self.num_generic
        dtype = _compute_dtype(flat)  # bf16 under autocast, where LayerNorm hands over fp32 tokens
        w1, w2, b2 = self._grouped_weights(dtype)
        ones = self._constant("pad", flat.device, dtype, rows=n_tok)
        padded = torch.cat([flat.to(dtype), ones], dim=1)
        offs = torch.searchsorted(experts, self._constant("ends", flat.device, experts.dtype), right=True,
                                  out_int32=True)
        if torch.is_grad_enabled():
            inverse = inverse_permutation(order)
            xs = gather_slots(padded, order, inverse, k)
            ys = grouped_mm(torch.nn.functional.gelu(grouped_mm(xs, w1, offs)), w2, offs)
            slots = unsort_slots(ys, order, inverse)
        else:  # no backward: no inverse permutation (3 ops), the rows go back through `order`
            xs = padded.index_select(0, torch.div(order, k, rounding_mode="floor"))
            slots = unsort_rows(grouped_mm(torch.nn.functional.gelu(grouped_mm(xs, w1, offs)), w2, offs), order)
        slots = slots.view(n_tok, k, self.dim)
        domain = len(self.expert_names) > n_generic
        gate = weight.masked_fill(idx >= n_generic, 0.0) if domain else weight
        routed = (slots * gate.to(dtype).unsqueeze(-1)).sum(1, dtype=flat.dtype)
        combine = torch.zeros(n_tok, len(self.expert_names), dtype=weight.dtype, device=flat.device)
        combine = combine.scatter_(1, idx, weight)
        routed = routed.addmm_(combine[:, :n_generic] if domain else combine, b2.to(flat.dtype))
        return self._add_domain(routed, flat, combine, grid3) if domain else routed

    def _add_domain(self, routed: torch.Tensor, flat: torch.Tensor, combine: torch.Tensor,
                    grid3: tuple[int, int, int]) -> torch.Tensor:
        """Add the domain experts, each run on every token, weighted by its column of ``combine``
        ``(T, E)`` (zero where a token did not choose it)."""
        everyone = self._everyone(flat)
        n_generic = self.num_generic
        for i, module in enumerate(self._domain_modules(), start=n_generic):  # loop over domain experts, not tokens
            routed = routed + combine[:, i:i + 1] * self._call(i, module, flat, flat, everyone, grid3)
        return routed

    def _dense(self, flat: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
               grid3: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Export path: every expert on every token, combined with a (T, E) masked weight matrix."""
        num_experts = len(self.expert_names)
        combine = torch.zeros(flat.shape[0], num_experts, dtype=weight.dtype, device=flat.device)
        combine = combine.scatter(1, idx, weight)
        everyone = self._everyone(flat)
        out = torch.zeros_like(flat)
        generic = self.experts._modules["generic"]
        if type(generic) is GenericExperts:  # all generic experts in two batched GEMMs
            n_generic = self.num_generic
            out = generic(flat, combine[:, :n_generic])
            modules = list(enumerate(self._domain_modules(), start=n_generic))
        else:
            modules = list(enumerate(self._modules_in_order()))
        for i, module in modules:
            out = out + combine[:, i:i + 1] * self._call(i, module, flat, flat, everyone, grid3)
        # with gradients off RouterStats counts when read; bincount does not export, one_hot does
        counts = torch.nn.functional.one_hot(idx, num_experts).sum((0, 1)) if torch.is_grad_enabled() else None
        return out, counts, None

    def _everyone(self, flat: torch.Tensor) -> torch.Tensor | None:
        """Every token's row, the index of an expert that runs on all tokens (``None`` if none wants it)."""
        if not any(self._wants_context.values()):
            return None
        return torch.arange(flat.shape[0], device=flat.device)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, experts={self.expert_names}, top_k={self.top_k}, dense={self.dense}"


_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what torch._grouped_mm takes
_PAD = 16  # the bias column plus zeros: keeps the folded GEMM's K a multiple of 16
_CONSTANTS_KEPT = 16  # per layer: (name, device, dtype, row count) entries


def _compute_dtype(flat: torch.Tensor) -> torch.dtype:
    """The dtype the experts' GEMMs run in: autocast's where it is on for ``flat``'s device."""
    device = flat.device.type
    if flat.is_floating_point() and autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return flat.dtype


_count = count_assignments  # the old name (benchmarks/moe_layer.py imports it)


def _per_expert_keys(module: DynamicMoE, state_dict: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    """``load_state_dict`` pre-hook: stacked generic experts load into an unstacked layer (the
    stacked layer's own hook does the reverse)."""
    if not module.stacked:
        convert_generic_keys(state_dict, prefix + "experts.generic.", stacked=False,
                             num_experts=len(module._backbone_experts))


def _fold(fc1_w: torch.Tensor, fc1_b: torch.Tensor, fc2_w: torch.Tensor, fc2_b: torch.Tensor,
          dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stacks -> ``w1`` ``(E, d + _PAD, h)`` with the fc1 bias as row ``d``, ``w2`` ``(E, h, d)``
    (both column-major views, the layout ``_grouped_mm`` prefers) and ``b2`` ``(E, d)``; cast to
    ``dtype`` if given. ``w2`` and ``b2`` are views of the stacks when no cast is needed."""
    pad = fc1_w.new_zeros(fc1_w.shape[0], fc1_w.shape[1], _PAD - 1)
    w1 = torch.cat([fc1_w, fc1_b[:, :, None], pad], dim=2).transpose(1, 2)
    w2, b2 = fc2_w.transpose(1, 2), fc2_b
    if dtype is not None:
        w1, w2, b2 = w1.to(dtype), w2.to(dtype), b2.to(dtype)
    return w1, w2, b2


def _stack_generic(params: list[torch.Tensor],
                   dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-expert ``fc1.w, fc1.b, fc2.w, fc2.b`` stacked, then folded (``benchmarks/moe_layer.py``'s
    reference for a layout that restacks on every call)."""
    return _fold(*(torch.stack(params[i::4]) for i in range(4)), dtype=dtype)

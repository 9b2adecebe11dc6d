"""The MoE router: fp32 scores, top-k selection, renormalised weights, auxiliary losses."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from vlsdk.models import moe_kernels
from vlsdk.models.amp import autocast_enabled
from vlsdk.models.grouped_mm import StackedWeights

__all__ = ["Router", "Routing", "count_assignments", "load_balancing_loss", "router_entropy", "scores_to_probs",
           "sort_key_dtype", "z_loss"]


@dataclass
class Routing:
    """One routing decision for ``T`` tokens.

    Attributes:
        logits: ``(T, E)`` fp32 router logits.
        probs: ``(T, E)`` scores normalised to sum to one per token (``None`` from the fused
            inference kernel, which does not compute them).
        topk_idx: ``(T, k)`` chosen experts.
        topk_weight: ``(T, k)`` fp32 gate weights, renormalised over the chosen experts.
        key: ``(T * k,)`` the chosen experts as sort keys (:func:`sort_key_dtype`), from the fused
            kernel only.
    """

    logits: torch.Tensor
    probs: torch.Tensor | None
    topk_idx: torch.Tensor
    topk_weight: torch.Tensor
    key: torch.Tensor | None = None


class Router(nn.Module):
    """Linear router over named expert slots, computed in fp32 whatever the autocast dtype.

    Rows can be appended (:meth:`grow`) for new experts and frozen (:meth:`set_frozen`): a
    frozen row gets no gradient. A new row starts with zero weights and a bias of
    ``init_bias``; the default -30 keeps existing routing unchanged (the expert is selected by
    no token) until :meth:`set_bias` or training opens it.

    Args:
        dim: token width.
        num_experts: initial number of rows.
        top_k: experts per token.
        score: ``"softmax"`` or ``"sigmoid"``.
        jitter: multiplicative input noise amplitude in training (0 disables it).
    """

    def __init__(self, dim: int, num_experts: int, top_k: int, score: str = "softmax", jitter: float = 0.0) -> None:
        super().__init__()
        if score not in ("softmax", "sigmoid"):
            raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.top_k, self.score, self.jitter = top_k, score, jitter
        self.weight = nn.Parameter(torch.empty(num_experts, dim))
        self.bias = nn.Parameter(torch.zeros(num_experts))
        nn.init.normal_(self.weight, std=dim**-0.5)
        self.register_buffer("frozen", torch.zeros(num_experts, dtype=torch.bool), persistent=False)
        self._fp32 = StackedWeights(_to_fp32)

    @property
    def num_experts(self) -> int:
        return self.weight.shape[0]

    def grow(self, n: int = 1, init_bias: float = -30.0) -> None:
        """Append ``n`` rows with zero weights and bias ``init_bias`` (replaces the parameters)."""
        w, b = self.weight.detach(), self.bias.detach()
        self.weight = nn.Parameter(torch.cat([w, w.new_zeros(n, w.shape[1])]), requires_grad=self.weight.requires_grad)
        self.bias = nn.Parameter(torch.cat([b, b.new_full((n,), init_bias)]), requires_grad=self.bias.requires_grad)
        self.frozen = torch.cat([self.frozen, self.frozen.new_zeros(n)])

    def remove(self, row: int) -> None:
        """Delete one row (replaces the parameters)."""
        keep = torch.arange(self.num_experts, device=self.weight.device) != row
        self.weight = nn.Parameter(self.weight.detach()[keep], requires_grad=self.weight.requires_grad)
        self.bias = nn.Parameter(self.bias.detach()[keep], requires_grad=self.bias.requires_grad)
        self.frozen = self.frozen[keep]

    def set_frozen(self, row: int, frozen: bool) -> None:
        self.frozen[row] = frozen

    @torch.no_grad()
    def set_bias(self, row: int, value: float) -> None:
        self.bias[row] = value

    def _fp32_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight.T, bias)`` in fp32; in a low-precision model cast (and transposed) once per weight
        update, not per call."""
        w, b = self.weight, self.bias
        if torch.is_grad_enabled():  # a tensor select, not a host read of `frozen`: no sync, no graph break
            w = torch.where(self.frozen[:, None], w.detach(), w)
            b = torch.where(self.frozen, b.detach(), b)
        elif w.dtype != torch.float32 and not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
            return self._fp32.get((w, b))  # keyed on the parameters' versions (see StackedWeights)
        return w.float().t(), b.float()

    def forward(self, x: torch.Tensor, fused: bool = False) -> Routing:
        """Route ``(T, d)`` tokens; ``fused``: top-k and weights by one kernel (inference on the GPU,
        :func:`vlsdk.models.moe_kernels.available`), which also gives the sort keys and no ``probs``."""
        wt, b = self._fp32_params()
        x = x.float()
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        device = x.device.type  # (the meta device, for host-overhead measurements, has no autocast)
        autocast = autocast_enabled(device)
        with torch.autocast(device_type=device, enabled=False) if autocast else nullcontext():
            logits = torch.addmm(b, x, wt)  # what F.linear(x, w, b) runs, minus its transpose
            if fused:
                idx, key, weight = moe_kernels.route(logits, self.top_k, self.score, sort_key_dtype(self.num_experts))
                return Routing(logits, None, idx, weight, key)
            probs = scores_to_probs(logits, self.score)
            weight, idx = probs.topk(self.top_k, dim=-1)
            weight = weight / weight.sum(dim=-1, keepdim=True)
        return Routing(logits, probs, idx, weight)


def scores_to_probs(logits: torch.Tensor, score: str) -> torch.Tensor:
    """The router's ``(T, E)`` scores from its fp32 logits: softmax, or sigmoids normalised to sum to one."""
    if score == "softmax":
        return logits.softmax(dim=-1)
    scores = logits.sigmoid()
    return scores / scores.sum(dim=-1, keepdim=True)


def sort_key_dtype(num_experts: int) -> torch.dtype:
    """The narrowest integer dtype for expert ids: radix sort passes scale with the key's bytes."""
    return torch.uint8 if num_experts <= 255 else torch.int32


def _to_fp32(params: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    w, b = params
    return w.float().t(), b.float()


def count_assignments(assignment: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``bincount(assignment, minlength=num_experts)`` with a static shape and no host sync."""
    counts = torch.zeros(num_experts, dtype=torch.long, device=assignment.device)
    return counts.scatter_add_(0, assignment, torch.ones_like(assignment))


def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the per-token score distributions, without gradient."""
    return -(probs * probs.clamp_min(1e-20).log()).sum(-1).mean().detach()


def load_balancing_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer auxiliary loss ``E * sum_i f_i * P_i``: 1.0 when perfectly balanced.

    ``f_i`` is the share of assignments expert ``i`` received (no gradient), ``P_i`` its mean
    router probability (carries the gradient).
    """
    num_experts = probs.shape[-1]
    f = counts.float() / counts.sum().clamp(min=1)
    return num_experts * (f * probs.mean(dim=0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss (ST-MoE): mean squared log-sum-exp of the logits."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()

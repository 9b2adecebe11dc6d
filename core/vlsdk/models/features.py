"""Typed results that flow between the encoder, the MoE layers, domain experts and heads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ExpertContext", "RouterStats", "EncoderFeatures"]


@dataclass
class ExpertContext:
    """What a domain expert may see besides its own tokens.

    A domain expert's ``forward(x)`` receives only the ``(n, d)`` tokens routed to it. An expert
    that also needs their neighbourhood (a depthwise convolution over the token grid, say) declares
    a keyword parameter ``context`` and receives this object.

    Attributes:
        tokens: every token of the layer's input, flattened to ``(B * H * W, d)``.
        index: ``(n,)`` row of ``tokens`` for each routed token, in the order of ``x``.
        grid: ``(B, H, W)``: batch size and token grid; ``tokens`` is row-major over it.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    grid: tuple[int, int, int]


@dataclass
class RouterStats:
    """Routing statistics of one MoE layer for one forward pass.

    Attributes:
        expert_names: slot names in router order (``"generic.0"``, ..., ``"medical.lesion"``).
        tokens_per_expert: ``(E,)`` number of (token, expert) assignments each expert received.
        topk_idx: ``(T, k)`` chosen experts per token (rows in encoder token order).
        topk_weight: ``(T, k)`` their renormalised gate weights.
        entropy: mean entropy of the router's score distribution (nats).
        dropped_fraction: share of assignments dropped by the capacity limit (0 when dropless).
        aux_loss: load-balancing loss (1.0 for a perfectly balanced router).
        z_loss: router z-loss, mean squared log-sum-exp of the logits.
    """

    expert_names: list[str]
    tokens_per_expert: torch.Tensor
    topk_idx: torch.Tensor
    topk_weight: torch.Tensor
    entropy: torch.Tensor
    dropped_fraction: torch.Tensor
    aux_loss: torch.Tensor
    z_loss: torch.Tensor


@dataclass
class EncoderFeatures:
    """What ``HybridEncoder.forward_features`` returns; every head taps it.

    Attributes:
        tokens: ``(B, N, D)`` final visual tokens (row-major over ``grid``).
        grid: ``(h, w)`` token grid of ``tokens``.
        pyramid: stride -> ``(B, C, H/stride, W/stride)`` feature maps. Strides 4 and 8 come
            from the CNN stem, 16 and 32 (when the config has two ViT stages) from the ViT.
        image_size: ``(H, W)`` of the input images.
        router_stats: one :class:`RouterStats` per MoE layer, in depth order.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    pyramid: dict[int, torch.Tensor]
    image_size: tuple[int, int]
    router_stats: list[RouterStats] = field(default_factory=list)

    @property
    def channels(self) -> dict[int, int]:
        """Stride -> number of channels of each pyramid level."""
        return {s: int(f.shape[1]) for s, f in self.pyramid.items()}

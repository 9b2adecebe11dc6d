"""Typed results that flow between the encoder, the MoE layers, domain experts and heads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vlsdk.models.router import count_assignments, load_balancing_loss, router_entropy, scores_to_probs, z_loss

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
        every_token: ``index`` is every row of ``tokens`` in order (the expert runs on all tokens,
            as domain experts do on the grouped and export paths), so grid operations may work on
            the whole ``(B, H, W, d)`` map instead of gathering neighbours row by row.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    grid: tuple[int, int, int]
    every_token: bool = False


class RouterStats:
    """Routing statistics of one MoE layer for one forward pass.

    The statistics the forward itself does not need are computed from the routing when they are
    first read, then kept: under ``torch.no_grad()`` / ``torch.inference_mode()`` an inference
    forward launches none of their kernels (about 20 small ones per layer), and reading them
    afterwards (``vlsdk inspect``, routing logs) gives the same values. With gradients enabled the
    MoE layer computes them during the forward (:meth:`materialize`), so ``aux_loss`` and
    ``z_loss`` are part of the training graph (and of a ``torch.compile`` graph) as before.
    Holding the routing for a lazy read keeps the ``(T, E)`` fp32 router logits alive as long as
    these statistics are.

    Attributes:
        expert_names: slot names in router order (``"generic.0"``, ..., ``"medical.lesion"``).
        tokens_per_expert: ``(E,)`` number of (token, expert) assignments each expert received.
        topk_idx: ``(T, k)`` chosen experts per token (rows in encoder token order).
        topk_weight: ``(T, k)`` their renormalised gate weights.
        entropy: mean entropy of the router's score distribution (nats).
        dropped_fraction: share of assignments dropped by the capacity limit (0 when dropless).
        aux_loss: load-balancing loss (1.0 for a perfectly balanced router).
        z_loss: router z-loss, mean squared log-sum-exp of the logits.
        probs: ``(T, E)`` router scores (with their graph when gradients were on).
        layer: index of the MoE layer in the encoder's :attr:`~vlsdk.HybridEncoder.moe_layers`
            (``None`` for a layer called on its own).
        grid: ``(h, w)`` token grid the layer ran on (``(1, N)`` when called without one).
        stride: pixels per token of ``grid`` (``None`` for a layer called on its own).

    Args:
        expert_names, tokens_per_expert, topk_idx, topk_weight, entropy, dropped_fraction,
            aux_loss, z_loss: the attributes; a statistic left ``None`` is computed on first read
            from ``topk_idx``, ``logits`` and ``probs``.
        logits: ``(T, E)`` fp32 router logits (needed when ``entropy``, ``aux_loss`` or ``z_loss`` is
            left ``None``).
        probs: ``(T, E)`` router scores; ``None`` recomputes them from ``logits`` with ``score``.
        score: the router's score function, ``"softmax"`` or ``"sigmoid"``.
        dropped_dtype: dtype of the zero ``dropped_fraction`` made when it is left ``None``.
        layer, grid, stride: where the layer sits (the encoder fills in ``layer`` and ``stride``).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
        >>> st = RouterStats(["generic.0", "generic.1"], topk_idx=logits.argmax(1, keepdim=True),
        ...                  topk_weight=torch.ones(3, 1), logits=logits)
        >>> st.tokens_per_expert.tolist(), round(float(st.aux_loss), 3)  # 2:1 split, above 1.0
        ([2, 1], 1.085)
    """

    def __init__(self, expert_names: list[str], tokens_per_expert: torch.Tensor | None = None,
                 topk_idx: torch.Tensor | None = None, topk_weight: torch.Tensor | None = None,
                 entropy: torch.Tensor | None = None, dropped_fraction: torch.Tensor | None = None,
                 aux_loss: torch.Tensor | None = None, z_loss: torch.Tensor | None = None, *,
                 logits: torch.Tensor | None = None, probs: torch.Tensor | None = None,
                 score: str = "softmax", dropped_dtype: torch.dtype = torch.float32, layer: int | None = None,
                 grid: tuple[int, int] | None = None, stride: int | None = None) -> None:
        if topk_idx is None or topk_weight is None:
            raise ValueError("RouterStats needs topk_idx and topk_weight")
        if logits is None and (entropy is None or aux_loss is None or z_loss is None):
            raise ValueError("RouterStats needs the router logits to compute the statistics left None")
        self.expert_names = expert_names
        self.topk_idx = topk_idx
        self.topk_weight = topk_weight
        self._tokens_per_expert = tokens_per_expert
        self._entropy = entropy
        self._dropped_fraction = dropped_fraction
        self._aux_loss = aux_loss
        self._z_loss = z_loss
        self._logits, self._probs, self._score, self._dropped_dtype = logits, probs, score, dropped_dtype
        self.layer, self.grid, self.stride = layer, grid, stride

    # -- lazily computed statistics -------------------------------------------------------------
    def _scores(self) -> torch.Tensor:
        if self._probs is None:
            self._probs = scores_to_probs(self._logits, self._score)  # fp32 logits: autocast leaves these ops fp32
        return self._probs

    @property
    def probs(self) -> torch.Tensor:
        return self._scores()

    @property
    def tokens_per_expert(self) -> torch.Tensor:
        if self._tokens_per_expert is None:
            self._tokens_per_expert = count_assignments(self.topk_idx.reshape(-1), len(self.expert_names))
        return self._tokens_per_expert

    @property
    def entropy(self) -> torch.Tensor:
        if self._entropy is None:
            self._entropy = router_entropy(self._scores())
        return self._entropy

    @property
    def dropped_fraction(self) -> torch.Tensor:
        if self._dropped_fraction is None:
            self._dropped_fraction = torch.zeros((), dtype=self._dropped_dtype, device=self.topk_idx.device)
        return self._dropped_fraction

    @property
    def aux_loss(self) -> torch.Tensor:
        if self._aux_loss is None:
            self._aux_loss = load_balancing_loss(self._scores(), self.tokens_per_expert)
        return self._aux_loss

    @property
    def z_loss(self) -> torch.Tensor:
        if self._z_loss is None:
            self._z_loss = z_loss(self._logits)
        return self._z_loss

    def materialize(self, names: tuple[str, ...] | None = None) -> RouterStats:
        """Compute the statistics ``names`` (default: every one) now.

        The MoE layer computes the training losses and the token counts in its forward while
        gradients are enabled (so a compiled training step has them in its graph); the entropy and
        the dropped share, which nothing in a training step reads, stay lazy.
        """
        for name in _LAZY if names is None else names:
            getattr(self, name)
        return self

    def __repr__(self) -> str:
        done = [n for n in _LAZY if getattr(self, "_" + n) is not None]
        return (f"RouterStats(layer={self.layer}, grid={self.grid}, stride={self.stride}, expert_names={self.expert_names}, "
                f"topk_idx={tuple(self.topk_idx.shape)}, computed={done})")


_LAZY = ("tokens_per_expert", "entropy", "dropped_fraction", "aux_loss", "z_loss")
#: what a training forward computes at once (the rest when read)
TRAINING_STATS = ("tokens_per_expert", "aux_loss", "z_loss")


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

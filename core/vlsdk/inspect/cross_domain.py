"""One model holding every domain's expert: teach its router domain routing, then table it.

:func:`cross_domain_routing` builds a fresh backbone, inserts each domain's registered expert,
opens their router rows (:func:`~vlsdk.train.prepare_specialisation`: the backbone and the
generic router rows stay frozen) and measures :func:`~vlsdk.inspect.domain_expert_table` on
held-out inputs of every domain twice: right after the rows are opened, and after
:func:`specialise_domain_routing` has trained the domain experts' router rows with the domain
labels of the training inputs (for a token of domain ``d``, ``-log p(expert of d)`` in every MoE
layer). Inputs with fewer channels than the widest domain are zero-padded, so the router has to
tell the domains apart from what the backbone makes of their pixels.

Example:
    >>> import torch
    >>> from vlsdk.inspect.cross_domain import cross_domain_routing
    >>> res = cross_domain_routing(  # doctest: +SKIP
    ...     train={"medical": torch.rand(16, 1, 64, 64), "industrial": torch.rand(16, 2, 64, 64)},
    ...     held_out={"medical": torch.rand(8, 1, 64, 64), "industrial": torch.rand(8, 2, 64, 64)},
    ...     experts={"medical": "medical.lesion", "industrial": "industrial.pcb_defect"})
    >>> res.table.own_share("medical") > res.before.own_share("medical")  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vlsdk.inspect.routing import DomainExpertTable, domain_expert_table
from vlsdk.train.specialise import own_expert_loss, router_probs

__all__ = ["CrossDomainRouting", "cross_domain_routing", "specialise_domain_routing", "pad_channels"]


@dataclass
class CrossDomainRouting:
    """What :func:`cross_domain_routing` returns.

    Attributes:
        table: the domain x expert table on the held-out inputs after specialisation.
        before: the same table with the experts' router rows opened but untrained.
        experts: domain -> its expert's name.
        steps: optimiser steps of the routing lesson.
        losses: the routing loss (mean over domains and layers) of every step.
        in_chans: channels every domain's inputs were zero-padded to.
        model: the shared model.
    """

    table: DomainExpertTable
    before: DomainExpertTable
    experts: dict[str, str]
    steps: int
    losses: list[float] = field(default_factory=list)
    in_chans: int = 0
    model: nn.Module | None = None

    def rows(self) -> list[dict[str, Any]]:
        """Per domain: the own-expert share before and after (overall and per MoE layer), and the tokens counted."""
        rows = []
        for i, d in enumerate(self.table.domains):
            own = self.table.experts.index(self.experts[d])
            row: dict[str, Any] = {"domain": d, "expert": self.experts[d], "own share before": self.before.own_share(d),
                                   "own share after": self.table.own_share(d)}
            row.update({f"after, layer {j}": float(layer[i, own]) for j, layer in enumerate(self.table.per_layer)})
            row["held-out tokens"] = self.table.tokens[d]
            rows.append(row)
        return rows


def pad_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Zero-pad ``(B, C, H, W)`` images to ``channels`` channels (``C <= channels``)."""
    if images.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    c = images.shape[1]
    if c > channels:
        raise ValueError(f"images have {c} channels, more than the {channels} to pad to")
    if c == channels:
        return images.float()
    pad = images.new_zeros(images.shape[0], channels - c, *images.shape[2:])
    return torch.cat([images, pad], 1).float()


def specialise_domain_routing(model: nn.Module, train: Mapping[str, torch.Tensor], experts: Mapping[str, str], *,
                              steps: int = 30, batch_size: int = 4, lr: float = 0.05, seed: int = 0) -> list[float]:
    """Train the domain experts' router rows so each domain's tokens choose that domain's expert.

    Call :func:`~vlsdk.train.prepare_specialisation` first (it freezes everything else). Every
    step draws ``batch_size`` inputs per domain and minimises, per domain, the routing term of
    stage 2 (:func:`~vlsdk.train.specialise.own_expert_loss`: the mean over MoE layers and tokens
    of ``-log p(expert of the domain)``), the domains weighted equally. No task loss: this is the
    routing term alone (stage 2 proper is :class:`~vlsdk.train.specialise.SpecialisationLoss`).

    Args:
        model: a :class:`~vlsdk.VLModel` holding every expert in ``experts``.
        train: domain -> ``(N, C, H, W)`` training inputs, already in the model's channel count.
        experts: domain -> expert name.
        steps: optimiser steps.
        batch_size: inputs per domain and step.
        lr: AdamW learning rate.
        seed: batch order seed.

    Returns:
        The loss of every step.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    missing = sorted(set(train) - set(experts))
    if missing:
        raise ValueError(f"domains {missing} have training inputs but no expert; experts: {dict(experts)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: call vlsdk.train.prepare_specialisation(model, experts) first")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    was = model.training
    model.train()
    losses = []
    try:
        for _ in range(steps):
            total = torch.zeros((), device=device)
            for domain, images in train.items():
                idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=g)
                with router_probs(model) as seen:
                    model.forward_features(images[idx].to(device))
                total = total + own_expert_loss(seen, experts[domain]) / len(train)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            losses.append(float(total.detach()))
    finally:
        model.train(was)
    return losses


def cross_domain_routing(train: Mapping[str, torch.Tensor], held_out: Mapping[str, torch.Tensor],
                         experts: Mapping[str, str], *, config: str = "tiny", steps: int = 30, batch_size: int = 4,
                         lr: float = 0.05, seed: int = 0, device: str = "cpu") -> CrossDomainRouting:
    """A fresh model with every domain's expert, its router taught domain routing, tabled before and after.

    Args:
        train: domain -> ``(N, C_d, H_d, W_d)`` inputs for the routing lesson.
        held_out: domain -> other inputs of the domain, for the tables.
        experts: domain -> the name of its registered expert (``"medical.lesion"``).
        config: the backbone config name.
        steps, batch_size, lr, seed: see :func:`specialise_domain_routing`.
        device: torch device.

    Returns:
        :class:`CrossDomainRouting`.

    Raises:
        ValueError: fewer than two domains, a domain missing from ``train``/``held_out``, or
            two domains sharing an expert.
        UnknownNameError: an expert is not registered (its plugin is not loaded).
    """
    import vlsdk
    from vlsdk.train.specialise import prepare_specialisation

    domains = list(experts)
    if len(domains) < 2:
        raise ValueError(f"cross-domain routing needs two or more domains, got {domains}")
    lacking = [d for d in domains if d not in train or d not in held_out]
    if lacking:
        raise ValueError(f"domains {lacking} lack training or held-out inputs")
    if len(set(experts.values())) != len(domains):
        raise ValueError(f"each domain needs its own expert, got {dict(experts)}")
    channels = max(int(train[d].shape[1]) for d in domains)
    torch.manual_seed(seed)
    model = vlsdk.VLModel(config, in_chans=channels)
    for d in domains:
        model.add_expert(experts[d])
    model.to(device)
    # a fresh router (logits centred on 0): rows opened at bias 0, zero weights, so every domain
    # starts from the same constant logit and the table's "before" is the same for all domains
    prepare_specialisation(model, [experts[d] for d in domains], open_bias=0.0, train_heads=False)
    eval_inputs = {d: pad_channels(held_out[d], channels) for d in domains}
    before = domain_expert_table(model, eval_inputs)
    losses = specialise_domain_routing(model, {d: pad_channels(train[d], channels) for d in domains}, experts,
                                       steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    after = domain_expert_table(model, eval_inputs)
    for p in model.parameters():
        p.requires_grad_(False)
    return CrossDomainRouting(after, before, dict(experts), steps, losses, channels, model.eval())

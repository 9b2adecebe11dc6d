"""Stage 2, expert specialisation: a frozen backbone, trainable domain experts and their router rows.

The task loss alone does not teach the router domain routing: with top-k and renormalised gates a
row is trained only on tokens whose top-k already holds its expert, and a domain's row never sees
the other domain's tokens. :class:`SpecialisationLoss` adds, for each domain's batch,
:func:`own_expert_loss` (``-log p(expert of the domain)`` over the batch's tokens, every MoE layer
holding the expert), and :class:`DomainBatches` puts every domain's batch in every step, so each
row is pulled up on its domain's tokens and, through the softmax, down on the others'.

:class:`SpecialisationLoss` also holds the frozen backbone's BatchNorm layers in eval mode
(:func:`frozen_batch_norms`). In train mode each single-domain batch would be normalised by its
own statistics, which removes what sets the domains apart (the per-channel domain mean), and the
running statistics, being buffers, would drift under a "frozen" backbone. The router then trained
on features it never sees at inference: on a backbone pre-trained on BraTS + DeepPCB, with
crops of 64 for BraTS and boards of 256, it learnt the token grid position (only boards reach
positions past 4 x 4) and sent full held-out slices to the PCB expert (top-1 0.93).

Example:
    >>> from vlsdk.train import Trainer, prepare_specialisation
    >>> from vlsdk.train.specialise import DomainBatches, SpecialisationLoss
    >>> experts = {"medical": "medical.lesion", "industrial": "industrial.pcb_defect"}
    >>> prepare_specialisation(model, list(experts.values()))  # doctest: +SKIP
    >>> data = DomainBatches({"medical": (med_set, med_collate), "industrial": (pcb_set, pcb_collate)},
    ...                      batch_size=8, length=400)  # doctest: +SKIP
    >>> loss = SpecialisationLoss({"medical": lesion_loss, "industrial": detection_loss}, experts)  # doctest: +SKIP
    >>> Trainer(model, loss, data, config, collate_fn=DomainBatches.collate).fit()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vlsdk.models.collector import routing_collectors
from vlsdk.models.features import RouterStats

__all__ = ["prepare_specialisation", "routing_share", "mixed_indices", "router_probs", "own_expert_loss",
           "frozen_batch_norms", "SpecialisationLoss", "DomainBatches", "ROUTING_WEIGHT"]

ROUTING_WEIGHT = 1.0
"""Default weight of the domain routing term in :class:`SpecialisationLoss`."""

LossFn = Callable[[nn.Module, Any], Any]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def prepare_specialisation(model: nn.Module, experts: Sequence[str], *, open_bias: float | str | None = "parity",
                           train_heads: bool | Sequence[str] = True) -> list[str]:
    """Freeze everything but the named domain experts, their router rows and (optionally) heads.

    Args:
        model: a :class:`~vlsdk.VLModel` with the experts already inserted.
        experts: domain expert names, e.g. ``["medical.lesion"]``.
        open_bias: how to open each expert's router row so it starts receiving tokens (inserted
            experts start closed: zero weights, bias -30). A float raises the
            bias to at least that value, weights left as they are: right for a fresh router,
            whose logits are centred on 0, but a *trained* router's logits sit below 0 (the
            z-loss pulls their log-sum-exp towards 0), so there bias 0 beats every generic
            expert and the new, untrained experts take over every token's top-k (measured on a
            pre-trained ``tiny``: 0.92 of all assignments). ``"parity"`` gives a row that was
            never trained (all-zero weights) the mean weights and bias of the backbone's own
            rows, so on every token its logit is the mean generic logit: it competes with the
            generic experts instead of replacing them (the default: right for a trained router
            and a fresh one alike). ``None`` leaves the row alone.
        train_heads: ``True`` for every head, or the names of the heads to train.

    Returns:
        The names of the trainable parameters.
    """
    missing = [e for e in experts if e not in getattr(model, "expert_specs", {})]
    if missing:
        raise ValueError(f"experts {missing} are not in the model; inserted: {sorted(model.expert_specs)}")
    if isinstance(open_bias, str) and open_bias != "parity":
        raise ValueError(f"open_bias must be 'parity', a float or None, got {open_bias!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.moe_layers:
        chosen = [e for e in experts if e in layer.expert_names]
        if not chosen:
            continue
        router = layer.router
        router.weight.requires_grad_(True)
        router.bias.requires_grad_(True)
        router.frozen.fill_(True)  # every row frozen ...
        for name in chosen:        # ... but the chosen experts' rows
            row = layer.expert_names.index(name)
            router.frozen[row] = False
            for p in layer.expert(name).parameters():
                p.requires_grad_(True)
            if open_bias == "parity":
                _open_at_parity(layer, row)
            elif open_bias is not None:
                with torch.no_grad():
                    router.bias[row] = max(float(router.bias[row]), float(open_bias))
    heads = list(model.heads) if train_heads is True else list(train_heads or [])
    for name in heads:
        for p in model.heads[name].parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


@torch.no_grad()
def _open_at_parity(layer: nn.Module, row: int) -> None:
    """Give an untrained row (all-zero weights) the mean weights and bias of the backbone's rows."""
    router = layer.router
    if bool(router.weight[row].any()):
        return  # trained (or set) already: leave it
    own = [i for i, name in enumerate(layer.expert_names) if name.startswith("generic.")]
    if not own:
        raise ValueError(f"no generic expert rows to open at parity with; experts: {layer.expert_names}")
    router.weight[row] = router.weight[own].mean(0)
    router.bias[row] = router.bias[own].mean()


@torch.no_grad()
def routing_share(model: nn.Module, images: torch.Tensor, expert: str) -> float:
    """Share of all (token, expert) assignments, over every MoE layer holding ``expert``, that it gets."""
    was = model.training
    model.eval()
    try:
        stats = model.forward_features(images).router_stats
    finally:
        model.train(was)
    got = total = 0
    for s in stats:
        if expert in s.expert_names:
            got += int(s.tokens_per_expert[s.expert_names.index(expert)])
            total += int(s.tokens_per_expert.sum())
    if total == 0:
        raise ValueError(f"no MoE layer holds expert {expert!r}")
    return got / total


def mixed_indices(n_real: int, n_synthetic: int, ratio: float = 3.0, length: int | None = None,
                  seed: int = 0) -> list[tuple[str, int]]:
    """A deterministic schedule mixing real and synthetic samples at ``ratio`` real : 1 synthetic.

    Returns ``length`` (default: enough to show every real sample once) ``("real"|"synthetic", i)``
    pairs; within each source the order is a seeded permutation, cycled when exhausted.
    """
    if ratio <= 0 or n_real < 1 or n_synthetic < 1:
        raise ValueError(f"need ratio > 0 and samples of both kinds, got ratio={ratio}, real={n_real}, "
                         f"synthetic={n_synthetic}")
    length = length if length is not None else int(n_real * (1 + 1 / ratio))
    g = torch.Generator().manual_seed(seed)
    real, synth = torch.randperm(n_real, generator=g).tolist(), torch.randperm(n_synthetic, generator=g).tolist()
    out, r, s = [], 0, 0
    for i in range(length):
        # the synthetic share after i+1 samples stays at 1/(1+ratio)
        if int((i + 1) / (1 + ratio)) > s:
            out.append(("synthetic", synth[s % n_synthetic]))
            s += 1
        else:
            out.append(("real", real[r % n_real]))
            r += 1
    return out


@contextmanager
def router_probs(model: nn.Module) -> Iterator[list[tuple[list[str], torch.Tensor]]]:
    """Collect ``(expert_names, probs)`` of every MoE layer of each forward of ``model`` while the block runs.

    Taken from the encoders' routing collectors (one entry per layer, depth order, per forward).

    ``probs`` is the router's ``(T, E)`` score distribution, with its graph: a loss built on it
    trains the router rows that are not frozen.
    """
    seen: list[tuple[list[str], torch.Tensor]] = []

    def collect(encoder: nn.Module, stats: list[RouterStats]) -> None:
        seen.extend((list(s.expert_names), s.probs) for s in stats)

    handles = [c.subscribe(collect) for _, c in routing_collectors(model)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def frozen_batch_norms(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Hold every BatchNorm layer of ``model`` with no trainable parameter in eval mode while the block runs.

    Such a layer then normalises with its running statistics and does not update them: a frozen
    backbone computes the same features in training as at inference, whatever the batch holds.
    Layers with a trainable parameter, and layers already in eval mode, are left alone; the
    others are put back in train mode on exit.

    Yields:
        The layers switched to eval mode.

    Example:
        >>> with frozen_batch_norms(model):  # doctest: +SKIP
        ...     loss = lesion_loss(model, batch)
    """
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS) and m.training
             and not any(p.requires_grad for p in m.parameters(recurse=False))]
    for m in norms:
        m.eval()
    try:
        yield norms
    finally:
        for m in norms:
            m.train()


def own_expert_loss(seen: Sequence[tuple[Sequence[str], torch.Tensor]], expert: str) -> torch.Tensor:
    """The domain routing term: mean over router calls holding ``expert`` of the token mean of ``-log p(expert)``.

    Args:
        seen: ``(expert_names, probs)`` pairs, as :func:`router_probs` collects them.
        expert: the expert every token in ``seen`` should be sent to (its domain's).

    Raises:
        ValueError: no router call in ``seen`` holds ``expert``.
    """
    per_layer = [-probs[:, list(names).index(expert)].float().clamp_min(1e-9).log().mean()
                 for names, probs in seen if expert in names]
    if not per_layer:
        raise ValueError(f"no MoE layer seen holds expert {expert!r}")
    return torch.stack(per_layer).mean()


class SpecialisationLoss:
    """``loss_fn(model, batches)`` for stage 2: each domain's task loss plus its weighted routing term.

    ``batches`` maps domain -> that domain's batch (a :class:`DomainBatches` item); the result is
    the sum over domains of ``task_loss(model, batch) + routing_weight * own_expert_loss``, the
    routing term taken over the tokens of that batch's forward passes. The forwards run under
    :func:`frozen_batch_norms` unless ``freeze_batch_norms=False``.

    Args:
        task_losses: domain -> ``loss_fn(model, batch)`` returning a tensor or a dict with ``"loss"``.
        experts: domain -> the name of its expert.
        routing_weight: weight of the routing term (``0``: the task losses alone).
        freeze_batch_norms: hold the frozen BatchNorm layers in eval mode (the default; ``False``
            normalises each single-domain batch by its own statistics, which hides the domain
            from the router and moves the running statistics).

    Example:
        >>> loss = SpecialisationLoss({"medical": lesion_loss}, {"medical": "medical.lesion"})  # doctest: +SKIP
        >>> loss(model, {"medical": batch})["routing_loss"]  # doctest: +SKIP
    """

    def __init__(self, task_losses: Mapping[str, LossFn], experts: Mapping[str, str], *,
                 routing_weight: float = ROUTING_WEIGHT, freeze_batch_norms: bool = True) -> None:
        missing = sorted(set(task_losses) - set(experts))
        if missing:
            raise ValueError(f"domains {missing} have a task loss but no expert; experts: {dict(experts)}")
        if routing_weight < 0:
            raise ValueError(f"routing_weight must be >= 0, got {routing_weight}")
        self.task_losses, self.experts, self.routing_weight = dict(task_losses), dict(experts), routing_weight
        self.freeze_batch_norms = freeze_batch_norms

    def __call__(self, model: nn.Module, batches: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        unknown = sorted(set(batches) - set(self.task_losses))
        if unknown:
            raise ValueError(f"batches of domains {unknown} without a task loss; known: {sorted(self.task_losses)}")
        out: dict[str, torch.Tensor] = {}
        for domain, batch in batches.items():
            norms = frozen_batch_norms(model) if self.freeze_batch_norms else nullcontext()
            with norms, router_probs(model) as seen:
                task = self.task_losses[domain](model, batch)
            task = task["loss"] if isinstance(task, Mapping) else task
            route = own_expert_loss(seen, self.experts[domain])
            out[f"task_loss.{domain}"] = task.detach()
            out[f"routing_loss.{domain}"] = route.detach()
            term = task.float() + self.routing_weight * route if self.routing_weight else task.float()
            out["loss"] = out["loss"] + term if "loss" in out else term
        return out


class DomainBatches(Dataset):
    """Stage-2 data: item ``i`` holds one whole batch of every domain, so every step sees them all.

    Use with a Trainer ``batch_size`` of 1 and ``collate_fn=DomainBatches.collate``. Batch ``i`` of a
    domain is its samples ``i * batch_size ...`` (cycled), so the Trainer's shuffling picks batches.

    Args:
        sets: domain -> ``(dataset, collate)``.
        batch_size: samples per domain batch.
        length: items (steps) per epoch.
    """

    def __init__(self, sets: Mapping[str, tuple[Dataset, Callable[[list[Any]], Any]]], batch_size: int,
                 length: int) -> None:
        if not sets or batch_size < 1 or length < 1:
            raise ValueError(f"need a domain, batch_size >= 1 and length >= 1, got {list(sets)}, {batch_size}, "
                             f"{length}")
        self.sets, self.batch_size, self.length = dict(sets), batch_size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = {}
        for domain, (data, collate) in self.sets.items():
            n = len(data)  # type: ignore[arg-type]
            out[domain] = collate([data[(i * self.batch_size + j) % n] for j in range(self.batch_size)])
        return out

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        """The Trainer's ``collate_fn``: its one item (``batch_size`` 1) as it is."""
        if len(items) != 1:
            raise ValueError(f"DomainBatches items are whole batches: use a Trainer batch_size of 1, got {len(items)}")
        return items[0]

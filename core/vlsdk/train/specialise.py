"""Stage 2, expert specialisation: a frozen backbone, trainable domain experts and their router rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["prepare_specialisation", "routing_share", "mixed_indices"]


def prepare_specialisation(model: nn.Module, experts: Sequence[str], *, open_bias: float | str | None = 0.0,
                           train_heads: bool | Sequence[str] = True) -> list[str]:
    """Freeze everything but the named domain experts, their router rows and (optionally) heads.

    Args:
        model: a :class:`~vlsdk.VLModel` with the experts already inserted.
        experts: domain expert names, e.g. ``["medical.lesion"]``.
        open_bias: how to open each expert's router row so it starts receiving tokens (inserted
            experts start closed: zero weights, bias -30). A float (default ``0.0``) raises the
            bias to at least that value, weights left as they are: right for a fresh router,
            whose logits are centred on 0, but a *trained* router's logits sit below 0 (the
            z-loss pulls their log-sum-exp towards 0), so there bias 0 beats every generic
            expert and the new, untrained experts take over every token's top-k (measured on a
            pre-trained ``tiny``: 0.92 of all assignments). ``"parity"`` gives a row that was
            never trained (all-zero weights) the mean weights and bias of the backbone's own
            rows, so on every token its logit is the mean generic logit: it competes with the
            generic experts instead of replacing them. ``None`` leaves the row alone.
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

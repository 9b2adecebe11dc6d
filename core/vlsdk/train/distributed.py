"""Data parallelism for the trainer: torchrun/torch.distributed, NCCL on GPUs, gloo on CPUs.

Every rank holds the whole model (experts replicated). After the backward pass the gradients of
all ranks are averaged with one flat all-reduce, so parameters stay identical without DDP's
unused-parameter bookkeeping (an expert that got no token on a rank contributes zeros; a
parameter no rank used keeps ``grad=None`` everywhere, as in a single process).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["dist_info", "init_from_env", "broadcast_model", "allreduce_gradients", "allreduce_mean", "barrier",
           "flagged_ranks", "max_over_ranks"]


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str = "auto") -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); a no-op otherwise.

    Uses NCCL when CUDA is available and the device is not ``"cpu"``, gloo otherwise, and pins
    each rank to ``cuda:LOCAL_RANK``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist_info()
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist_info()


@torch.no_grad()
def broadcast_model(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if dist_info()[1] == 1:
        return
    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def allreduce_gradients(model: nn.Module) -> None:
    """Average the gradients of all trainable parameters over the ranks (one flat all-reduce)."""
    rank, world = dist_info()
    if world == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    # a parameter keeps grad None only if no rank used it (so the optimiser skips it everywhere)
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=params[0].device)
    dist.all_reduce(used, op=dist.ReduceOp.MAX)
    params = [p for p, u in zip(params, used.tolist(), strict=True) if u]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def allreduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of scalar logs over the ranks (keys must agree)."""
    if dist_info()[1] == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist_info()[1]
    return dict(zip(keys, t.tolist(), strict=True))


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest ``value`` of any rank (one all-reduce of a scalar); ``value`` itself outside a process group.

    Args:
        value: this rank's number (e.g. its peak memory).
        device: where the reduction runs (the rank's CUDA device under NCCL).
    """
    if dist_info()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def flagged_ranks(flag: bool, device: torch.device) -> list[int]:
    """The ranks that raised ``flag`` (e.g. "my loss is not finite"), agreed on by every rank.

    One small all-reduce: each rank sets its own slot, so every rank learns the same list and can
    take the same decision at the same step (stop together instead of leaving the others waiting
    in the next gradient all-reduce). Outside a process group: ``[0]`` if ``flag`` else ``[]``.

    Args:
        flag: this rank's flag.
        device: where the reduction runs (the rank's CUDA device under NCCL).
    """
    rank, world = dist_info()
    if world == 1:
        return [0] if flag else []
    slots = torch.zeros(world, dtype=torch.int32, device=device)
    slots[rank] = int(flag)
    dist.all_reduce(slots)
    return [r for r, v in enumerate(slots.tolist()) if v]


def barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()

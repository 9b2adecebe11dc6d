"""Expert modules and the contract every expert (generic or domain) must satisfy."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ExpertMLP", "accepts_context", "check_expert", "resolve_hidden"]


def resolve_hidden(dim: int, hidden: int | None, default: int) -> int:
    """Check an expert's ``dim`` and ``hidden`` widths (``ValueError`` naming the bad one); ``hidden``
    defaults to ``default``. Shared by the core's and the domain plugins' experts."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    hidden = default if hidden is None else hidden
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
    return hidden


class ExpertMLP(nn.Module):
    """The generic expert: a two-layer GELU MLP mapping ``(n, dim) -> (n, dim)``.

    Args:
        dim: token width.
        hidden: hidden width (default ``4 * dim``).

    Example:
        >>> ExpertMLP(64, 128)(torch.zeros(5, 64)).shape
        torch.Size([5, 64])
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = resolve_hidden(dim, hidden, 4 * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def accepts_context(module: nn.Module) -> bool:
    """Whether ``module.forward`` declares a ``context`` parameter (see ``ExpertContext``)."""
    try:
        return "context" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def check_expert(name: str, module: object, dim: int) -> nn.Module:
    """Validate a domain expert once, before it enters a MoE layer.

    The expert must be an ``nn.Module`` whose ``forward`` takes ``(n, dim)`` tokens and returns
    a tensor of the same shape. Raises ``ValueError`` (wrong type or shape) or ``TypeError``
    (forward cannot be called with one tensor) naming the expert and what was expected.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"expert {name!r} must be a torch.nn.Module mapping (n, {dim}) -> (n, {dim}), "
                         f"got {type(module).__name__}")
    param = next(module.parameters(), None)
    probe = torch.zeros(3, dim, device=param.device if param is not None else "cpu",
                        dtype=param.dtype if param is not None and param.is_floating_point() else None)
    if probe.device.type == "meta":
        return module
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(probe, context=None) if accepts_context(module) else module(probe)
    except TypeError as err:
        raise TypeError(f"expert {name!r}: forward must accept one (n, {dim}) tensor "
                        f"(and optionally context=...): {err}") from err
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (3, dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"expert {name!r} must map (n, {dim}) -> (n, {dim}); for n=3 it returned {got}")
    return module

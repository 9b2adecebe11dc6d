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

    The expert must be an ``nn.Module`` whose ``forward`` maps ``(n, dim)`` tokens to a finite
    tensor of shape ``(n, dim)`` and of the input's dtype for ``n`` = 1, 7 and 64 (a router sends
    any number of tokens; its sparse path never calls an expert with zero, which is why zero is
    left to :func:`vlsdk.testing.check_expert`). The probe tokens are
    seeded random values in the dtype and on the device of the expert's parameters; the global
    random state is not touched. Experts on the ``meta`` device are not run.

    Args:
        name: the expert's name, for the messages.
        module: the expert.
        dim: the token width of the layer.

    Raises:
        ValueError: not a module, or for some ``n`` a wrong shape or dtype, non-finite values, or
            an error from its forward; naming the expert, ``n`` and what was wrong.
        TypeError: ``forward`` cannot be called with one tensor (and optionally ``context=``).
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"expert {name!r} must be a torch.nn.Module mapping (n, {dim}) -> (n, {dim}), "
                         f"got {type(module).__name__}")
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
    if device.type == "meta":
        return module
    generator = torch.Generator().manual_seed(0)
    takes_context = accepts_context(module)
    was_training = module.training
    module.eval()
    try:
        for n in (1, 7, 64):
            probe = torch.randn(n, dim, generator=generator).to(device=device, dtype=dtype)
            try:
                with torch.no_grad():
                    out = module(probe, context=None) if takes_context else module(probe)
            except TypeError as err:
                raise TypeError(f"expert {name!r}: forward must accept one (n, {dim}) tensor "
                                f"(and optionally context=...); with n={n}: {err}") from err
            except Exception as err:  # noqa: BLE001 - the expert's own code: name it and the token count
                raise ValueError(f"expert {name!r}: forward failed on (n={n}, {dim}) tokens: "
                                 f"{type(err).__name__}: {err}") from err
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, dim):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"expert {name!r} must map (n, {dim}) -> (n, {dim}); for n={n} it returned {got}")
            if out.dtype != dtype:
                raise ValueError(f"expert {name!r}: for n={n} tokens of dtype {dtype} it returned dtype {out.dtype}; "
                                 f"an expert must return its input's dtype (the layer adds its output to others)")
            bad = int((~torch.isfinite(out)).sum())
            if bad:
                raise ValueError(f"expert {name!r}: for n={n} finite tokens it returned {bad} non-finite value(s) "
                                 f"(NaN or inf) of {out.numel()}")
    finally:
        module.train(was_training)
    return module

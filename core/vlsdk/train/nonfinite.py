"""Where a non-finite training loss comes from: the first module whose output holds NaN or inf.

A skipped step's warning says *that* the loss was not finite; :func:`trace_nonfinite` says *where*:
it runs the step's forward once more on the same batch, with the same random state, a forward
hook on every module, and names the first module (in execution order) whose output is not finite,
with the largest magnitude among its inputs. Under autocast, a second run without it tells a precision
problem (finite in float32) from a model or data problem (non-finite in any precision). The
replays leave no trace: buffers such as BatchNorm's running statistics are put back and the
encoders' routing collectors publish nothing. It runs only after a non-finite loss, so the
training step itself pays nothing.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LogSigmoid(), torch.nn.Softplus())
    >>> with torch.no_grad():
    ...     _ = net[0].bias.fill_(float("inf"))
    >>> print(trace_nonfinite(net, lambda: net(torch.ones(1, 2)), autocast=None))
    first non-finite output: 0 (Linear), inputs finite (max |x| 1); non-finite parameters: 0.bias
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from vlsdk.models.collector import routing_collectors

__all__ = ["rng_state", "trace_nonfinite"]


def rng_state(device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU and (on CUDA) ``device``'s random state, to replay one forward exactly."""
    device = torch.device(device or "cpu")
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The floating-point tensors in a module's input or output (tuples, lists, dicts, dataclasses)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name))


def _largest(value: Any) -> float:
    """The largest finite magnitude among ``value``'s tensors (0 where there is none)."""
    peak = 0.0
    for t in _tensors(value):
        t = t.detach()
        finite = t[torch.isfinite(t)]
        if finite.numel():
            peak = max(peak, float(finite.abs().max()))
    return peak


def _first_nonfinite(model: nn.Module, forward: Callable[[], Any]) -> tuple[str, str, Any] | None:
    """Run ``forward`` once, hooks on every module: the first module (name, type, inputs) with a non-finite output."""
    found: list[tuple[str, str, Any]] = []

    def hook(name: str) -> Callable[..., None]:
        def check(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not found and any(not bool(torch.isfinite(t).all()) for t in _tensors(output)):
                found.append((name or "(the model)", type(module).__name__, (args, kwargs)))
        return check

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in model.named_modules()]
    try:
        forward()  # with gradients on, as in training: some paths differ under no_grad
    finally:
        for h in handles:
            h.remove()
    # hooks fire as modules finish: a parent finishes after its children, so the first entry is the innermost
    return found[0] if found else None


@contextlib.contextmanager
def _undone(model: nn.Module) -> Iterator[None]:
    """Leave no trace of a replayed forward: buffers (BatchNorm running statistics) put back, routing unpublished."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with contextlib.ExitStack() as stack:
        for _, collector in routing_collectors(model):
            stack.enter_context(collector.muted())
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def _describe(hit: tuple[str, str, Any] | None) -> str:
    if hit is None:
        return "every module's output finite (the loss or router terms made the value)"
    name, kind, inputs = hit
    bad_input = any(not bool(torch.isfinite(t).all()) for t in _tensors(inputs))
    state = "non-finite" if bad_input else "finite"
    return f"{name} ({kind}), inputs {state} (max |x| {_largest(inputs):.4g})"


def trace_nonfinite(model: nn.Module, forward: Callable[[], Any], *, autocast: Callable[[], Any] | None,
                    rng: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                    device: torch.device | str | None = None) -> str:
    """Name the first module whose output is NaN or inf when ``forward`` runs again; one line for a warning.

    Args:
        model: the module whose submodules are watched.
        forward: runs the forward (and loss) that was not finite, on the same batch.
        autocast: a context-manager factory the training step ran under (``None``: none); the trace
            runs under it and then again in the parameters' own precision.
        rng: :func:`rng_state` taken before the failed forward, so dropout and noise repeat it.
        device: the device whose random state ``rng`` holds.

    Returns:
        ``"first non-finite output: NAME (TYPE), inputs finite (max |x| X)"``, then (under autocast)
        what a run without it found, and the non-finite parameters if any.
    """
    device = torch.device(device or "cpu")

    def replay(context: Callable[[], Any]) -> tuple[str, str, Any] | None:
        if rng is not None:
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], device)
        with context(), _undone(model):
            return _first_nonfinite(model, forward)

    try:
        first = replay(autocast or contextlib.nullcontext)
        parts = [f"first non-finite output: {_describe(first)}"]
        if autocast is not None and first is not None:
            plain = replay(contextlib.nullcontext)
            parts.append(f"without autocast: {_describe(plain)}" if plain
                         else "without autocast the forward is finite (a precision problem)")
    except Exception as err:  # a diagnosis must not end the run it diagnoses
        parts = [f"the replayed forward raised {type(err).__name__}: {err}"[:300]]
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        parts.append(f"non-finite parameters: {', '.join(bad[:5])}" + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    return "; ".join(parts)

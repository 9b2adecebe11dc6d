"""Where a non-finite training loss comes from: the first module whose output holds NaN or inf.

A skipped step's warning says *that* the loss was not finite; :func:`trace_nonfinite` says *where*:
it runs the step's forward once more on the same batch, with the same random state, a forward
hook on every module, and names the first module (in execution order) whose output is not finite,
with the largest magnitude among its inputs. Under autocast, a second run without it tells a precision
problem (finite in float32) from a model or data problem (non-finite in any precision). The
replays leave no trace: buffers such as BatchNorm's running statistics are put back and the
encoders' routing collectors publish nothing. It runs only after a non-finite loss; each training
step pays only for a copy of the random state (a few bytes) and of the BatchNorm statistics
(:class:`RunningStats`, one multi-tensor copy), which a skipped step puts back.

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

__all__ = ["RunningStats", "rng_state", "trace_nonfinite"]


def rng_state(device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU and (on CUDA) ``device``'s random state, to replay one forward exactly.

    Args:
        device: the device whose generator is read besides the CPU's (``None``: the CPU only).
    """
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


def _describe(name: str, module: nn.Module, inputs: Any) -> str:
    bad_input = any(not bool(torch.isfinite(t).all()) for t in _tensors(inputs))
    state = "non-finite" if bad_input else "finite"
    return f"{name or '(the model)'} ({type(module).__name__}), inputs {state} (max |x| {_largest(inputs):.4g})"


def _first_nonfinite(model: nn.Module, forward: Callable[[], Any]) -> tuple[str | None, bool]:
    """Run ``forward`` once, hooks on every module: the first module with a non-finite output (described
    at once, so no tensor outlives the hook) and whether the forward's result was finite."""
    found: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def check(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not found and any(not bool(torch.isfinite(t).all()) for t in _tensors(output)):
                found.append(_describe(name, module, (args, kwargs)))
        return check

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in model.named_modules()]
    try:
        result = forward()  # with gradients on, as in training: some paths differ under no_grad
        finite = all(bool(torch.isfinite(t).all()) for t in _tensors(result))
    finally:
        for h in handles:
            h.remove()
    # hooks fire as modules finish: a parent finishes after its children, so the first entry is the innermost
    return (found[0] if found else None), finite


class RunningStats:
    """The buffers a training forward updates (BatchNorm's running mean, variance and count), to put back.

    A skipped training step must leave no trace: a non-finite batch has already passed through every
    BatchNorm by the time its loss is seen. :meth:`save` copies the buffers into storage allocated
    once (one multi-tensor copy per step), :meth:`restore` copies them back.

    Args:
        model: the model whose ``BatchNorm`` (any ``_NormBase`` that tracks running statistics) buffers are kept.
    """

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [b for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
                        for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        self.saved = [b.detach().clone() for b in self.buffers]

    @torch.no_grad()
    def save(self) -> None:
        """Copy the buffers' current values aside."""
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the values of the last :meth:`save`."""
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)


@contextlib.contextmanager
def _undone(model: nn.Module) -> Iterator[None]:
    """Leave no trace of a replayed forward: running statistics put back, routing unpublished."""
    stats = RunningStats(model)
    with contextlib.ExitStack() as stack:
        for _, collector in routing_collectors(model):
            stack.enter_context(collector.muted())
        try:
            yield
        finally:
            stats.restore()


def _nonfinite_names(named: Iterator[tuple[str, torch.Tensor]], what: str) -> str | None:
    bad = [n for n, t in named if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if not bad:
        return None
    return f"non-finite {what}: {', '.join(bad[:5])}" + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")


def trace_nonfinite(model: nn.Module, forward: Callable[[], Any], *, autocast: Callable[[], Any] | None,
                    rng: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                    device: torch.device | str | None = None, both: bool = False) -> str:
    """Name the first module whose output is NaN or inf when ``forward`` runs again; one line for a warning.

    Args:
        model: the module whose submodules are watched.
        forward: runs the forward (and loss) that was not finite, on the same batch.
        autocast: a context-manager factory the training step ran under (``None``: none); the trace
            runs under it and then again in the parameters' own precision.
        rng: :func:`rng_state` taken before the failed forward, so dropout and noise repeat it.
        device: the device whose random state ``rng`` holds.
        both: always run the second replay (under torchrun every rank must run the same forwards,
            in case the model's forward holds a collective such as ``SyncBatchNorm``'s).

    Returns:
        ``"first non-finite output: NAME (TYPE), inputs finite (max |x| X)"``, then (under autocast)
        what a run without it found, and the non-finite parameters and buffers if any. A replay that
        stays finite says it did not reproduce the value; one that raises is reported, not raised.
        The random state is as it was before the call.
    """
    device = torch.device(device or "cpu")
    entry = rng_state(device)

    def replay(context: Callable[[], Any], label: str) -> tuple[str, str]:
        """``(line, outcome)``; outcome: ``module`` (one found), ``loss``, ``finite`` or ``raised``."""
        if rng is not None:
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], device)
        try:
            with context(), _undone(model):
                hit, finite = _first_nonfinite(model, forward)
        except Exception as err:  # a diagnosis must not end the run it diagnoses
            return f"{label}: the replayed forward raised {type(err).__name__}: {err}"[:300], "raised"
        if hit is not None:
            return f"{label}: {hit}", "module"
        if finite:
            return f"{label}: the replay was finite (not reproduced)", "finite"
        return f"{label}: every module's output finite (the loss or router terms made the value)", "loss"

    try:
        first, outcome = replay(autocast or contextlib.nullcontext, "first non-finite output")
        parts = [first]
        if autocast is not None and (outcome == "module" or both):
            plain, plain_outcome = replay(contextlib.nullcontext, "without autocast")
            precision = outcome == "module" and plain_outcome == "finite"
            parts.append("without autocast the forward is finite (a precision problem)" if precision else plain)
    finally:
        torch.set_rng_state(entry[0])
        if entry[1] is not None:
            torch.cuda.set_rng_state(entry[1], device)
    for line in (_nonfinite_names(model.named_parameters(), "parameters"),
                 _nonfinite_names(model.named_buffers(), "buffers")):
        if line:
            parts.append(line)
    return "; ".join(parts)

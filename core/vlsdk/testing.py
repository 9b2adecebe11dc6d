"""Test helpers for vlsdk and its plugin authors: an opt-in pytest plugin and check functions.

Enable the fixtures in your ``conftest.py``::

    pytest_plugins = ["vlsdk.testing"]

Fixtures:

- ``plugin_host``: a fresh :class:`~vlsdk.plugins.PluginHost` without entry-point discovery
  (only the core plugin), installed as the default host for the test and restored after.
  Mark a test ``@pytest.mark.vlsdk_entry_points`` to discover the installed plugins too.
- ``register_plugin``: ``register_plugin(plugin, name=None, **kwargs) -> PluginInfo`` registers
  a plugin object or module on that host; it is unregistered when the test ends.
- ``tiny_model``: ``vlsdk.VLModel(vlsdk.get_config("tiny"))``, seeded.

Helpers (plain functions, usable without pytest):

- :func:`check_expert` builds an expert and checks the expert contract: shape, dtype (float32
  and bfloat16), finite values, for 7, 1, 64 and 0 tokens, gradients reaching every parameter.

Example::

    from vlsdk.testing import check_expert

    def test_my_expert(register_plugin):
        import my_plugin
        register_plugin(my_plugin)
        check_expert("acme.texture", dim=32)
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from vlsdk.plugins.manager import PluginHost, PluginInfo, get_host, use_host

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["check_expert", "plugin_host", "register_plugin", "tiny_model", "square_lesions", "segmentation_loss"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "vlsdk_entry_points: the plugin_host fixture also discovers the vlsdk.plugins entry points",
    )


@pytest.fixture
def plugin_host(request: pytest.FixtureRequest) -> Iterator[PluginHost]:
    """A fresh plugin host, the default host during the test and restored after.

    It holds the core plugin only; mark the test ``@pytest.mark.vlsdk_entry_points`` to discover
    the installed ``vlsdk.plugins`` entry points as well (``VLSDK_LOAD_PLUGINS`` and
    ``VLSDK_DISABLE_PLUGINS`` apply).
    """
    discover = request.node.get_closest_marker("vlsdk_entry_points") is not None
    host = PluginHost(discover=discover)
    with use_host(host):
        yield host


@pytest.fixture
def register_plugin(plugin_host: PluginHost) -> Iterator[Callable[..., PluginInfo]]:
    """``register_plugin(plugin, name=None, *, distribution=None, version=None, strict=True)``.

    Registers a temporary plugin on ``plugin_host`` (see
    :meth:`PluginHost.register_plugin`) and unregisters it, entries included, after the test.
    """
    names: list[str] = []

    def register(plugin: object, name: str | None = None, **kwargs: Any) -> PluginInfo:
        info = plugin_host.register_plugin(plugin, name, **kwargs)
        names.append(info.name)
        return info

    try:
        yield register
    finally:
        for name in reversed(names):
            try:
                plugin_host.unregister_plugin(name)
            except KeyError:  # the test unregistered it already
                pass


@pytest.fixture
def tiny_model() -> nn.Module:
    """``vlsdk.VLModel(vlsdk.get_config("tiny"))`` built with a fixed seed."""
    import torch

    import vlsdk

    torch.manual_seed(0)
    return vlsdk.VLModel(vlsdk.get_config("tiny"))


def check_expert(
    factory: Callable[..., Any] | str,
    dim: int = 32,
    *,
    token_counts: Sequence[int] = (7, 1, 64, 0),
    dtypes: Sequence[torch.dtype] | None = None,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """Build an expert and check the expert contract; return the module.

    Checks that ``factory(dim, **options)`` returns an ``nn.Module`` with trainable parameters
    whose forward maps ``(n, dim)`` tokens to a finite ``(n, dim)`` tensor of the input dtype for
    every ``n`` in ``token_counts`` (a router sends any number of tokens, zero included) and every
    dtype in ``dtypes`` (the module is copied and cast for each dtype other than its own), and
    that gradients reach every trainable parameter (first count and dtype). An expert whose
    ``forward`` declares ``context`` receives a :class:`vlsdk.models.features.ExpertContext` over a
    ``(1, 4, 4)`` token grid (``(1, 8, 8)`` for more than 16 tokens).

    Args:
        factory: an expert factory, or the registered name of one (built with the default host).
        dim: token width.
        token_counts: numbers of routed tokens ``n`` to try (each in ``0..64``).
        dtypes: input dtypes (default: ``torch.get_default_dtype()`` and ``torch.bfloat16``).
        seed: seed of the random tokens.
        **options: passed to the factory.

    Raises:
        AssertionError: saying which part of the contract failed, for which ``n`` and dtype.

    Example:
        >>> from torch import nn
        >>> check_expert(lambda dim: nn.Linear(dim, dim), dim=8)
        Linear(in_features=8, out_features=8, bias=True)
    """
    import torch
    from torch import nn

    label = factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))
    if isinstance(factory, str):
        module = get_host().build_expert(factory, dim, **options)
    else:
        module = factory(dim, **options)
    assert isinstance(module, nn.Module), (
        f"expert {label}: factory(dim={dim}) must return a torch.nn.Module, "
        f"got {type(module).__name__}"
    )
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    assert trainable, f"expert {label}: has no trainable parameters"
    counts = [int(n) for n in token_counts]
    assert counts and all(0 <= n <= 64 for n in counts), f"check_expert: token_counts must be in 0..64, got {counts}"
    own = next(iter(trainable.values())).dtype
    wanted = list(dict.fromkeys(dtypes if dtypes is not None else (torch.get_default_dtype(), torch.bfloat16)))
    generator = torch.Generator().manual_seed(seed)
    graded = False
    for dtype in wanted:
        expert = module if dtype == own else copy.deepcopy(module).to(dtype)
        expert.train()
        for n in counts:
            out = _contract_forward(expert, label, dim, n, dtype, generator)
            if not graded and n > 0:
                weights = torch.randn(out.shape, generator=generator).to(out.dtype)
                (out * weights).sum().backward()
                missing = [name for name, p in trainable.items() if p.grad is None]
                assert not missing, f"expert {label}: no gradient reached parameter(s) {', '.join(missing)}"
                module.zero_grad(set_to_none=True)
                graded = True
    return module


def _contract_forward(module: nn.Module, label: str, dim: int, n: int, dtype: torch.dtype,
                      generator: torch.Generator) -> torch.Tensor:
    """One forward on ``n`` random tokens of ``dtype``; the shape, dtype and finiteness checked."""
    import torch

    from vlsdk.models.features import ExpertContext

    grid = (1, 4, 4) if n <= 16 else (1, 8, 8)
    all_tokens = torch.randn(grid[1] * grid[2], dim, generator=generator).to(dtype)
    index = torch.randperm(all_tokens.shape[0], generator=generator)[:n]
    x = all_tokens[index]
    case = f"n={n}, dtype {dtype}"
    try:
        if _accepts_context(module):
            out = module(x, context=ExpertContext(tokens=all_tokens, index=index, grid=grid))
        else:
            out = module(x)
    except Exception as exc:
        raise AssertionError(f"expert {label}: forward on {tuple(x.shape)} tokens raised "
                             f"{type(exc).__name__}: {exc} ({case})") from exc
    assert isinstance(out, torch.Tensor), (
        f"expert {label}: forward must return a Tensor, got {type(out).__name__} ({case})"
    )
    assert tuple(out.shape) == (n, dim), (
        f"expert {label}: must map (n, dim) -> (n, dim); for input {(n, dim)} it returned "
        f"{tuple(out.shape)} ({case})"
    )
    assert out.dtype == dtype, f"expert {label}: output dtype {out.dtype} != input dtype {dtype} (n={n})"
    bad = int((~torch.isfinite(out)).sum())
    assert not bad, f"expert {label}: output has {bad} NaN or inf value(s) of {out.numel()} ({case})"
    return out


def _accepts_context(module: Any) -> bool:
    try:
        return "context" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def square_lesions(n: int = 24, size: int = 32, seed: int = 0) -> Any:
    """A tiny segmentation set: ``TensorDataset(images (n,1,size,size), masks (n,size,size))``.

    Each image is uniform noise with one bright 10x10 square, and the mask marks the square: a
    model learns it in a few dozen steps, which makes it a good smoke test for training code.
    """
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g)
    corners = torch.randint(0, size - 10, (n, 2), generator=g)
    rows = torch.arange(size)
    inside_y = (rows[None] >= corners[:, :1]) & (rows[None] < corners[:, :1] + 10)   # (n, size)
    inside_x = (rows[None] >= corners[:, 1:]) & (rows[None] < corners[:, 1:] + 10)
    masks = (inside_y[:, :, None] & inside_x[:, None, :]).long()
    images[:, 0] += 1.5 * masks
    return TensorDataset(images, masks)


def segmentation_loss(head: str = "seg") -> Callable[[Any, Any], Any]:
    """A ``loss_fn(model, (images, masks))`` for :class:`vlsdk.train.Trainer` using head ``head``."""

    def loss_fn(model: Any, batch: Any) -> Any:
        images, masks = batch
        return model.heads[head].loss(model(images, heads=[head])[head], masks)

    return loss_fn

"""Build registered components (datasets, transforms, metrics, synthesizers) from config specs.

A spec is a registered name, or a mapping with ``name`` and the factory's options::

    dataset: coco                                   # a name
    dataset: {name: coco, annotations: train.json}  # a name and options
    transforms: [resize, {name: flip, p: 0.5}]      # a pipeline

The task may offer context by keyword (``root``, ``size``, ``seed``, ``train``, ``transform``,
``class_names``...): each is passed only when the factory takes a parameter of that name and the
spec does not set it, so a plugin's factory states what it needs in its own signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vlsdk.data.transforms import Compose
from vlsdk.plugins.errors import UnknownNameError
from vlsdk.plugins.manager import get_registry

__all__ = ["build", "build_pipeline", "spec_name", "split_pipeline"]

Spec = str | Mapping[str, Any]


def spec_name(spec: Spec, where: str) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a spec; errors name ``where`` (e.g. ``"config.yaml: metric"``)."""
    if isinstance(spec, str) and spec:
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        return spec["name"], {k: v for k, v in spec.items() if k != "name"}
    raise ValueError(f"{where}: expected a registered name or a mapping with 'name' and options, got {spec!r}")


def build(kind: str, spec: Spec, where: str, **context: Any) -> Any:
    """The component of registry ``kind`` named by ``spec``, built with its options and the context it takes.

    Args:
        kind: the registry (``"datasets"``, ``"transforms"``, ``"metrics"``, ``"synthesizers"``).
        spec: a name or ``{name: ..., **options}``.
        where: the config key, for errors.
        **context: values offered to the factory by parameter name.

    Raises:
        ValueError: an unknown name (naming the closest registered one), or options the factory
            rejects (naming the factory and the key).
    """
    name, options = spec_name(spec, where)
    try:
        entry = get_registry(kind).get(name)
    except UnknownNameError as exc:
        raise ValueError(f"{where}: {exc}") from None
    factory: Callable[..., Any] = entry.obj
    accepted = _parameters(factory)
    offered = {k: v for k, v in context.items() if k not in options and (accepted is None or k in accepted)}
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(f"{where}: {kind[:-1]} {name!r} ({entry.origin}) takes no option {unknown[0]!r}; "
                             f"its options: {', '.join(sorted(accepted)) or 'none'}")
    try:
        return factory(**options, **offered)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: building {kind[:-1]} {name!r} ({entry.origin}) failed: {exc}") from exc


def build_pipeline(specs: Sequence[Spec] | None, where: str, **context: Any) -> Compose | None:
    """A :class:`~vlsdk.data.transforms.Compose` of registered transforms (``None`` for no transform)."""
    if not specs:
        return None
    if isinstance(specs, str):
        specs = [s.strip() for s in specs.split(",") if s.strip()]  # transforms=resize,flip on a command line
    elif isinstance(specs, Mapping):
        specs = [specs]
    return Compose([build("transforms", s, f"{where}[{i}]", **context) for i, s in enumerate(specs)])


def split_pipeline(settings: Any, split: str) -> Compose | None:
    """The transforms of a composed task's ``split``: ``settings.transforms`` to train, else ``eval_transforms``.

    Offers ``train``, ``seed``, ``size`` (``settings.image_size``) and ``channels`` to the factories.
    """
    train = split == "train"
    return build_pipeline(settings.transforms if train else settings.eval_transforms,
                          "transforms" if train else "eval_transforms", train=train, seed=settings.seed,
                          size=settings.image_size, channels=settings.channels)


def _parameters(factory: Callable[..., Any]) -> set[str] | None:
    """The keyword names ``factory`` takes (``None`` when it takes ``**kwargs`` or cannot be inspected)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

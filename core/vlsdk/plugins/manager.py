"""Plugin discovery and the registries: :class:`PluginHost` and the module-level API.

A :class:`PluginHost` owns a ``pluggy.PluginManager("vlsdk")``, one :class:`Registry` per kind
and the load report (one :class:`PluginInfo` per plugin). Loading is lazy and idempotent: nothing
is imported until a registry is first asked for. Then the core plugin ``vlsdk`` is registered:
the modules of :data:`CORE_PLUGIN_MODULES`, imported by name (so this package imports nothing of
the command line or of training) and all attributed to ``vlsdk``. Then every entry point of the
``vlsdk.plugins`` group, each on its own:

1. the entry point is loaded (anything it raises, ``SystemExit`` included, marks the plugin
   ``"error"``; a :class:`MissingExtraError` marks it ``"missing-extra"`` with its install hint;
   only ``KeyboardInterrupt`` goes through);
2. it is registered with pluggy and ``check_pending()`` is run (an unknown hook or hook argument
   marks it ``"error"`` and unregisters it);
3. its ``vlsdk_register_<kind>`` hooks are called for it alone, each with a registrar bound to
   the registry and to the plugin (a raise, a bad name, a duplicate or an object of the wrong
   type marks it ``"error"`` and rolls back everything it registered).

A broken plugin is warned about once (:class:`VlsdkPluginWarning`) and the others carry on. Each
plugin's load time (import and registration) is recorded; a slow one is warned about.

Environment switches, read when plugins are loaded:

- ``VLSDK_STRICT_PLUGINS=1``: re-raise a plugin's error instead of warning (a missing extra is
  not an error: it is reported, never raised).
- ``VLSDK_LOAD_PLUGINS=a,b``: load only these entry points (set but empty: none).
- ``VLSDK_DISABLE_PLUGINS=a,b``: do not load these (status ``"disabled"``).
- ``VLSDK_ALLOW_REPLACE=a,b``: these plugins may replace (``replace=True``) entries that another
  plugin registered; each replacement is warned about and shown by ``vlsdk plugins``. Without it
  such a registration fails like a duplicate. A plugin may always replace its own entries.
- ``VLSDK_SLOW_PLUGIN_SECONDS=2``: warn about a plugin that takes longer to load.

The load switches apply to entry points; the core plugin ``vlsdk`` always loads.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import pluggy

from vlsdk.plugins import _env, hookspecs
from vlsdk.plugins.commands import Command, CommandRegistrar
from vlsdk.plugins.errors import MissingExtraError, UnknownNameError, VlsdkPluginWarning
from vlsdk.plugins.markers import PROJECT_NAME
from vlsdk.plugins.registry import (
    Change,
    Registrar,
    Registry,
    RegistryEntry,
    describe_origin,
)

if TYPE_CHECKING:
    from torch import nn

    from vlsdk.heads.base import Head

__all__ = [
    "CORE_PLUGIN_MODULES",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "PluginHost",
    "PluginInfo",
    "Replacement",
    "build_expert",
    "build_head",
    "get_host",
    "get_registry",
    "load_plugins",
    "plugin_infos",
    "use_host",
]

logger = logging.getLogger(__name__)

#: The entry-point group plugins are declared in.
ENTRY_POINT_GROUP = "vlsdk.plugins"

#: The modules of the core plugin ``vlsdk``, imported by name in this order; each may implement
#: any hook (two may implement the same one). A module that does not exist is skipped.
CORE_PLUGIN_MODULES: tuple[str, ...] = (
    "vlsdk.plugins.builtin",
    "vlsdk.cli.builtin",
    "vlsdk.tasks.builtin",
)

#: The registry kinds; plugins fill each through the hook ``vlsdk_register_<kind>``.
KINDS: tuple[str, ...] = (
    "experts",
    "heads",
    "datasets",
    "transforms",
    "metrics",
    "synthesizers",
    "demos",
    "commands",
    "input_readers",
    "output_writers",
    "tasks",
)

#: The call contract of each registry's factories.
CONTRACTS: dict[str, str] = {
    "experts": "factory(dim: int, **options) -> torch.nn.Module mapping (n, dim) to (n, dim)",
    "heads": "factory(channels: Mapping[int, int], **options) -> vlsdk.heads.base.Head",
    "datasets": "factory(**options) -> map-style dataset (__getitem__, __len__)",
    "transforms": "factory(**options) -> callable transform(sample) -> sample",
    "metrics": "factory(**options) -> metric with update(...), compute(), reset()",
    "synthesizers": "factory(**options) -> callable making synthetic samples from a seed",
    "demos": "run(out_dir: Path, *, quick: bool, device: str, seed: int[, steps: int | None = None]"
             "[, data: Path | None = None]) -> vlsdk.demo.DemoResult (steps, data: optional keyword-only, passed "
             "only when given and accepted)",
    "commands": "Command(name, run(args) -> int | None, help, configure(parser))",
    "input_readers": "vlsdk.predict_io.InputReader(suffixes, read(path, model, model_dir) -> PredictInput)",
    "output_writers": "vlsdk.predict_io.OutputWriter(task, write(prediction: HeadPrediction) -> dict)",
    "tasks": "a vlsdk.tasks.Task subclass (settings_type, datasets, build_model, loss, evaluate, primary_metric)",
}

_EXPERT_NAME = r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*"
_COMMAND_NAME = r"[a-z][a-z0-9]*(-[a-z0-9]+)*"

Status = Literal["loaded", "missing-extra", "error", "disabled"]


def _callable_factory(obj: Any) -> str | None:
    if callable(obj):
        return None
    return f"expected a callable factory, got {type(obj).__name__} {_short(obj)}"


def _command(obj: Any) -> str | None:
    if isinstance(obj, Command):
        return None
    return f"expected a vlsdk.plugins.commands.Command, got {type(obj).__name__} {_short(obj)}"


#: registry kind -> (module, class) its entries must be instances of. Looked up in ``sys.modules``
#: only: an instance implies its class's module is imported, so the host never imports them.
_INSTANCE_OF: dict[str, tuple[str, str]] = {
    "input_readers": ("vlsdk.predict_io", "InputReader"),
    "output_writers": ("vlsdk.predict_io", "OutputWriter"),
}


def _task(obj: Any) -> str | None:
    """A subclass of :class:`vlsdk.tasks.Task`, looked up in ``sys.modules`` (a subclass implies its
    base's module is imported), so the host imports nothing of ``vlsdk.tasks``."""
    base = getattr(sys.modules.get("vlsdk.tasks.protocol"), "Task", None)
    if isinstance(obj, type) and isinstance(base, type) and issubclass(obj, base):
        return None
    return f"expected a subclass of vlsdk.tasks.Task, got {type(obj).__name__} {_short(obj)}"


def _instance_of(module: str, cls_name: str, obj: Any) -> str | None:
    cls = getattr(sys.modules.get(module), cls_name, None)
    if isinstance(cls, type) and isinstance(obj, cls):
        return None
    return f"expected a {module}.{cls_name}, got {type(obj).__name__} {_short(obj)}"


def _short(obj: Any, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Replacement:
    """One registry entry of another plugin that a plugin replaced (allowed by the user).

    Attributes:
        kind: the registry kind, e.g. ``"experts"``.
        name: the entry's name.
        previous: who had registered it, e.g. ``"plugin 'medical' (vlsdk 0.1.0)"``.
    """

    kind: str
    name: str
    previous: str


@dataclass(frozen=True)
class PluginInfo:
    """What happened to one plugin.

    Attributes:
        name: the plugin name (the entry point's name; ``"vlsdk"`` for the core).
        distribution: the distribution that ships it, if known.
        version: that distribution's version.
        status: ``"loaded"``, ``"missing-extra"``, ``"error"`` or ``"disabled"``.
        error: why it is not loaded: the exception (``"RuntimeError: boom"``) or the switch
            that disabled it; ``None`` when loaded.
        hooks: the vlsdk hooks it implements.
        registered: kind -> names it registered (only kinds it registered something in).
        hint: how to fix it, e.g. ``pip install "vlsdk[medical]"``.
        entry_point: the entry point's target, e.g. ``"vlsdk_medical.plugin"``.
        traceback: the formatted traceback of the error, if any.
        load_ms: milliseconds spent importing and registering it (``None`` if not tried).
        replaced: the entries of other plugins it replaced (see ``VLSDK_ALLOW_REPLACE``).
        extra: the extra of ``distribution`` that would make it load (status
            ``"missing-extra"``), e.g. ``"industrial"``.
    """

    name: str
    distribution: str | None
    version: str | None
    status: Status
    error: str | None = None
    hooks: tuple[str, ...] = ()
    registered: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    hint: str | None = None
    entry_point: str | None = None
    traceback: str | None = field(default=None, repr=False, compare=False)
    load_ms: float | None = field(default=None, compare=False)
    replaced: tuple[Replacement, ...] = ()
    extra: str | None = None

    @property
    def origin(self) -> str:
        """``"plugin 'medical' (vlsdk 0.1.0)"``."""
        return describe_origin(self.name, self.distribution, self.version)

    def to_dict(self, *, with_traceback: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (the traceback only when asked for)."""
        data = asdict(self)
        data["hooks"] = list(self.hooks)
        data["registered"] = {kind: list(names) for kind, names in self.registered.items()}
        data["replaced"] = [asdict(item) for item in self.replaced]
        if not with_traceback:
            data.pop("traceback")
        return data


class PluginHost:
    """The plugin manager, the registries and the load report of one vlsdk session.

    Args:
        discover: discover plugins from the ``group`` entry points (tests turn it off).
        builtin: register the core plugin ``vlsdk`` (the modules of ``core_modules``).
        group: the entry-point group.
        strict: re-raise plugin errors; ``None`` reads ``VLSDK_STRICT_PLUGINS`` at load time.
        core_modules: the dotted names of the core plugin's modules; one that does not exist
            (``ModuleNotFoundError`` for it or a parent package) is skipped silently.

    Example:
        >>> host = PluginHost(discover=False)
        >>> host.loaded
        False
        >>> "plugins" in host.registry("commands"), host.loaded
        (True, True)
    """

    def __init__(
        self,
        *,
        discover: bool = True,
        builtin: bool = True,
        group: str = ENTRY_POINT_GROUP,
        strict: bool | None = None,
        core_modules: Sequence[str] = CORE_PLUGIN_MODULES,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.group = group
        self.discover = discover
        self.builtin = builtin
        self.core_modules = tuple(core_modules)
        self._strict = strict
        self._registries: dict[str, Registry] = {kind: self._make_registry(kind) for kind in KINDS}
        self._infos: dict[str, PluginInfo] = {}
        self._changes: dict[str, list[Change]] = {}
        self._members: dict[str, list[tuple[str, object]]] = {}
        self._warned_slow_switch = False
        self._lock = threading.RLock()
        self._loaded = False
        self._loading = False

    def _make_registry(self, kind: str) -> Registry:
        options: dict[str, Any] = {"validate": _callable_factory}
        if kind == "experts":
            options["name_pattern"] = _EXPERT_NAME
            options["name_help"] = (
                "Expert names look like '<group>.<name>' made of Python identifiers, "
                "e.g. 'medical.lesion'."
            )
        elif kind in ("input_readers", "output_writers"):
            options = {"validate": functools.partial(_instance_of, *_INSTANCE_OF[kind])}
        elif kind == "tasks":
            options = {"validate": _task}
        elif kind == "commands":
            options = {
                "validate": _command,
                "name_pattern": _COMMAND_NAME,
                "name_help": "Command names are lower-case words joined by '-', e.g. 'dicom2nii'.",
            }
        explain = functools.partial(self._explain_missing, kind)
        return Registry(kind, CONTRACTS[kind], explain_missing=explain, **options)

    # -- state ---------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether plugins have been loaded."""
        return self._loaded

    @property
    def strict(self) -> bool:
        """Whether plugin errors are re-raised."""
        return _env.strict_plugins() if self._strict is None else self._strict

    def registry(self, kind: str) -> Registry:
        """The registry of ``kind`` (one of :data:`KINDS`), loading plugins first.

        Raises:
            UnknownNameError: ``kind`` is not one of :data:`KINDS`.
        """
        try:
            registry = self._registries[kind]
        except (KeyError, TypeError):
            raise UnknownNameError("registry kinds", kind, KINDS) from None
        self.load()
        return registry

    def plugin_infos(self) -> list[PluginInfo]:
        """The load report, loading plugins first: the core first, then by name."""
        self.load()
        return list(self._infos.values())

    def plugin_info(self, name: str) -> PluginInfo:
        """The report of one plugin (:class:`UnknownNameError` if this host does not know it)."""
        self.load()
        try:
            return self._infos[name]
        except KeyError:
            raise UnknownNameError("plugins", name, self._infos) from None

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> list[PluginInfo]:
        """Load the plugins once (later calls return the report); see the module docstring.

        Raises:
            Exception: only with ``VLSDK_STRICT_PLUGINS=1`` (or ``strict=True``): the first
                plugin error. A later call carries on with the remaining plugins.
        """
        with self._lock:
            if self._loaded or self._loading:
                return list(self._infos.values())
            self._loading = True
            try:
                self._load_core()
                if self.discover:
                    self._load_entry_points()
                self._loaded = True
            finally:
                self._loading = False
            return list(self._infos.values())

    def _load_core(self) -> PluginInfo | None:
        """Register the core plugin ``vlsdk`` (idempotent).

        Each of its modules registers on its own: one whose import or hooks fail is warned about
        and rolled back, the others stay (``VLSDK_STRICT_PLUGINS=1`` re-raises instead).

        Returns:
            Its :class:`PluginInfo`, or ``None`` when this host has no core plugin.
        """
        with self._lock:
            if not self.builtin or _BUILTIN_NAME in self._infos:
                return self._infos.get(_BUILTIN_NAME)
            from vlsdk.version import __version__

            started = time.perf_counter()
            info = PluginInfo(_BUILTIN_NAME, "vlsdk", __version__, "loaded")
            changes: list[Change] = []
            done: list[tuple[str, object]] = []
            for name in self.core_modules:
                module_changes: list[Change] = []
                module_done: list[tuple[str, object]] = []
                try:
                    module = _import_core_module(name)
                    if module is None:
                        continue  # not part of this install (yet)
                    self._register_members([(name, module)], info, module_changes, module_done)
                except BaseException as exc:  # noqa: BLE001 - one broken core module is skipped
                    self._undo(module_changes, module_done)
                    if isinstance(exc, KeyboardInterrupt) or self.strict:
                        raise
                    warnings.warn(
                        f"vlsdk: core plugin module {name} failed to load and was skipped: "
                        f"{type(exc).__name__}: {exc}",
                        VlsdkPluginWarning,
                        stacklevel=4,
                    )
                    continue
                changes += module_changes
                done += module_done
            hooks = {hook for _, obj in done for hook in self._hooks_of(obj)}
            # its load time is reported, never warned about: it imports torch for every plugin
            return self._store(replace(info, hooks=tuple(sorted(hooks))), changes, done, started)

    def _load_entry_points(self) -> None:
        only = _env.name_list(_env.LOAD)
        blocked = set(_env.name_list(_env.DISABLE) or ())
        eps = sorted(importlib.metadata.entry_points(group=self.group), key=lambda ep: ep.name)
        if only is not None:
            unknown = sorted(set(only) - {ep.name for ep in eps})
            if unknown:
                warnings.warn(
                    f"{_env.LOAD} names plugins that are not installed: {', '.join(unknown)} "
                    f"(installed: {', '.join(sorted({ep.name for ep in eps})) or 'none'})",
                    VlsdkPluginWarning,
                    stacklevel=4,
                )
        for ep in eps:
            distribution, version = _distribution_of(ep)
            known = self._infos.get(ep.name)
            if known is not None:
                if (known.distribution, known.entry_point) != (distribution, ep.value):
                    warnings.warn(
                        f"vlsdk plugin name {ep.name!r} is declared twice: by {known.origin} "
                        f"({known.entry_point}) and by "
                        f"{describe_origin(ep.name, distribution, version)} ({ep.value}); "
                        "the second was skipped",
                        VlsdkPluginWarning,
                        stacklevel=4,
                    )
                continue
            info = PluginInfo(ep.name, distribution, version, "loaded", entry_point=ep.value)
            if only is not None and ep.name not in only:
                reason = f"not listed in {_env.LOAD}={os.environ.get(_env.LOAD, '')!r}"
                self._infos[ep.name] = replace(info, status="disabled", error=reason)
                continue
            if ep.name in blocked:
                reason = f"listed in {_env.DISABLE}"
                self._infos[ep.name] = replace(info, status="disabled", error=reason)
                continue
            started = time.perf_counter()
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - isolate each plugin, SystemExit too
                info = self._fail(replace(info, load_ms=_elapsed_ms(started)), exc)
            else:
                info = self._add([(ep.name, plugin)], ep.name, distribution, version, ep.value,
                                 started=started)
            self._warn_if_slow(info)

    def _warn_if_slow(self, info: PluginInfo) -> None:
        """Warn about a plugin whose load took longer than ``VLSDK_SLOW_PLUGIN_SECONDS``."""
        try:
            limit = _env.slow_seconds()
        except ValueError as exc:  # a bad switch must not stop loading: say so, use the default
            if not self._warned_slow_switch:
                self._warned_slow_switch = True
                warnings.warn(
                    f"{exc}; using {_env.SLOW_DEFAULT_SECONDS:g} s", VlsdkPluginWarning, stacklevel=5
                )
            limit = _env.SLOW_DEFAULT_SECONDS
        if info.load_ms is None or info.load_ms <= 1000 * limit:
            return
        warnings.warn(
            f"vlsdk {info.origin} is slow to load: {info.load_ms / 1000:.2f} s to import and "
            f"register (warned above {limit:g} s; set {_env.SLOW} to change, or "
            f"{_env.DISABLE}={info.name} to skip it)",
            VlsdkPluginWarning,
            stacklevel=5,
        )

    def _add(
        self,
        members: Sequence[tuple[str, object]],
        name: str,
        distribution: str | None,
        version: str | None,
        entry_point: str | None,
        *,
        strict: bool | None = None,
        started: float | None = None,
    ) -> PluginInfo:
        """Register one plugin, made of ``members`` ``(pluggy name, object)``, and call its hooks.

        All or nothing: anything a member raises (``KeyboardInterrupt`` aside) marks the plugin
        ``"error"`` and rolls back all it registered.
        """
        started = time.perf_counter() if started is None else started
        info = PluginInfo(
            name,
            distribution,
            version,
            "loaded",
            hooks=tuple(sorted({hook for _, obj in members for hook in self._hooks_of(obj)})),
            entry_point=entry_point,
        )
        changes: list[Change] = []
        done: list[tuple[str, object]] = []
        try:
            if not self._register_members(members, info, changes, done):
                self._undo(changes, done)
                info = replace(info, status="disabled", error="blocked in pluggy")
                self._infos[name] = replace(info, load_ms=_elapsed_ms(started))
                return self._infos[name]
        except BaseException as exc:  # noqa: BLE001 - isolate each plugin, SystemExit too
            self._undo(changes, done)
            if isinstance(exc, KeyboardInterrupt):
                raise
            return self._fail(replace(info, load_ms=_elapsed_ms(started)), exc, strict=strict)
        return self._store(info, changes, done, started)

    def _register_members(
        self,
        members: Sequence[tuple[str, object]],
        info: PluginInfo,
        changes: list[Change],
        done: list[tuple[str, object]],
    ) -> bool:
        """Register ``members`` with pluggy, check them and call their register hooks.

        Appends to ``changes`` and ``done`` as it goes (for :meth:`_undo`); ``False`` when pluggy
        blocks a member.

        Raises:
            BaseException: whatever a member or one of its hooks raised.
        """
        for member_name, obj in members:
            if obj is None:
                raise TypeError(f"plugin {info.name!r} is None: its entry point names no object")
            if self.pm.register(obj, name=member_name) is None:
                return False
            done.append((member_name, obj))
        self.pm.check_pending()
        for _, obj in done:
            self._check_no_defaults(obj, info.name)
        self._call_register_hooks([obj for _, obj in done], info, changes)
        return True

    def _undo(self, changes: list[Change], done: list[tuple[str, object]]) -> None:
        """Roll back ``changes`` and unregister the ``done`` members from pluggy."""
        _rollback(changes)
        for member_name, obj in done:
            if self.pm.get_plugin(member_name) is obj:
                self.pm.unregister(plugin=obj, name=member_name)
        done.clear()

    def _store(
        self,
        info: PluginInfo,
        changes: list[Change],
        done: list[tuple[str, object]],
        started: float,
    ) -> PluginInfo:
        """Record a loaded plugin: what it registered and replaced, its load time."""
        registered: dict[str, list[str]] = {}
        for registry, entry_name, _previous, _entry in changes:
            registered.setdefault(registry.kind, []).append(entry_name)
        replaced = tuple(
            Replacement(registry.kind, entry_name, previous.origin)
            for registry, entry_name, previous, _entry in changes
            if previous is not None and previous.plugin != info.name
        )
        info = replace(
            info,
            registered={k: tuple(v) for k, v in registered.items()},
            replaced=replaced,
            load_ms=_elapsed_ms(started),
        )
        self._infos[info.name] = info
        self._changes[info.name] = changes
        self._members[info.name] = done
        if replaced:
            listed = "; ".join(f"{r.kind} {r.name!r} of {r.previous}" for r in replaced)
            warnings.warn(
                f"vlsdk {info.origin} replaced {listed} (allowed by {_env.ALLOW_REPLACE})",
                VlsdkPluginWarning,
                stacklevel=5,
            )
        return info

    def _hooks_of(self, plugin: object) -> tuple[str, ...]:
        """The hook names ``plugin`` implements (also for a plugin pluggy rejected)."""
        hooks = set()
        try:
            for attr in dir(plugin):
                opts = self.pm.parse_hookimpl_opts(plugin, attr)
                if opts is not None:
                    hooks.add(opts.get("specname") or attr)
        except Exception:  # noqa: BLE001 - an odd plugin object; registering it will tell
            return ()
        return tuple(sorted(hooks))

    def _check_no_defaults(self, plugin: object, name: str) -> None:
        """Reject hookimpl parameters with defaults: pluggy never passes them (pluggy #442)."""
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and impl.kwargnames:
                    raise pluggy.PluginValidationError(
                        plugin,
                        f"Plugin {name!r} for hook {caller.name!r}: parameter(s) "
                        f"{', '.join(impl.kwargnames)} have a default value, so pluggy would "
                        "never pass them; remove the default",
                    )

    def _call_register_hooks(
        self, objects: Sequence[object], info: PluginInfo, changes: list[Change]
    ) -> None:
        """Call the ``vlsdk_register_<kind>`` hooks of ``objects``, and only theirs, kind by kind."""
        ids = {id(obj) for obj in objects}
        others = [p for p in self.pm.get_plugins() if id(p) not in ids]
        allowed = info.name in (_env.name_list(_env.ALLOW_REPLACE) or ())
        for kind in KINDS:
            caller = self.pm.subset_hook_caller(f"vlsdk_register_{kind}", others)
            if not any(id(impl.plugin) in ids for impl in caller.get_hookimpls()):
                continue
            registrar_type = CommandRegistrar if kind == "commands" else Registrar
            registrar = registrar_type(
                self._registries[kind],
                info.name,
                info.distribution,
                info.version,
                changes,
                allow_replace=allowed,
            )
            caller(register=registrar)

    def _fail(
        self, info: PluginInfo, exc: BaseException, *, strict: bool | None = None
    ) -> PluginInfo:
        """Record a failed plugin; warn once, or re-raise when strict."""
        missing = isinstance(exc, MissingExtraError)
        info = replace(
            info,
            status="missing-extra" if missing else "error",
            error=f"{type(exc).__name__}: {exc}",
            hint=exc.hint if isinstance(exc, MissingExtraError) else None,
            extra=exc.extra if isinstance(exc, MissingExtraError) else None,
            registered={},
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        self._infos[info.name] = info
        if strict is True or (strict is None and not missing and self.strict):
            if hasattr(exc, "add_note"):
                exc.add_note(f"while loading vlsdk {info.origin}")
            raise exc
        if missing:
            logger.info("vlsdk %s is not loaded: %s", info.origin, info.error)
        else:
            where = f"; entry point {info.name} = {info.entry_point}" if info.entry_point else ""
            origin = (
                info.origin[:-1] + where + ")" if info.origin.endswith(")") else info.origin + where
            )
            warnings.warn(
                f"vlsdk {origin} failed to load and was skipped: {info.error}. "
                f"Run `vlsdk plugins` for details; set {_env.STRICT}=1 to raise.",
                VlsdkPluginWarning,
                stacklevel=5,
            )
        return info

    def _explain_missing(self, kind: str, name: str) -> str | None:
        """The hint of :class:`UnknownNameError`: a plugin or core module that did not load."""
        core = _core_object(kind, name)
        if core is not None and self.builtin:
            return (
                f"{name!r} is a core {kind[:-1]} ({core}) that this install could not import; "
                f"check with `python -c 'import {core.rpartition('.')[0]}'`."
            )
        prefix = name.partition(".")[0]
        info = self._infos.get(prefix)
        if info is not None and info.status != "loaded":
            text = f"Plugin {prefix!r} ({info.status}) is not loaded: {info.error}"
            if info.hint and info.hint not in text:
                text += f"\nTo fix it: {info.hint}"
            return text
        failed = [i.name for i in self._infos.values() if i.status in ("error", "missing-extra")]
        if failed:
            return (
                f"Note: {len(failed)} plugin(s) did not load ({', '.join(failed)}); "
                "run `vlsdk plugins` for details."
            )
        return None

    # -- explicit registration (tests, notebooks) ----------------------------------------------

    def register_plugin(
        self,
        plugin: object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
        strict: bool = True,
    ) -> PluginInfo:
        """Register a plugin object or module on this host and call its register hooks.

        Plugins are loaded first, so this one comes after the core and the entry points.

        Args:
            plugin: a module, class or object with ``@hookimpl`` functions.
            name: its plugin name (default: pluggy's canonical name, the module's ``__name__``).
            distribution: the distribution to attribute its entries to, if any.
            version: that distribution's version.
            strict: raise the plugin's error (default); ``False`` records and warns like a
                broken entry point.

        Returns:
            Its :class:`PluginInfo`.
        """
        self.load()
        with self._lock:
            name = name or self.pm.get_canonical_name(plugin)
            if name in self._infos:
                raise ValueError(
                    f"a plugin named {name!r} is already known to this host "
                    f"({self._infos[name].status}); unregister_plugin({name!r}) first"
                )
            try:
                return self._add([(name, plugin)], name, distribution, version, None, strict=strict)
            except BaseException:
                self._infos.pop(name, None)
                raise

    def unregister_plugin(self, name: str) -> PluginInfo:
        """Forget a plugin: remove it from pluggy and its entries from the registries."""
        with self._lock:
            try:
                info = self._infos.pop(name)
            except KeyError:
                raise UnknownNameError("plugins", name, self._infos) from None
            _rollback(self._changes.pop(name, []))
            for member_name, obj in self._members.pop(name, []):
                if self.pm.get_plugin(member_name) is obj:
                    self.pm.unregister(plugin=obj, name=member_name)
            return info

    # -- building ------------------------------------------------------------------------------

    def build_expert(self, name: str, dim: int, **options: Any) -> nn.Module:
        """Build the expert ``name``: ``factory(dim, **options)``, checked to be a Module."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"build_expert: dim must be a positive int, got {dim!r}")
        entry = self.registry("experts").get(name)
        return _build(entry, self._registries["experts"], "expert", (dim,), options)

    def build_head(self, task: str, channels: Mapping[int, int], **options: Any) -> Head:
        """Build the head ``task``: ``factory(channels, **options)``, checked to be a Module."""
        if not isinstance(channels, Mapping) or not channels:
            raise ValueError(
                "build_head: channels must be a non-empty mapping stride -> channels, "
                f"got {channels!r}"
            )
        entry = self.registry("heads").get(task)
        return _build(entry, self._registries["heads"], "head", (channels,), options)

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return f"<PluginHost {state}: {len(self._infos)} plugins>"


_BUILTIN_NAME = "vlsdk"


def _core_object(kind: str, name: str) -> str | None:
    """``"module.attr"`` if ``name`` is one of the core plugin's objects of ``kind``."""
    from vlsdk.plugins import builtin

    table = {"heads": builtin.CORE_HEADS, "experts": builtin.CORE_EXPERTS}.get(kind, {})
    return ".".join(table[name]) if name in table else None


def _import_core_module(name: str) -> object | None:
    """Import a core plugin module by name; ``None`` if it (or its package) does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name in _parents(name):
            return None
        raise


def _parents(module: str) -> set[str]:
    """``"a.b.c" -> {"a", "a.b", "a.b.c"}``."""
    parts = module.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


def _elapsed_ms(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 1)


def _rollback(changes: list[Change]) -> None:
    for registry, name, previous, entry in reversed(changes):
        registry._restore(name, entry, previous)
    changes.clear()


def _distribution_of(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    try:
        return dist.metadata["Name"], dist.version
    except Exception:  # noqa: BLE001 - unreadable metadata must not stop discovery
        return None, None


def _build(
    entry: RegistryEntry,
    registry: Registry,
    what: str,
    args: tuple[Any, ...],
    options: dict[str, Any],
) -> Any:
    from torch import nn

    try:
        built = entry.obj(*args, **options)
    except Exception as exc:
        if hasattr(exc, "add_note"):
            exc.add_note(
                f"while building {what} {entry.name!r} from {entry.origin}; "
                f"contract: {registry.contract}"
            )
        raise
    if not isinstance(built, nn.Module):
        raise TypeError(
            f"{what} {entry.name!r} from {entry.origin} returned {type(built).__qualname__} "
            f"{_short(built)}, not a torch.nn.Module. Contract: {registry.contract}"
        )
    return built


# -- the default host --------------------------------------------------------------------------

_default_host: PluginHost | None = None
_default_lock = threading.Lock()


def get_host() -> PluginHost:
    """The default :class:`PluginHost`, created on first use (plugins load on first lookup)."""
    global _default_host
    with _default_lock:
        if _default_host is None:
            _default_host = PluginHost()
        return _default_host


@contextlib.contextmanager
def use_host(host: PluginHost) -> Iterator[PluginHost]:
    """Make ``host`` the default for the ``with`` block, then restore the previous one.

    Example:
        >>> with use_host(PluginHost(discover=False)) as host:
        ...     get_host() is host
        True
    """
    global _default_host
    with _default_lock:
        previous, _default_host = _default_host, host
    try:
        yield host
    finally:
        with _default_lock:
            _default_host = previous


def get_registry(kind: str) -> Registry:
    """The registry of ``kind`` on the default host (loads plugins on first use)."""
    return get_host().registry(kind)


def load_plugins() -> list[PluginInfo]:
    """Load the plugins of the default host (idempotent) and return the load report."""
    return get_host().load()


def plugin_infos() -> list[PluginInfo]:
    """The load report of the default host (loads plugins first)."""
    return get_host().plugin_infos()


def build_expert(name: str, dim: int, **options: Any) -> nn.Module:
    """Build a registered expert: ``factory(dim, **options)``, an ``(n, dim) -> (n, dim)`` module.

    Example:
        >>> expert = build_expert("generic.mlp", 64)  # doctest: +SKIP
    """
    return get_host().build_expert(name, dim, **options)


def build_head(task: str, channels: Mapping[int, int], **options: Any) -> Head:
    """Build a registered head: ``factory(channels, **options)``.

    Example:
        >>> head = build_head("detection", {8: 64, 16: 128}, num_classes=3)  # doctest: +SKIP
    """
    return get_host().build_head(task, channels, **options)

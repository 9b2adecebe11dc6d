"""Named registries of plugin-provided objects, each entry attributed to its plugin.

A :class:`Registry` maps flat names (``"medical.lesion"``, ``"detection"``) to factories and
documents on itself the call contract its factories follow. Plugins never touch a registry
directly: their ``vlsdk_register_<kind>`` hook receives a :class:`Registrar` bound to the registry
and to the plugin, so every :class:`RegistryEntry` records where it came from.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vlsdk.plugins.errors import DuplicateNameError, ReplaceNotAllowedError, UnknownNameError

__all__ = ["Registrar", "Registry", "RegistryEntry", "describe_origin"]

#: ``validate(obj) -> problem or None``: says what is wrong with an object for a registry.
Validator = Callable[[Any], "str | None"]
#: ``explain_missing(name) -> hint or None``: why a name may be missing (e.g. a broken plugin).
MissingExplainer = Callable[[str], "str | None"]


def describe_origin(
    plugin: str | None, distribution: str | None = None, version: str | None = None
) -> str:
    """``"plugin 'medical' (vlsdk 0.1.0)"``: how messages name whoever registered an entry."""
    if plugin is None:
        return "a direct registration (no plugin)"
    text = f"plugin {plugin!r}"
    if distribution:
        text += f" ({distribution} {version})" if version else f" ({distribution})"
    return text


@dataclass(frozen=True)
class RegistryEntry:
    """One registered object and where it came from.

    Attributes:
        name: the registered name.
        obj: the registered object (usually a factory: a class or a function).
        plugin: name of the plugin that registered it (``None`` for a direct registration).
        distribution: the distribution that ships the plugin, e.g. ``"vlsdk"``.
        version: that distribution's version.
        metadata: free-form keyword arguments given to ``register`` (read-only).
    """

    name: str
    obj: Any
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """Who registered it, as error messages say it."""
        return describe_origin(self.plugin, self.distribution, self.version)


class Registry:
    """A flat, plugin-attributed name -> object registry of one kind.

    Args:
        kind: the registry kind, plural, e.g. ``"experts"``; used in every message.
        contract: how a registered factory is called and what it returns, e.g.
            ``"factory(dim: int, **options) -> torch.nn.Module"``. Kept as :attr:`contract` and
            quoted when a registration has the wrong type.
        name_pattern: a regular expression every name must fully match (``None``: any non-empty
            string without surrounding whitespace).
        name_help: what valid names look like, for the ``ValueError`` on a bad name.
        validate: ``validate(obj) -> str | None``, returns what is wrong with an object.
        explain_missing: ``explain_missing(name) -> str | None``, an extra hint for a missing
            name (the plugin host uses it to point at a plugin that failed to load).

    Example:
        >>> reg = Registry("metrics", "factory(**options) -> metric")
        >>> _ = reg.register("acc", dict)
        >>> reg.get("acc").obj is dict, "acc" in reg, len(reg)
        (True, True, 1)
    """

    def __init__(
        self,
        kind: str,
        contract: str,
        *,
        name_pattern: str | None = None,
        name_help: str | None = None,
        validate: Validator | None = None,
        explain_missing: MissingExplainer | None = None,
    ) -> None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"Registry kind must be a non-empty string, got {kind!r}")
        self.kind = kind
        self.contract = contract
        self.name_help = name_help
        self._name_re = re.compile(name_pattern) if name_pattern is not None else None
        self._validate = validate
        self._explain_missing = explain_missing
        self._entries: dict[str, RegistryEntry] = {}
        self._lock = threading.RLock()

    # -- writing -----------------------------------------------------------------------------

    def register(
        self,
        name: str,
        obj: Any,
        *,
        replace: bool = False,
        plugin: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RegistryEntry:
        """Register ``obj`` under ``name`` and return its entry.

        Registering the very same object under the same name again is a no-op (returns the
        existing entry), so re-imports and notebooks work.

        Raises:
            ValueError: ``name`` is not a valid name for this registry.
            TypeError: ``obj`` does not fit the registry's contract.
            DuplicateNameError: ``name`` is taken by a different object and ``replace`` is false.
        """
        self.check_name(name)
        origin = describe_origin(plugin, distribution, version)
        if self._validate is not None:
            problem = self._validate(obj)
            if problem:
                raise TypeError(
                    f"{self.kind}: {name!r} from {origin}: {problem}. Contract: {self.contract}"
                )
        with self._lock:
            existing = self._entries.get(name)
            if existing is not None and existing.obj is obj:
                return existing
            if existing is not None and not replace:
                raise DuplicateNameError(self.kind, name, existing.origin, origin)
            entry = RegistryEntry(
                name=name,
                obj=obj,
                plugin=plugin,
                distribution=distribution,
                version=version,
                metadata=MappingProxyType(dict(metadata or {})),
            )
            self._entries[name] = entry
            return entry

    def unregister(self, name: str) -> RegistryEntry:
        """Remove ``name`` and return its entry (:class:`UnknownNameError` if absent)."""
        with self._lock:
            if name not in self._entries:
                raise self._unknown(name)
            return self._entries.pop(name)

    def check_name(self, name: object) -> None:
        """Raise ``ValueError`` unless ``name`` is a valid name for this registry."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(
                f"{self.kind}: names must be non-empty strings without surrounding whitespace, "
                f"got {name!r}"
            )
        if self._name_re is not None and not self._name_re.fullmatch(name):
            help_ = f" {self.name_help}" if self.name_help else ""
            raise ValueError(f"{self.kind}: invalid name {name!r}.{help_}")

    def _restore(self, name: str, expected: RegistryEntry, previous: RegistryEntry | None) -> None:
        """Undo one registration if ``name`` still maps to ``expected`` (used for rollback)."""
        with self._lock:
            if self._entries.get(name) is not expected:
                return
            if previous is None:
                del self._entries[name]
            else:
                self._entries[name] = previous

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str) -> RegistryEntry:
        """The entry registered under ``name``.

        Raises:
            UnknownNameError: (a ``KeyError``) listing the available names, the closest match and,
                when the name's prefix is a plugin that failed to load, why and how to fix it.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self._unknown(name) from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry]:
        """The registered entries, sorted by name."""
        entries = dict(self._entries)
        return [entries[name] for name in sorted(entries)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Registry {self.kind}: {len(self)} entries>"

    def _unknown(self, name: object) -> UnknownNameError:
        hint = None
        if self._explain_missing is not None and isinstance(name, str):
            hint = self._explain_missing(name)
        return UnknownNameError(self.kind, name, self.names(), hint=hint)


#: One registration made through a registrar: (registry, name, previous entry, new entry).
Change = tuple[Registry, str, "RegistryEntry | None", RegistryEntry]


class Registrar:
    """``register(name, obj, *, replace=False, **metadata)``, bound to a registry and a plugin.

    This is what a ``vlsdk_register_<kind>`` hook receives. Each entry it makes is attributed to
    the plugin, its distribution and version; the host keeps the list of changes so that it can
    roll a failing plugin back, or unregister a plugin later.

    ``replace=True`` over an entry of *another* plugin (or of a direct registration) raises
    :class:`ReplaceNotAllowedError` unless ``allow_replace`` is true (the host sets it from
    ``VLSDK_ALLOW_REPLACE``); replacing the plugin's own entry is always allowed.

    Attributes:
        registry: the registry written to.
        plugin: the plugin name entries are attributed to.
        distribution: the plugin's distribution, if known.
        version: the distribution's version, if known.
        changes: the registrations made so far (for rollback).
        allow_replace: whether this plugin may replace another plugin's entries.
    """

    def __init__(
        self,
        registry: Registry,
        plugin: str | None,
        distribution: str | None = None,
        version: str | None = None,
        changes: list[Change] | None = None,
        *,
        allow_replace: bool = False,
    ) -> None:
        self.registry = registry
        self.allow_replace = allow_replace
        self.plugin = plugin
        self.distribution = distribution
        self.version = version
        self.changes: list[Change] = [] if changes is None else changes

    @property
    def kind(self) -> str:
        """The kind of the bound registry."""
        return self.registry.kind

    @property
    def contract(self) -> str:
        """The call contract of the bound registry."""
        return self.registry.contract

    def __call__(
        self, name: str, obj: Any, *, replace: bool = False, **metadata: Any
    ) -> RegistryEntry:
        """Register ``obj`` under ``name`` for this plugin; see :meth:`Registry.register`.

        Raises:
            ReplaceNotAllowedError: ``replace=True`` over another plugin's entry without the
                user's opt-in (``VLSDK_ALLOW_REPLACE``).
            DuplicateNameError, ValueError, TypeError: as :meth:`Registry.register`.
        """
        previous = self.registry._entries.get(name) if isinstance(name, str) else None
        if (
            replace
            and previous is not None
            and previous.plugin != self.plugin
            and previous.obj is not obj
            and not self.allow_replace
        ):
            incoming = describe_origin(self.plugin, self.distribution, self.version)
            raise ReplaceNotAllowedError(
                self.kind, name, previous.origin, incoming, plugin=self.plugin or "NAME"
            )
        entry = self.registry.register(
            name,
            obj,
            replace=replace,
            plugin=self.plugin,
            distribution=self.distribution,
            version=self.version,
            metadata=metadata,
        )
        if entry is not previous:
            self.changes.append((self.registry, name, previous, entry))
        return entry

    def __repr__(self) -> str:
        origin = describe_origin(self.plugin, self.distribution, self.version)
        return f"<Registrar {self.kind} for {origin}>"

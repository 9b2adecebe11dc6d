"""Exceptions and warnings of the plugin system, and :func:`require_extra` for plugin modules.

Every error here is meant to teach: it names what went wrong, who caused it (plugin and
distribution) and what to do next (the closest name, the ``pip install`` line).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence

__all__ = [
    "DuplicateNameError",
    "MissingExtraError",
    "ReplaceNotAllowedError",
    "UnknownNameError",
    "VlsdkPluginWarning",
    "require_extra",
]


class VlsdkPluginWarning(UserWarning):
    """A plugin failed to load or to register; vlsdk carried on without it.

    Emitted once per broken plugin. Set ``VLSDK_STRICT_PLUGINS=1`` to raise instead, or run
    ``vlsdk plugins`` to see every plugin's status.
    """


class MissingExtraError(ImportError):
    """A plugin needs optional dependencies that are not installed (or do not import).

    Raised by :func:`require_extra`. The plugin manager reports such a plugin with status
    ``"missing-extra"`` and its :attr:`hint` instead of treating it as broken.

    Attributes:
        extra: the extra that provides the dependencies, e.g. ``"medical"``.
        modules: the modules that failed to import, in the order asked for.
        requester: who needs them, e.g. ``"vlsdk_medical"``.
        distribution: the distribution whose extra installs them (``"vlsdk"``).
        hint: the commands that fix it: the package-index form and, since vlsdk installs from a
            checkout (it is on no package index yet), the checkout form:
            ``pip install "vlsdk[medical]" (from a checkout: pip install -e ".[medical]")``.
    """

    def __init__(
        self,
        extra: str,
        modules: Sequence[str],
        *,
        requester: str | None = None,
        distribution: str = "vlsdk",
        details: Sequence[str] = (),
    ) -> None:
        self.extra = extra
        self.modules = tuple(modules)
        self.requester = requester
        self.distribution = distribution
        self.details = tuple(details)
        self.hint = f'pip install "{distribution}[{extra}]" (from a checkout: pip install -e ".[{extra}]")'
        who = requester or f"the {extra!r} extra"
        message = f"{who} needs {', '.join(self.modules)}: {self.hint}"
        if self.details:
            message += " (" + "; ".join(self.details) + ")"
        super().__init__(message, name=self.modules[0] if self.modules else None)

    def __reduce__(self):  # keep the keyword-only arguments through pickling
        return (
            _rebuild_missing_extra,
            (self.extra, self.modules, self.requester, self.distribution, self.details),
        )


def _rebuild_missing_extra(extra, modules, requester, distribution, details) -> MissingExtraError:
    return MissingExtraError(
        extra, modules, requester=requester, distribution=distribution, details=details
    )


def require_extra(
    extra: str,
    *modules: str,
    requester: str | None = None,
    distribution: str = "vlsdk",
    import_now: bool = False,
) -> None:
    """Check ``modules`` are installed or raise :class:`MissingExtraError` naming the extra.

    By default each module is only *found* (``importlib.util.find_spec``: no import, so loading
    the plugins for ``vlsdk --help`` does not pay for monai or nuscenes); the real import happens
    where the plugin uses the module, at the start of a run. ``import_now=True`` imports them here
    as well, so a broken install (a module that is present but fails to import) is reported as a
    missing extra at plugin load. Domain plugins call it at the top of their plugin module so that
    a missing extra is reported as ``missing-extra`` with an install hint.

    Args:
        extra: the extra of ``distribution`` that provides the modules.
        *modules: importable module names.
        requester: who needs them, for the message; defaults to the caller's top-level package.
        distribution: the distribution whose extra to install.
        import_now: import the modules rather than only finding them.

    Raises:
        MissingExtraError: listing every module that failed, e.g. ``vlsdk_medical needs monai,
            pydicom: pip install "vlsdk[medical]" (from a checkout: pip install -e ".[medical]")``.

    Example:
        >>> require_extra("medical", "json", "math")  # all importable: returns None
    """
    if not modules:
        raise ValueError("require_extra() needs at least one module name")
    if requester is None:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        requester = caller.partition(".")[0] or None
    missing: list[str] = []
    details: list[str] = []
    first: BaseException | None = None
    for module in modules:
        try:
            if import_now or "." in module or module in sys.modules:
                importlib.import_module(module)  # a submodule's spec needs its parents imported anyway
            elif importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        except Exception as exc:  # noqa: BLE001 - a broken install may raise anything
            missing.append(module)
            if not isinstance(exc, ModuleNotFoundError) or exc.name not in _parents(module):
                details.append(f"{module} failed to import: {type(exc).__name__}: {exc}")
            first = first or exc
    if missing:
        raise MissingExtraError(
            extra, missing, requester=requester, distribution=distribution, details=details
        ) from first


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


class DuplicateNameError(ValueError):
    """A name is already taken in a registry by a different object.

    The message names both registrants (plugin and distribution). Pass ``replace=True`` to
    ``register`` to override on purpose.

    Attributes:
        kind: the registry kind, e.g. ``"experts"``.
        name: the contested name.
        existing: origin of the first registration (``"plugin 'medical' (vlsdk 0.1.0)"``).
        incoming: origin of the rejected one.
    """

    def __init__(self, kind: str, name: str, existing: str, incoming: str) -> None:
        self.kind = kind
        self.name = name
        self.existing = existing
        self.incoming = incoming
        super().__init__(
            f"{kind}: {name!r} is already registered by {existing}; {incoming} tried to register a "
            f"different object under the same name. Rename one of them, disable a plugin with "
            f"VLSDK_DISABLE_PLUGINS, or pass replace=True to override on purpose."
        )


class ReplaceNotAllowedError(DuplicateNameError):
    """A plugin passed ``replace=True`` over an entry that another plugin registered.

    Replacing another plugin's entry needs the user's opt-in: the replacing plugin's name in
    ``VLSDK_ALLOW_REPLACE`` (comma-separated). Without it the registration fails like a
    duplicate. Replacing the plugin's own entry is always allowed.
    """

    def __init__(self, kind: str, name: str, existing: str, incoming: str, *, plugin: str) -> None:
        super().__init__(kind, name, existing, incoming)
        self.args = (
            f"{kind}: {name!r} is registered by {existing}; {incoming} asked to replace it "
            f"(replace=True), which another plugin may do only when the user allows it: "
            f"set VLSDK_ALLOW_REPLACE={plugin} (comma-separated plugin names).",
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownNameError(KeyError):
    """A name is not in a registry (or a registry kind does not exist).

    A :class:`KeyError`, so ``except KeyError`` keeps working, but ``str()`` is the readable
    message rather than a quoted repr. The message lists what is available, suggests the closest
    name and, when the name's prefix (``"medical"`` in ``"medical.lesion"``) is a plugin that did
    not load, says why and how to fix it.

    Attributes:
        kind: the registry kind.
        name: the missing name.
        available: the names that are registered.
        suggestion: the closest available name (``difflib``), or ``None``.
        hint: an explanation from the plugin report, or ``None``.
    """

    def __init__(
        self,
        kind: str,
        name: object,
        available: Iterable[str],
        *,
        suggestion: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        if suggestion is None and isinstance(name, str):
            close = difflib.get_close_matches(name, self.available, n=1, cutoff=0.6)
            suggestion = close[0] if close else None
        self.suggestion = suggestion
        self.hint = hint
        lines = [f"{kind}: no entry named {name!r}."]
        if suggestion is not None:
            lines[0] += f" Did you mean {suggestion!r}?"
        if hint:
            lines.append(hint)
        if self.available:
            lines.append("Available: " + ", ".join(self.available) + ".")
        else:
            lines.append(f"No {kind} are registered.")
        self.message = "\n".join(lines)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

"""The pluggy markers of the ``vlsdk`` project.

Plugin authors decorate their hook implementations with :data:`hookimpl`::

    from vlsdk.plugins import hookimpl

    @hookimpl
    def vlsdk_register_experts(register):
        register("acme.texture", TextureExpert)

The spec marker is private to :mod:`vlsdk.plugins.hookspecs`.
"""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT_NAME", "hookimpl"]

#: The pluggy project name; markers and the plugin manager must agree on it.
PROJECT_NAME = "vlsdk"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a function as a vlsdk hook implementation (see :mod:`vlsdk.plugins.hookspecs`).

Never give a hookimpl parameter a default value: pluggy does not pass it.
"""

_hookspec = pluggy.HookspecMarker(PROJECT_NAME)

"""Hook implementations: the module named by the ``vlsdk.plugins`` entry point.

Only hooks live here. Each hook imports what it registers, so loading the plugin stays cheap and
an error in one component is reported against this plugin instead of breaking ``import vlsdk``.
Hook parameters never have defaults (pluggy would not pass them).
"""

from __future__ import annotations

from vlsdk.plugins import hookimpl


@hookimpl
def vlsdk_register_experts(register):
    """Register ``example.gated_mlp``: ``factory(dim, **options) -> nn.Module``, ``(n, dim) -> (n, dim)``."""
    from vlsdk_example_plugin.experts import GatedMLPExpert

    register("example.gated_mlp", GatedMLPExpert, description="sigmoid-gated two-layer MLP")


@hookimpl
def vlsdk_register_datasets(register):
    """Register ``example.checkerboard``: ``factory(**options)`` -> map-style dataset."""
    from vlsdk_example_plugin.datasets import CheckerboardDataset

    register("example.checkerboard", CheckerboardDataset, description="synthetic checkerboards, 2 classes")

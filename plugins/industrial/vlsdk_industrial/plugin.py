"""The industrial plugin's hooks (entry point ``industrial = "vlsdk_industrial.plugin"``).

Importing this module checks the ``industrial`` extra first, so without it the plugin manager lists
the plugin as unavailable with the ``pip install "vlsdk[industrial]"`` hint.
"""

from __future__ import annotations

from vlsdk.plugins.errors import require_extra

require_extra("industrial", "albumentations")

from vlsdk.plugins import hookimpl


@hookimpl
def vlsdk_register_experts(register):
    """Register the ``industrial.pcb_defect`` expert."""
    from vlsdk_industrial.experts import PcbDefectExpert

    register(
        "industrial.pcb_defect",
        PcbDefectExpert,
        description="1 x k and k x 1 strip depthwise convs + GELU FFN for PCB traces and defects",
    )

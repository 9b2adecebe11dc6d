"""The driving plugin's hooks (entry point ``driving = "vlsdk_driving.plugin"``).

Importing this module checks the ``driving`` extra first, so without it the plugin manager lists
the plugin as unavailable with the ``pip install "vlsdk[driving]"`` hint.
"""

from __future__ import annotations

from vlsdk.plugins.errors import require_extra

require_extra("driving", "nuscenes")

from vlsdk.plugins import hookimpl


@hookimpl
def vlsdk_register_experts(register):
    """Register the ``driving.lidar`` expert."""
    from vlsdk_driving.experts import LidarExpert

    register(
        "driving.lidar",
        LidarExpert,
        description="occupancy-gated dilated depthwise conv + SwiGLU for sparse LiDAR BEV grids",
    )

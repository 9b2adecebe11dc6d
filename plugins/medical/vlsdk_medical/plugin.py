"""The medical plugin's hooks (entry point ``medical = "vlsdk_medical.plugin"``).

Importing this module checks the ``medical`` extra first, so without it the plugin manager lists
the plugin as unavailable with the ``pip install "vlsdk[medical]"`` hint.
"""

from __future__ import annotations

from vlsdk.plugins.errors import require_extra

require_extra("medical", "monai", "pydicom", "nibabel")

from vlsdk.plugins import hookimpl


@hookimpl
def vlsdk_register_experts(register):
    """Register the ``medical.lesion`` expert."""
    from vlsdk_medical.experts import LesionExpert

    register(
        "medical.lesion",
        LesionExpert,
        description="local-contrast depthwise-conv FFN for small low-contrast lesions",
    )

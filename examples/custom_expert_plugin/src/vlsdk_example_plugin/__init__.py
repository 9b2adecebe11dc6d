"""Example vlsdk plugin: ``example.gated_mlp`` (an expert) and ``example.checkerboard`` (a dataset).

Keep this file light: vlsdk imports only ``vlsdk_example_plugin.plugin`` (the entry point), and
the hooks there import the rest when they run.
"""

__version__ = "0.1.0"

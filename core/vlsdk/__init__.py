"""vlsdk: one hybrid CNN/ViT/MoE vision backbone, vertical domains as plugins."""

from vlsdk.version import __version__

__all__ = ["__version__"]

"""vlsdk: one hybrid CNN/ViT/MoE vision backbone, vertical domains as plugins.

Names are imported lazily, so ``import vlsdk`` (and plugin discovery) stays cheap until a model
is built.

Example:
    >>> import vlsdk
    >>> vlsdk.list_models()
    ['base', 'edge', 'small', 'tiny']
    >>> model = vlsdk.create_model("tiny", in_chans=1)
    >>> model.metadata.input.channels
    ('channel_0',)
    >>> model.add_head("seg", task="segmentation", num_classes=2)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlsdk._lazy import lazy_exports
from vlsdk.version import __version__

_EXPORTS = {
    "VLModel": "vlsdk.models.model",
    "ModelOutput": "vlsdk.models.model",
    "HybridEncoder": "vlsdk.models.encoder",
    "DynamicMoE": "vlsdk.models.moe",
    "CrossModalGate": "vlsdk.models.gate",
    "ExpertMLP": "vlsdk.models.experts",
    "BackboneConfig": "vlsdk.models.config",
    "MoEConfig": "vlsdk.models.config",
    "TextConfig": "vlsdk.models.config",
    "CONFIGS": "vlsdk.models.config",
    "get_config": "vlsdk.models.config",
    "EncoderFeatures": "vlsdk.models.features",
    "ExpertContext": "vlsdk.models.features",
    "RouterStats": "vlsdk.models.features",
    "ByteTokenizer": "vlsdk.models.text",
    "ByteTextEncoder": "vlsdk.models.text",
    "HFTextEncoder": "vlsdk.models.hf_text",
    "count_parameters": "vlsdk.models.model",
    "create_model": "vlsdk.models.zoo",
    "list_models": "vlsdk.models.zoo",
    "ModelMetadata": "vlsdk.models.metadata",
    "InputSpec": "vlsdk.models.metadata",
    "hookimpl": "vlsdk.plugins.markers",
    "get_registry": "vlsdk.plugins",
    "load_plugins": "vlsdk.plugins",
    "plugin_infos": "vlsdk.plugins",
    "require_extra": "vlsdk.plugins",
    "MissingExtraError": "vlsdk.plugins",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from vlsdk.models.config import CONFIGS, BackboneConfig, MoEConfig, TextConfig, get_config
    from vlsdk.models.encoder import HybridEncoder
    from vlsdk.models.experts import ExpertMLP
    from vlsdk.models.features import EncoderFeatures, ExpertContext, RouterStats
    from vlsdk.models.gate import CrossModalGate
    from vlsdk.models.hf_text import HFTextEncoder
    from vlsdk.models.metadata import InputSpec, ModelMetadata
    from vlsdk.models.model import ModelOutput, VLModel
    from vlsdk.models.moe import DynamicMoE
    from vlsdk.models.model import count_parameters
    from vlsdk.models.text import ByteTextEncoder, ByteTokenizer
    from vlsdk.models.zoo import create_model, list_models
    from vlsdk.plugins import MissingExtraError, get_registry, load_plugins, plugin_infos, require_extra
    from vlsdk.plugins.markers import hookimpl


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""The shared backbone: CNN stem, ViT stages, sparse MoE, text gate, and the model wrapper."""

from vlsdk.models.config import CONFIGS, BackboneConfig, MoEConfig, TextConfig, get_config
from vlsdk.models.encoder import HybridEncoder
from vlsdk.models.experts import ExpertMLP
from vlsdk.models.features import EncoderFeatures, ExpertContext, RouterStats
from vlsdk.models.gate import CrossModalGate
from vlsdk.models.model import ModelOutput, VLModel, count_parameters
from vlsdk.models.moe import DynamicMoE
from vlsdk.models.params import ParamCounts, count_module_parameters
from vlsdk.models.text import ByteTextEncoder, ByteTokenizer, TextFeatures

__all__ = [
    "CONFIGS", "BackboneConfig", "MoEConfig", "TextConfig", "get_config", "HybridEncoder", "ExpertMLP",
    "EncoderFeatures", "ExpertContext", "RouterStats", "CrossModalGate", "ModelOutput", "VLModel", "DynamicMoE",
    "ParamCounts", "count_module_parameters", "count_parameters", "ByteTextEncoder", "ByteTokenizer", "TextFeatures",
]

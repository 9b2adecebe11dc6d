"""Training: the :class:`Trainer` shared by every domain pipeline, and its configuration."""

from vlsdk.train.config import TrainConfig, load_train_config
from vlsdk.train.contrastive import CLIPObjective, clip_loss, retrieval_recall
from vlsdk.train.log import MetricsLog, plot_curves
from vlsdk.train.specialise import mixed_indices, prepare_specialisation, routing_share
from vlsdk.train.trainer import Trainer, TrainResult, to_device, warmup_cosine

__all__ = ["TrainConfig", "load_train_config", "MetricsLog", "plot_curves", "Trainer", "TrainResult", "to_device",
           "warmup_cosine", "CLIPObjective", "clip_loss", "retrieval_recall", "mixed_indices",
           "prepare_specialisation", "routing_share"]

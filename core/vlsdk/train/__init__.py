"""Training: the :class:`Trainer` shared by every domain pipeline, and its configuration."""

from vlsdk.train.config import TrainConfig, load_train_config
from vlsdk.train.log import MetricsLog, plot_curves
from vlsdk.train.trainer import Trainer, TrainResult, to_device, warmup_cosine

__all__ = ["TrainConfig", "load_train_config", "MetricsLog", "plot_curves", "Trainer", "TrainResult", "to_device",
           "warmup_cosine"]

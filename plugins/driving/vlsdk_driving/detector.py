"""The BEV detector: a pillar encoder in front of a :class:`~vlsdk.VLModel` with a BEV detection head.

:func:`build_detector` makes the model (the ``driving.lidar`` expert in its MoE layers, a
``driving.bev_detection`` head named :data:`HEAD`), :func:`predict` runs it over
:class:`~vlsdk_driving.sample.DrivingSample` s and :func:`evaluate_detector` scores predictions with
the devkit's center-distance AP. Training is the task runtime's (:mod:`vlsdk_driving.bev_task`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsdk.tasks.runner import autocast
from vlsdk_driving.bev import BEVGrid, PillarEncoder
from vlsdk_driving.nuscenes_adapter import POINT_FIELDS
from vlsdk_driving.sample import DETECTION_CLASSES, Boxes3D, DrivingSample

__all__ = ["HEAD", "PILLAR_FEATURES", "BEVDetector", "build_detector", "build_encoder", "load_detector", "predict",
           "evaluate_detector", "channel_names"]

#: The name of the detection head in the detector's model.
HEAD = "bev"
#: The pillar statistics the detector's encoder computes (then ``z_bins`` height slices).
PILLAR_FEATURES: tuple[str, ...] = ("occupancy", "max_z", "mean_z", "min_z", "mean_intensity")


@dataclass
class BEVDetector:
    """A BEV encoder and a :class:`~vlsdk.VLModel` with a ``driving.bev_detection`` head named ``"bev"``.

    Attributes:
        encoder: points -> pseudo-image.
        model: the backbone with the LiDAR expert and the head.
    """

    encoder: PillarEncoder
    model: Any

    @property
    def head(self) -> Any:
        """The detection head."""
        return self.model.heads[HEAD]

    def save(self, directory: str | Path) -> Path:
        """``save_pretrained`` the model and write the encoder settings beside it (``bev_encoder.json``).

        Args:
            directory: the checkpoint folder.
        """
        from vlsdk_driving.predict import ENCODER_CONFIG

        directory = Path(directory)
        self.model.save_pretrained(directory)
        enc = self.encoder
        (directory / ENCODER_CONFIG).write_text(json.dumps({
            "grid": enc.grid.to_dict(), "features": list(enc.features), "z_bins": enc.z_bins,
            "point_fields": list(enc.point_fields), "intensity_scale": enc.intensity_scale,
            "max_count": enc.max_count}, indent=2))
        return directory


def build_encoder(grid: BEVGrid, z_bins: int = 4, point_fields: Sequence[str] = POINT_FIELDS) -> PillarEncoder:
    """The detector's pillar encoder for ``grid`` (:data:`PILLAR_FEATURES`, then ``z_bins`` slices)."""
    return PillarEncoder(grid, z_bins=z_bins, point_fields=point_fields, features=PILLAR_FEATURES)


def channel_names(encoder: PillarEncoder) -> list[str]:
    """The names of the encoder's pseudo-image channels, in order."""
    return [*encoder.features, *(f"z_slice_{i}" for i in range(encoder.z_bins))]


def build_detector(grid: BEVGrid, *, backbone: str = "tiny", z_bins: int = 4, experts: Sequence[str] = ("driving.lidar",),
                   velocity: bool = False, num_classes: int = len(DETECTION_CLASSES),
                   point_fields: Sequence[str] = POINT_FIELDS, **head_options: Any) -> BEVDetector:
    """A fresh detector for ``grid``.

    Args:
        grid: the BEV grid (range and resolution).
        backbone: the named backbone config (``"tiny"`` for CPU, ``"small"``/``"base"`` for a GPU).
        z_bins: height slices of the encoder.
        experts: registered experts inserted into every MoE layer (router rows open).
        velocity: regress velocities too.
        num_classes: detection classes.
        point_fields: the point columns of the samples.
        **head_options: more :class:`~vlsdk_driving.heads.BEVDetectionHead` options.
    """
    import vlsdk

    encoder = build_encoder(grid, z_bins, point_fields)
    model = vlsdk.VLModel(backbone, in_chans=encoder.out_channels)
    for expert in experts:
        model.add_expert(expert, init_bias=0.0)
    model.add_head(HEAD, task="driving.bev_detection", num_classes=num_classes, x_range=list(grid.x_range),
                   y_range=list(grid.y_range), resolution=grid.resolution, velocity=velocity, **head_options)
    return BEVDetector(encoder, model)


def load_detector(directory: str | Path, map_location: str = "cpu") -> BEVDetector:
    """A detector written by :meth:`BEVDetector.save` or trained by the ``driving.bev`` task.

    Args:
        directory: the checkpoint folder (``bev_encoder.json`` or the task's ``task.json`` beside the weights).
        map_location: device for the weights.
    """
    import vlsdk
    from vlsdk_driving.predict import load_bev_encoder

    return BEVDetector(load_bev_encoder(directory),
                       vlsdk.VLModel.from_pretrained(Path(directory), map_location=map_location).eval())


@torch.no_grad()
def predict(detector: BEVDetector, samples: Sequence[DrivingSample], *, batch_size: int = 4, device: str = "cpu",
            precision: str = "off", score_threshold: float | None = None) -> list[Boxes3D]:
    """Detected boxes (LiDAR frame, with scores) for each sample.

    Args:
        detector: the detector.
        samples: the samples (a sequence or a map-style dataset of them).
        batch_size: samples per forward pass.
        device: the device.
        precision: ``"off"``, ``"bf16"`` or ``"fp16"`` autocast.
        score_threshold: override of the head's threshold.
    """
    from types import SimpleNamespace

    dev = torch.device(device)
    model = detector.model.to(dev).eval()
    max_stride = max(detector.head.strides)  # the backbone stages past the head's coarsest level are not run
    out: list[Boxes3D] = []
    for start in range(0, len(samples), batch_size):
        batch = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        bev = detector.encoder([torch.from_numpy(s.points).to(dev) for s in batch])
        with autocast(SimpleNamespace(precision=precision), dev):
            res = model(bev, heads=[HEAD], max_stride=max_stride)
        out += detector.head.decode(res[HEAD], score_threshold=score_threshold)
    return out


def evaluate_detector(predictions: Sequence[Boxes3D], samples: Sequence[DrivingSample],
                      grid: BEVGrid | None = None, metric: Any = None) -> dict:
    """Center-distance AP (devkit algorithm) of predictions against the samples' boxes.

    Ground truth outside ``grid`` (the detector cannot see it) and without LiDAR points is left out.

    Args:
        predictions: one :class:`Boxes3D` per sample.
        samples: the samples.
        grid: the detector's grid; ``None`` keeps all boxes.
        metric: a fresh :class:`~vlsdk_driving.metrics.NuScenesDetectionAP` (default: the official settings).

    Raises:
        ValueError: as many predictions as samples were not given.
    """
    from vlsdk_driving.metrics import NuScenesDetectionAP

    if len(predictions) != len(samples):
        raise ValueError(f"got {len(predictions)} predictions for {len(samples)} samples")
    metric = NuScenesDetectionAP() if metric is None else metric
    for pred, sample in zip(predictions, samples, strict=True):
        gt = sample.boxes
        npts = gt.points_inside(sample.points).sum(1) if len(gt) else np.zeros(0, int)
        if grid is not None and len(gt):
            inside = ((gt.centers[:, 0] >= grid.x_range[0]) & (gt.centers[:, 0] < grid.x_range[1])
                      & (gt.centers[:, 1] >= grid.y_range[0]) & (gt.centers[:, 1] < grid.y_range[1]))
            npts = np.where(inside, npts, 0)
        metric.update(pred, gt, sample.token, gt_num_points=npts)
    return metric.compute()

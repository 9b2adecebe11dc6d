"""Training parts of the BEV detector for the core :class:`vlsdk.train.Trainer`.

:class:`DetectorTrainSet` turns driving samples (a list or a map-style dataset, read lazily) into
augmented ``(points, boxes)`` pairs, :class:`BEVDetectionLoss` is the loss (pillar encoding on the
device, then the head's CenterPoint loss) and :data:`TRAINER_OPTIONS` the detector's schedule. The
``driving.bev`` task trains with them through the task runner; :func:`train_detector` is the same
training on a plain sample list (``vlsdk demo``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vlsdk_driving.detector import HEAD
from vlsdk_driving.sample import Boxes3D, DrivingSample

if TYPE_CHECKING:
    from vlsdk.train import TrainResult
    from vlsdk_driving.bev import PillarEncoder
    from vlsdk_driving.detector import BEVDetector

__all__ = ["TRAINER_OPTIONS", "augment", "DetectorTrainSet", "collate_detector_batch", "BEVDetectionLoss",
           "trainer_options", "train_detector"]

#: The detector's schedule beside the core defaults: warm-up over 20 % of the steps, cosine to 1e-4 x lr.
TRAINER_OPTIONS: dict[str, float] = {"warmup_fraction": 0.2, "min_lr_ratio": 1e-4}


def trainer_options(steps: int) -> dict[str, Any]:
    """The :class:`~vlsdk.train.TrainConfig` options of the detector's schedule for ``steps`` steps
    (warm-up, final learning-rate ratio, a log row every 5 % of the steps).

    Example:
        >>> trainer_options(100)
        {'warmup_steps': 20, 'min_lr_ratio': 0.0001, 'log_every': 5}
    """
    return {"warmup_steps": max(1, round(TRAINER_OPTIONS["warmup_fraction"] * steps)),
            "min_lr_ratio": TRAINER_OPTIONS["min_lr_ratio"], "log_every": max(1, steps // 20)}


def augment(sample: DrivingSample, rng: np.random.Generator, rotate: float = math.pi / 4,
            scale: tuple[float, float] = (0.95, 1.05)) -> tuple[np.ndarray, Boxes3D]:
    """Global flip, rotation about ``z`` and scaling of points and boxes together.

    Args:
        sample: the sample (not modified).
        rng: the random generator.
        rotate: rotation drawn from ``U(-rotate, rotate)``, radians.
        scale: scale factor range.

    Returns:
        the augmented ``(points, boxes)``.
    """
    pts = sample.points.copy()
    b = sample.boxes
    boxes = b.boxes.copy()
    vel = None if b.velocity is None else b.velocity.copy()
    if rng.random() < 0.5:  # flip y
        pts[:, 1] *= -1
        boxes[:, 1] *= -1
        boxes[:, 6] *= -1
        if vel is not None:
            vel[:, 1] *= -1
    angle, s = rng.uniform(-rotate, rotate), rng.uniform(*scale)
    c, si = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -si], [si, c]])
    pts[:, :2] = pts[:, :2] @ rot.T.astype(np.float32)
    boxes[:, :2] = boxes[:, :2] @ rot.T
    boxes[:, 6] += angle
    if vel is not None:
        vel = vel @ rot.T
    pts[:, :3] *= s
    boxes[:, :6] *= s
    if vel is not None:
        vel = vel * s
    return pts, Boxes3D(boxes, b.labels, None, vel, list(b.tokens))


class DetectorTrainSet(Dataset):
    """A map-style dataset of ``(points (N, C) float32 tensor, Boxes3D)`` over driving samples.

    Each draw of a sample is augmented (:func:`augment`) with a generator seeded from torch's
    global generator, which the Trainer seeds, saves in its checkpoints and restores on resume
    (and which DataLoader workers seed per worker): a resumed run draws the same augmentations.

    Args:
        samples: the training samples (their ``point_fields`` must match the encoder's): a list, or
            a map-style dataset of them, read one sample per draw.
        augmentation: flip/rotate/scale each draw; ``False`` returns the samples as they are.

    Raises:
        ValueError: no samples.

    Example:
        >>> train_set = DetectorTrainSet(samples)  # doctest: +SKIP
        >>> points, boxes = train_set[0]  # doctest: +SKIP
    """

    def __init__(self, samples: Sequence[DrivingSample], augmentation: bool = True) -> None:
        if not len(samples):
            raise ValueError("no training samples")
        self.samples = samples
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Boxes3D]:
        sample = self.samples[index]
        if not self.augmentation:
            return torch.from_numpy(sample.points), sample.boxes
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        points, boxes = augment(sample, rng)
        return torch.from_numpy(points), boxes


def collate_detector_batch(batch: Sequence[tuple[torch.Tensor, Boxes3D]]) -> tuple[list[torch.Tensor], list[Boxes3D]]:
    """``(list of point tensors, list of Boxes3D)``: clouds differ in size, so they stay a list.

    Args:
        batch: :class:`DetectorTrainSet` items.
    """
    return [p for p, _ in batch], [b for _, b in batch]


class BEVDetectionLoss:
    """The Trainer's ``loss_fn``: encode the batch's clouds into BEV pseudo-images, run the model,
    return the detection head's loss dict (the Trainer adds the MoE losses).

    Args:
        encoder: the detector's pillar encoder.
        head: the name of the detection head in the model.
    """

    def __init__(self, encoder: PillarEncoder, head: str = HEAD) -> None:
        self.encoder = encoder
        self.head = head

    def __call__(self, model: torch.nn.Module, batch: tuple[list[torch.Tensor], list[Boxes3D]]) -> dict[str, Any]:
        points, boxes = batch
        out = model(self.encoder(points), heads=[self.head])
        return model.heads[self.head].loss(out[self.head], boxes)


def train_detector(detector: BEVDetector, samples: Sequence[DrivingSample], *, epochs: int = 10,
                   batch_size: int = 4, lr: float = 2e-3, weight_decay: float = 1e-2, device: str = "cpu",
                   amp: str | None = None, seed: int = 0, augmentation: bool = True, progress: bool = True,
                   max_seconds: float | None = None, out_dir: str | Path = "runs/driving_bev/train",
                   num_workers: int = 0, resume: bool = False) -> TrainResult:
    """Train the detector with the core :class:`~vlsdk.train.Trainer`.

    AdamW with a linear warm-up over the first 20 % of the steps, then a cosine decay to 1e-4 x ``lr``; gradient
    norm clipped at 10; the MoE load-balancing (0.01) and router z-losses added. Under
    ``torchrun`` every rank trains on its slice of each global batch (``batch_size`` per rank), so
    an epoch takes ``len(samples) // (batch_size * world_size)`` steps. The model is left in eval mode.

    Args:
        detector: the detector.
        samples: training samples.
        epochs: passes over ``samples``.
        batch_size: samples per step (per rank).
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not on norms, biases and router rows).
        device: ``"cpu"``, ``"cuda"``, ``"auto"``...
        amp: ``"bf16"``/``"fp16"`` autocast, or ``None``/``"none"``/``"off"``.
        seed: data order, augmentation and initialisation-time randomness.
        augmentation: flip/rotate/scale each sample.
        progress: show the Trainer's progress bar.
        max_seconds: stop cleanly after this much wall time (the schedule still spans ``epochs``).
        out_dir: the Trainer's folder (``checkpoint/``, ``metrics.jsonl``, ``curves.png``, ...).
        num_workers: DataLoader worker processes.
        resume: continue from ``out_dir/checkpoint``.

    Returns:
        the Trainer's :class:`~vlsdk.train.TrainResult` (``train``: the logged rows with ``loss``,
        ``heatmap``, ``offset``, ..., ``aux_loss``, ``lr``, ``grad_norm``).
    """
    from vlsdk.train import TrainConfig, Trainer
    from vlsdk.train.distributed import init_from_env

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"expected epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    if amp not in (None, "none", "off", "bf16", "fp16"):
        raise ValueError(f"amp must be 'bf16', 'fp16' or None, got {amp!r}")
    train_set = DetectorTrainSet(samples, augmentation)
    _, world = init_from_env(device)
    per_epoch = len(train_set) // (batch_size * world)
    if per_epoch < 1:
        raise ValueError(f"{len(train_set)} training samples are fewer than one global batch "
                         f"({batch_size} x {world} ranks)")
    steps = epochs * per_epoch
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         amp="off" if amp in (None, "none") else amp, device=device, num_workers=num_workers,
                         seed=seed, out_dir=str(out_dir), progress=progress, max_seconds=max_seconds,
                         clip_grad=10.0, aux_loss_weight=0.01, **trainer_options(steps))
    trainer = Trainer(detector.model, BEVDetectionLoss(detector.encoder), train_set, config,
                      collate_fn=collate_detector_batch)
    try:
        return trainer.fit(resume=resume)
    finally:
        detector.model.eval()

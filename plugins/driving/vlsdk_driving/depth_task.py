"""``driving.depth``: monocular camera depth supervised by projected LiDAR, as a task of the runtime.

The core ``depth`` head learns from sparse targets: LiDAR points projected into one camera
(:func:`~vlsdk_driving.depth.sparse_depth_map`, 0 = no measurement). Training uses synthetic
nuScenes-format scenes with that camera (registered synthesizer ``driving.scenes``, written under
``<out>/data/train``); evaluation scores held-out synthetic scenes and the camera of the
nuScenes-format folder ``data`` with the registered metric ``driving.depth``: AbsRel (the primary
metric), RMSE and delta < 1.25 over every measured pixel::

    vlsdk train examples/configs/driving_depth.yaml --quick data=../shared/data/nuscenes_mini
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlsdk.tasks.components import build
from vlsdk.tasks.protocol import Task
from vlsdk.tasks.runner import autocast, model_device
from vlsdk.tasks.settings import RunSettings, help_field

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel

__all__ = ["CameraDepthSet", "DepthSettings", "DepthTask"]

#: Keyframes per synthetic scene; seeds of training and held-out scenes (apart from driving.bev's).
KEYFRAMES, TRAIN_SEED, TEST_SEED = 4, 20_000, 30_000


@dataclass
class DepthSettings(RunSettings):
    """Settings of :class:`DepthTask` (every :class:`RunSettings` field, and these)."""

    data: Path | None = help_field(None, "nuScenes-format dataroot whose camera images are evaluated")
    out: Path = help_field(Path("runs/driving_depth"), "output folder: model/, metrics.json, data/, predictions.png")
    model: str = help_field("tiny", "backbone config (tiny, edge, small, base; fields by name: small@depths=2,2)")
    epochs: int = help_field(40, "passes over the training images (in global batches: batch_size x ranks)")
    batch_size: int = help_field(4, "images per step and rank")
    lr: float = help_field(2e-3, "peak AdamW learning rate")
    weight_decay: float = help_field(1e-2, "AdamW weight decay")
    camera: str = help_field("CAM_FRONT", "the camera channel (synthetic scenes and data)")
    image_size: tuple[int, int] = help_field((96, 160), "(height, width) images and targets are resized to")
    max_depth: float = help_field(80.0, "upper bound of the depth head, metres")
    version: str = help_field("v1.0-mini", "table version folder of data")
    lidar_channel: str = help_field("LIDAR_TOP", "LiDAR channel of data (the depth targets)")
    dataset: Any = help_field("driving.nuscenes", "the registered adapter reading data (name or {name, options})")
    synthesizer: Any = help_field("driving.scenes", "the registered synthesizer of the synthetic scenes")
    train_scenes: int = help_field(50, f"synthetic training scenes of {KEYFRAMES} keyframes")
    test_scenes: int = help_field(20, f"held-out synthetic scenes of {KEYFRAMES} keyframes (0: none)")
    metric: Any = help_field("driving.depth", "the registered depth metric")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_scenes < 1 or self.test_scenes < 0:
            raise ValueError(f"train_scenes must be >= 1 and test_scenes >= 0, got {self.train_scenes}, "
                             f"{self.test_scenes}")
        if min(self.image_size) < 32 or any(s % 32 for s in self.image_size):
            raise ValueError(f"image_size must be two positive multiples of 32 (height, width), got {self.image_size}")
        if not self.max_depth > 0:
            raise ValueError(f"max_depth must be > 0, got {self.max_depth}")


class CameraDepthSet:
    """``(image (3, H, W) in [0, 1], sparse target (1, H, W))`` of one camera per driving sample.

    Args:
        samples: a map-style dataset of :class:`~vlsdk_driving.sample.DrivingSample` with ``camera``.
        camera: the camera channel.
        size: ``(H, W)`` of images and targets.

    Raises:
        ValueError: (on access) a sample without the camera, naming the sample.
    """

    def __init__(self, samples: Any, camera: str, size: tuple[int, int]) -> None:
        self.samples, self.camera, self.size = samples, camera, (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch.nn.functional as F

        from vlsdk_driving.depth import sparse_depth_map

        s = self.samples[index]
        if self.camera not in s.cameras:
            raise ValueError(f"sample {s.token} has no camera {self.camera!r}; cameras: {sorted(s.cameras)}")
        cam = s.cameras[self.camera]
        image = torch.from_numpy(cam.load_image()).permute(2, 0, 1)[None].float() / 255
        image = F.interpolate(image, size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        return image, sparse_depth_map(s.points, cam, self.size)[None]


class DepthTask(Task):
    """Camera depth from projected LiDAR (see the module docstring)."""

    name = "driving.depth"
    settings_type = DepthSettings
    primary_metric = "abs_rel"
    description = "monocular camera depth supervised by projected LiDAR (synthetic scenes + nuScenes-format data)"
    quick = {"model": "tiny", "epochs": 1, "train_scenes": 3, "test_scenes": 2, "batch_size": 4, "draw": 2,
             "progress": False}
    head = "depth"

    def _scenes(self, settings: DepthSettings, split: str) -> Any:
        from vlsdk.train.distributed import barrier, dist_info
        from vlsdk_driving.nuscenes_adapter import NuScenesDataset

        train = split == "train"
        synth = build("synthesizers", settings.synthesizer, "synthesizer", samples_per_scene=KEYFRAMES,
                      num_scenes=settings.train_scenes if train else settings.test_scenes,
                      camera_channel=settings.camera)
        root = Path(settings.out) / "data" / split
        if dist_info()[0] == 0 or not train:
            synth.write(root, settings.seed + (TRAIN_SEED if train else TEST_SEED))
        if train:
            barrier()
        return NuScenesDataset(root, synth.version, lidar_channel=synth.lidar_channel,
                               camera_channels=tuple(synth.cameras))

    def datasets(self, settings: DepthSettings, split: str) -> Any:
        from vlsdk_driving.bev_task import EvalSets

        if split == "train":
            return CameraDepthSet(self._scenes(settings, "train"), settings.camera, settings.image_size)
        parts = [("synthetic", self._scenes(settings, "test"))] if settings.test_scenes else []
        real = build("datasets", settings.dataset, "dataset", dataroot=settings.data, root=settings.data,
                     version=settings.version, lidar_channel=settings.lidar_channel, camera_channels=(settings.camera,))
        parts.append(("data", real))
        return EvalSets([(n, CameraDepthSet(d, settings.camera, settings.image_size)) for n, d in parts])

    def build_model(self, settings: DepthSettings, data: Any) -> VLModel:
        from vlsdk import VLModel

        model = VLModel(settings.model, in_chans=3)
        model.add_head(self.head, task="depth", max_depth=settings.max_depth)
        return model

    def collate(self, samples: list[Any]) -> Any:
        return torch.stack([i for i, _ in samples]), torch.stack([t for _, t in samples])

    def loss(self, model: VLModel, batch: Any) -> Any:
        images, targets = batch
        return model.heads[self.head].loss(model(images, heads=[self.head])[self.head], targets)

    def _depth(self, model: VLModel, data: Any, settings: DepthSettings):
        """Yield ``(predicted depth (B, 1, H, W) on the CPU, targets, images)`` per batch of ``data``."""
        from torch.utils.data import DataLoader

        device = model_device(model)
        for images, targets in DataLoader(data, batch_size=settings.batch_size, collate_fn=self.collate):
            with torch.no_grad(), autocast(settings, device):
                out = model(images.to(device), heads=[self.head])[self.head]
            yield out.depth.float().cpu(), targets, images

    def evaluate(self, model: VLModel, data: Any, settings: DepthSettings) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        for name, part in data.parts:
            metric = build("metrics", settings.metric, "metric")
            for depth, targets, _ in self._depth(model, part, settings):
                metric.update(depth, targets)
            result = metric.compute()
            print(f"[driving.depth] {name} {settings.camera}: AbsRel {result['abs_rel']:.3f}, RMSE "
                  f"{result['rmse']:.2f} m, delta<1.25 {result['delta1']:.3f} over {result['pixels']} LiDAR pixels",
                  flush=True)
            for key, value in result.items():
                metrics.setdefault(key, value)  # the first set's values are the headline
                metrics[f"{name}.{key}"] = value
        return metrics

    def predict(self, model: VLModel, data: Any, settings: DepthSettings) -> list[dict[str, Any]]:
        rows = []
        for name, part in data.parts:
            depths = [d[:, 0] for d, _, _ in self._depth(model, part, settings)]
            rows += [{"set": name, "depth": d.round(decimals=2).tolist()} for d in torch.cat(depths)]
        return rows

    def metadata(self, settings: DepthSettings, data: Any) -> dict[str, Any]:
        return {"task": self.name, "class_names": {},
                "input": {"channels": ["r", "g", "b"], "scaling": "divide_255", "image_size": list(settings.image_size)}}

    def render(self, model: VLModel, data: Any, settings: DepthSettings, path: Path) -> Path | None:
        from vlsdk_driving.drawing import render_depth_panels

        subset = [data[i] for i in range(min(settings.draw, len(data)))]
        if not subset:
            return None
        depth = torch.cat([d for d, _, _ in self._depth(model, subset, settings)])
        return render_depth_panels([i for i, _ in subset], depth, [t for _, t in subset], path, settings.max_depth)

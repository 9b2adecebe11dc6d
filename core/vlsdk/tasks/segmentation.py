"""``segmentation``: per-pixel classes composed from registered parts, for any image + mask adapter.

::

    task: segmentation
    dataset: {name: mask_folder, images: images, masks: masks}
    image_size: 256

Samples carry ``image`` ``(H, W, C)`` uint8 and ``mask`` ``(H, W)`` class ids (0 = background).
Evaluation reports Dice per class and the mean over the foreground classes (primary: ``dice``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.tasks.components import build, split_pipeline
from vlsdk.tasks.data import split_datasets
from vlsdk.tasks.detection import attach_experts, class_names, model_classes, same_classes
from vlsdk.tasks.protocol import Task
from vlsdk.tasks.runner import autocast, model_device
from vlsdk.tasks.settings import ComponentSpec, ComposedSettings, help_field

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel

__all__ = ["SegmentationSettings", "SegmentationTask", "collate_masks"]


@dataclass
class SegmentationSettings(ComposedSettings):
    """Settings of :class:`SegmentationTask`: every :class:`ComposedSettings` field, with these defaults."""

    out: Path = help_field(Path("runs/segmentation"), "output folder: model/, metrics.json, report/, pictures")
    dataset: ComponentSpec = help_field({"name": "mask_folder"}, "dataset adapter (registered name or {name, ...})")
    channels: int = help_field(1, "input channels the adapter delivers (1 grey, 3 RGB)")
    image_size: int = help_field(256, "samples are resized to image_size x image_size (a multiple of 32)")
    metric: ComponentSpec = help_field("segmentation.dice", "the metric by registered name")
    head: str = help_field("segmentation", "the registered head")


def collate_masks(samples: list[dict[str, Any]]) -> tuple[Any, Any, list[dict[str, Any]]]:
    """``(images (B, C, H, W) float in [0, 1], masks (B, H, W) long, samples without pixels)``."""
    import numpy as np
    import torch

    shapes = {s["image"].shape for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"samples of one batch must share a shape (add a resize transform), got {sorted(shapes)}")
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).float().div_(255)
    masks = torch.from_numpy(np.stack([np.asarray(s["mask"], np.int64) for s in samples]))
    return images, masks, [{k: v for k, v in s.items() if k not in ("image", "mask")} for s in samples]


class SegmentationTask(Task):
    """Semantic segmentation on any registered image + mask adapter (see the module docstring)."""

    name = "segmentation"
    settings_type = SegmentationSettings
    primary_metric = "dice"
    description = "semantic segmentation on any registered image + mask adapter: Dice"
    quick = {"model": "tiny", "image_size": 64, "batch_size": 2, "max_steps": 4, "epochs": 1, "draw": 2,
             "progress": False}
    head = "segmentation"

    def datasets(self, settings: SegmentationSettings, split: str) -> Any:
        return split_datasets(settings, split, split_pipeline(settings, split), channels=settings.channels,
                              on_error="skip")

    def collate(self, samples: list[Any]) -> Any:
        return collate_masks(samples)

    def build_model(self, settings: SegmentationSettings, data: Any) -> VLModel:
        from vlsdk import VLModel

        model = VLModel(settings.model, in_chans=settings.channels, text=None)
        attach_experts(model, settings.experts)
        model.add_head(self.head, task=settings.head, num_classes=len(class_names(data)))
        return model

    def loss(self, model: VLModel, batch: Any) -> Any:
        images, masks, _ = batch
        out = model(images, heads=[self.head])[self.head]
        return model.heads[self.head].loss(type(out)(out.logits.float()), masks)

    def _labels(self, model: VLModel, data: Any, settings: SegmentationSettings):
        from torch.utils.data import DataLoader

        device, head = model_device(model), model.heads[self.head]
        loader = DataLoader(data, batch_size=settings.batch_size, collate_fn=self.collate,
                            num_workers=settings.num_workers)
        for images, masks, samples in loader:
            with autocast(settings, device):
                out = model(images.to(device), heads=[self.head])[self.head]
            yield head.decode(type(out)(out.logits.float())).labels.cpu(), masks, samples

    def evaluate(self, model: VLModel, data: Any, settings: SegmentationSettings) -> dict[str, Any]:
        same_classes(model_classes(model, self.head), data, "the evaluation data")
        metric = build("metrics", settings.metric, "metric", class_names=class_names(data))
        for labels, masks, _ in self._labels(model, data, settings):
            metric.update(labels, masks)
        result = metric.compute()
        return result.as_dict() if hasattr(result, "as_dict") else dict(result)

    def predict(self, model: VLModel, data: Any, settings: SegmentationSettings) -> list[dict[str, Any]]:
        names, rows = class_names(data), []
        for labels, _, samples in self._labels(model, data, settings):
            for lab, s in zip(labels, samples, strict=True):
                counts = lab.flatten().bincount(minlength=len(names)).tolist()
                rows.append({"path": s.get("path"), "pixels": dict(zip(names, counts, strict=True))})
        return rows

    def metadata(self, settings: SegmentationSettings, data: Any) -> dict[str, Any]:
        channels = getattr(data, "channel_names", None) or (("gray",) if settings.channels == 1 else ("r", "g", "b"))
        return {"task": self.name, "class_names": {self.head: list(class_names(data))},
                "input": {"channels": list(channels), "scaling": "divide_255",
                          "image_size": [settings.image_size, settings.image_size]}}

    def render(self, model: VLModel, data: Any, settings: SegmentationSettings, path: Path) -> Path | None:
        from vlsdk.tasks.drawing import draw_masks_grid

        subset = [data[i] for i in range(min(settings.draw, len(data)))]
        labels = [lab for batch, _, _ in self._labels(model, subset, settings) for lab in batch.numpy()]
        return draw_masks_grid(list(zip(subset, labels, strict=True)), class_names(data), path)

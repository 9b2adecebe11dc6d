"""``detection``: a box detector composed from registered parts, for any dataset adapter.

A config names the dataset adapter (``coco``, ``voc``, ``industrial.deeppcb``...), the transforms,
the metric, the experts to insert and the head, all by registered name; no Python is needed::

    task: detection
    dataset: {name: coco, annotations: annotations.json}
    experts: [industrial.pcb_defect]
    image_size: 512

Samples follow the core format (:mod:`vlsdk.data.samples`): ``image`` ``(H, W, C)`` uint8,
``boxes`` ``(n, 4)`` xyxy pixels, ``labels`` ``(n,)``. Evaluation reports COCO mAP@0.5:0.95 (the
primary metric ``map``), mAP@0.5, mAP@0.75 and DeepPCB's IoU > 0.33 criterion, per class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.data.collate import collate_uint8, images_to_float
from vlsdk.data.mixing import MixedDataset
from vlsdk.tasks.components import build, split_pipeline
from vlsdk.tasks.data import PRETRAIN_SEED, split_datasets, synthetic_set
from vlsdk.tasks.protocol import Stage, Task
from vlsdk.tasks.runner import autocast, model_device
from vlsdk.tasks.settings import ComponentSpec, ComposedSettings, help_field

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel

__all__ = ["DetectionSettings", "DetectionTask", "attach_experts", "class_names", "float_output", "model_classes",
           "same_classes"]

@dataclass
class DetectionSettings(ComposedSettings):
    """Settings of :class:`DetectionTask` (every :class:`ComposedSettings` field, and these)."""

    out: Path = help_field(Path("runs/detection"), "output folder: model/, metrics.json, report/, pictures")
    synthesizer: ComponentSpec = help_field(None, "registered synthesizer for pre-training and mixing")
    synthetic_pretrain_steps: int = help_field(0, "first train this many steps on synthetic samples only "
                                                  "(each seen once), then on the data with a fresh schedule")
    synthetic_ratio: float | None = help_field(None, "mix synthetic samples into training: real per synthetic "
                                                     "(3 = 3:1); none: real only")
    score_threshold: float = help_field(0.3, "detections drawn and predicted from this score up")
    coco_json: bool = help_field(False, "evaluation also writes coco_results.json and coco_ground_truth.json "
                                        "and reports pycocotools' COCOeval (AP, AR, size buckets)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.synthetic_pretrain_steps < 0:
            raise ValueError(f"synthetic_pretrain_steps must be >= 0, got {self.synthetic_pretrain_steps!r}")
        if self.synthetic_ratio is not None and not self.synthetic_ratio > 0:
            raise ValueError(f"synthetic_ratio must be > 0 or none, got {self.synthetic_ratio!r}")
        if (self.synthetic_pretrain_steps or self.synthetic_ratio) and self.synthesizer is None:
            raise ValueError("synthetic_pretrain_steps and synthetic_ratio need a synthesizer (a registered name)")


def float_output(output: Any) -> Any:
    """A head output dataclass with its tensors cast to float32 (for losses and decoding after autocast)."""
    import torch

    return dataclasses.replace(output, **{f.name: getattr(output, f.name).float() for f in dataclasses.fields(output)
                                          if isinstance(getattr(output, f.name), torch.Tensor)})


def class_names(data: Any) -> tuple[str, ...]:
    """A dataset's ``classes`` (required of detection and segmentation adapters)."""
    names = getattr(data, "classes", None)
    if not names:
        raise ValueError(f"dataset {type(data).__name__} has no 'classes' attribute naming its labels")
    return tuple(str(n) for n in names)


def model_classes(model: Any, head: str) -> tuple[str, ...] | None:
    """The class names a saved model records for ``head`` (``None`` when it records none)."""
    meta = getattr(model, "metadata", None)
    return getattr(meta, "class_names", {}).get(head) if meta is not None else None


def same_classes(expected: Any, data: Any, where: str) -> None:
    """Label ids mean the same classes in ``data`` as in ``expected`` (else every later id would shift).

    Raises:
        ValueError: naming both class lists.
    """
    if expected is None:
        return
    found = class_names(data)
    if tuple(found) != tuple(expected):
        raise ValueError(f"{where}: its classes {list(found)} are not the model's {list(expected)} (same names in "
                         "the same order); label ids would mean other classes and the metrics would be wrong")


def attach_experts(model: Any, experts: list[str]) -> None:
    """Insert registered experts into every MoE layer of ``model`` (router rows open).

    Raises:
        ValueError: an unknown expert (naming the closest), or experts for a model without MoE layers.
    """
    from vlsdk.plugins.errors import UnknownNameError

    if experts and not model.moe_layers:
        raise ValueError(f"experts: {experts} asked for, but this backbone has no MoE layers to insert them into")
    for expert in experts:
        try:
            model.add_expert(expert, init_bias=0.0)
        except UnknownNameError as exc:
            raise ValueError(f"experts: {exc}") from None


def _same_classes(data: Any, synthetic: Any) -> None:
    """A synthetic set must label the same classes as the data it is trained with."""
    ours, theirs = getattr(data, "classes", None), getattr(synthetic, "classes", None)
    if ours is not None and theirs is not None and tuple(ours) != tuple(theirs):
        raise ValueError(f"synthesizer: its samples are labelled {list(theirs)} but the dataset's classes are "
                         f"{list(ours)}; use a synthesizer of the same classes (or map them)")


class DetectionTask(Task):
    """Box detection on any registered dataset adapter (see the module docstring)."""

    name = "detection"
    settings_type = DetectionSettings
    primary_metric = "map"
    description = "box detection on any registered dataset adapter (COCO, VOC, DeepPCB...): COCO mAP"
    quick = {"model": "tiny", "image_size": 128, "batch_size": 2, "max_steps": 4, "epochs": 1, "draw": 2,
             "progress": False}
    head = "detection"

    def dataset_context(self, settings: DetectionSettings, split: str) -> dict[str, Any]:
        """What the adapter of ``split`` is offered by keyword (it takes what its signature names)."""
        return {"channels": settings.channels, "on_error": "skip"}

    def synthesizer_context(self, settings: DetectionSettings) -> dict[str, Any]:
        """What the synthesizer is offered by keyword."""
        return {"channels": settings.channels, "size": settings.image_size}

    def transform(self, settings: DetectionSettings, split: str) -> Any:
        """The split's transform pipeline; the training one is built once and shared by every stage."""
        if split != "train":
            return split_pipeline(settings, split)
        if getattr(self, "_train_transform", None) is None:
            self._train_transform = split_pipeline(settings, split)
        return self._train_transform

    def datasets(self, settings: DetectionSettings, split: str) -> Any:
        if split == "train":
            self._train_transform = None  # a new run on this instance builds its own
        transform = self.transform(settings, split)
        data = split_datasets(settings, split, transform, **self.dataset_context(settings, split))
        if split == "train":
            self.classes = getattr(data, "classes", None)
        else:
            same_classes(getattr(self, "classes", None), data, "val_dataset")
        if split == "train" and settings.synthetic_ratio is not None:
            synthetic = synthetic_set(settings.synthesizer, len(data), settings.seed, transform,
                                      **self.synthesizer_context(settings))
            _same_classes(data, synthetic)
            data = MixedDataset(data, synthetic, settings.synthetic_ratio)
        return data

    def stages(self, settings: DetectionSettings) -> list[Stage]:
        if not settings.synthetic_pretrain_steps:
            return []
        from vlsdk.train.distributed import dist_info

        steps = settings.synthetic_pretrain_steps
        data = synthetic_set(settings.synthesizer, steps * settings.batch_size * dist_info()[1],
                             PRETRAIN_SEED + settings.seed, self.transform(settings, "train"),
                             **self.synthesizer_context(settings))
        _same_classes(self, data)  # the training set's classes, kept by datasets()
        return [Stage("pretrain", data, steps)]

    def build_model(self, settings: DetectionSettings, data: Any) -> VLModel:
        from vlsdk import VLModel

        model = VLModel(settings.model, in_chans=settings.channels, text=None)
        names = getattr(self, "classes", None) or class_names(data)  # a mixed set: the real part's classes
        return self.attach(model, settings, len(names))

    def attach(self, model: VLModel, settings: DetectionSettings, num_classes: int) -> VLModel:
        """Insert the settings' experts (router rows open) and the head into ``model``."""
        attach_experts(model, settings.experts)
        model.add_head(self.head, task=settings.head, num_classes=num_classes)
        return model

    def collate(self, samples: list[Any]) -> Any:
        return collate_uint8(samples)

    def loss(self, model: VLModel, batch: Any) -> Any:
        images, targets, _ = batch
        out = model(images_to_float(images), heads=[self.head])
        return model.heads[self.head].loss(float_output(out[self.head]), targets)

    def _detect(self, model: VLModel, data: Any, settings: DetectionSettings, score_threshold: float):
        """Yield ``(detections, targets, samples)`` per batch of ``data`` (samples gain ``input_size``)."""
        import torch
        from torch.utils.data import DataLoader

        device = model_device(model)
        loader = DataLoader(data, batch_size=settings.batch_size, shuffle=False, collate_fn=self.collate,
                            num_workers=settings.num_workers, pin_memory=device.type == "cuda")
        head = model.heads[self.head]
        for images, targets, samples in loader:
            for s in samples:
                s["input_size"] = tuple(images.shape[1:3] if images.dtype == torch.uint8 else images.shape[-2:])
            images = images_to_float(images.to(device, non_blocking=True))
            with autocast(settings, device):
                out = model(images, heads=[self.head])
            yield head.decode(float_output(out[self.head]), score_threshold=score_threshold), targets, samples

    def evaluate(self, model: VLModel, data: Any, settings: DetectionSettings) -> dict[str, Any]:
        names = class_names(data)
        same_classes(model_classes(model, self.head), data, "the evaluation data")
        metric = build("metrics", settings.metric, "metric", class_names=names)
        predictions, samples = [], []
        for dets, targets, batch in self._detect(model, data, settings, score_threshold=0.001):
            rows = [{"boxes": d.boxes.cpu().numpy(), "scores": d.scores.cpu().numpy(),
                     "labels": d.labels.cpu().numpy()} for d in dets]
            metric.update(rows, targets)
            if settings.coco_json:
                predictions += rows
                samples += batch
        result = metric.compute()
        metrics = result.as_dict() if hasattr(result, "as_dict") else dict(result)
        if settings.coco_json:
            metrics["cocoeval"] = self.write_coco(predictions, samples, names, data, Path(settings.out))
        return metrics

    def write_coco(self, predictions: list[Any], samples: list[Any], names: tuple[str, ...], data: Any,
                   out: Path) -> dict[str, float]:
        """Write ``coco_results.json`` and ``coco_ground_truth.json`` under ``out``; pycocotools' COCOeval figures."""
        import json

        from vlsdk.data.coco_results import coco_ground_truth, coco_results, cocoeval_summary

        ids = getattr(data, "category_ids", None)  # a COCO adapter keeps its own category ids
        truth = coco_ground_truth(samples, names, category_ids=ids)
        results = coco_results(predictions, samples, category_ids=ids)
        out.mkdir(parents=True, exist_ok=True)
        (out / "coco_ground_truth.json").write_text(json.dumps(truth))
        (out / "coco_results.json").write_text(json.dumps(results))
        return cocoeval_summary(truth, results)

    def describe(self, metrics: Mapping[str, Any]) -> str | None:
        """The per-class table of a :class:`~vlsdk.metrics.detection.MAPResult` (other metrics: none)."""
        from vlsdk.metrics.detection import MAPResult

        names = {f.name for f in dataclasses.fields(MAPResult)}
        if not names <= set(metrics):
            return None
        table = MAPResult(**{k: metrics[k] for k in names}).table()
        coco = metrics.get("cocoeval")
        if coco:
            shown = (f"{k} {100 * v:.1f}" if v >= 0 else f"{k} -" for k, v in coco.items())  # -1: no such boxes
            table += "\npycocotools COCOeval: " + "  ".join(shown)
        return table

    def predict(self, model: VLModel, data: Any, settings: DetectionSettings) -> list[dict[str, Any]]:
        import numpy as np

        names, rows = class_names(data), []
        for dets, _, samples in self._detect(model, data, settings, settings.score_threshold):
            for d, s in zip(dets, samples, strict=True):
                h, w = s.get("size", (settings.image_size, settings.image_size))
                scale = np.array([w / settings.image_size, h / settings.image_size] * 2)
                rows.append({"path": s.get("path"), "image_id": s.get("image_id"),
                             "boxes": (d.boxes.cpu().numpy() * scale).round(2).tolist(),
                             "scores": d.scores.cpu().numpy().round(4).tolist(),
                             "labels": [names[int(k)] for k in d.labels.cpu()]})
        return rows

    def metadata(self, settings: DetectionSettings, data: Any) -> dict[str, Any]:
        names = class_names(data)
        channels = getattr(data, "channel_names", None) or (("gray",) if settings.channels == 1 else ("r", "g", "b"))
        return {"task": self.name, "class_names": {self.head: list(names)},
                "input": {"channels": list(channels), "scaling": "divide_255",
                          "image_size": [settings.image_size, settings.image_size]}}

    def render(self, model: VLModel, data: Any, settings: DetectionSettings, path: Path) -> Path | None:
        from vlsdk.tasks.drawing import draw_boxes_grid

        subset = [data[i] for i in range(min(settings.draw, len(data)))]
        dets = [d for batch, _, _ in self._detect(model, subset, settings, settings.score_threshold) for d in batch]
        return draw_boxes_grid(list(zip(subset, dets, strict=True)), class_names(data), path)

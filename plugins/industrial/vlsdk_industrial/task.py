"""``industrial.pcb``: PCB defect detection on DeepPCB, the generic detection task with the plugin's parts.

The task composes registered parts: the ``industrial.deeppcb`` adapter (board + defect-free template
as two channels), the ``industrial.default`` augmentations, the ``industrial.boards`` synthesizer
(for pre-training and mixing), the ``industrial.pcb_defect`` expert and the core detection head
named ``pcb``. The runner (:mod:`vlsdk.tasks.runner`) does the rest.

::

    vlsdk train examples/configs/industrial_pcb.yaml data=DEEPPCB_DIR
    vlsdk pcb --data DEEPPCB_DIR --config tiny --image-size 320     # the same task, the old flags
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vlsdk.tasks.detection import DetectionSettings, DetectionTask
from vlsdk.tasks.settings import ComponentSpec, help_field
from vlsdk_industrial.samples import DEEPPCB_CLASSES

if TYPE_CHECKING:
    from vlsdk import VLModel

__all__ = ["HEAD", "PcbSettings", "PcbTask", "build_detector", "detection_loss"]

#: Name of the detection head in the model.
HEAD = "pcb"


@dataclass
class PcbSettings(DetectionSettings):
    """Settings of :class:`PcbTask`: every detection setting, with DeepPCB's defaults, and these."""

    out: Path = help_field(Path("runs/pcb"), "output folder: model/, metrics.json, report/, predictions.png")
    model: str = help_field("small", "backbone config (tiny, edge, small, base; fields by name: tiny@depths=2,2)")
    epochs: int = help_field(24, "passes over the training set (in global batches: batch_size x ranks)")
    batch_size: int = help_field(16, "boards per step and rank")
    num_workers: int = help_field(4, "DataLoader worker processes")
    image_size: int = help_field(640, "boards are resized to image_size x image_size (DeepPCB is 640)")
    channels: int = help_field(2, "input channels: 2 with the template, 1 without (set by template)")
    dataset: ComponentSpec = help_field({"name": "industrial.deeppcb", "split": "trainval"}, "training adapter")
    val_dataset: ComponentSpec = help_field({"name": "industrial.deeppcb", "split": "test"}, "evaluation adapter")
    transforms: ComponentSpec = help_field(["industrial.default"], "training augmentations by registered name")
    eval_transforms: ComponentSpec = help_field(["industrial.default"], "evaluation transforms (resize only)")
    experts: list[str] = help_field(["industrial.pcb_defect"], "experts inserted into every MoE layer ([]: none)")
    synthesizer: ComponentSpec = help_field("industrial.boards", "synthetic boards for pre-training and mixing")
    template: bool = help_field(True, "feed the defect-free template as a second channel")
    stem: Literal["cnn", "patch"] = help_field("cnn", "backbone stem: cnn (hybrid) or patch (plain ViT ablation)")
    synthetic_style: Literal["default", "deeppcb"] = help_field(
        "default", "synthetic boards: default (domain-randomised) or deeppcb (DeepPCB's look, 4-10 defects)")
    train_pairs: int | None = help_field(None, "use only the first N trainval pairs")
    eval_pairs: int | None = help_field(None, "evaluate on the first N test pairs")
    cache: Literal["uint8", "packed", "none"] = help_field("uint8", "how training pairs stay in RAM")

    def __post_init__(self) -> None:
        self.channels = 2 if self.template else 1
        super().__post_init__()
        for name in ("train_pairs", "eval_pairs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or none, got {getattr(self, name)!r}")


def build_detector(config: str = "small", *, in_chans: int = 2, num_classes: int = len(DEEPPCB_CLASSES),
                   expert: bool = True, stem: str = "cnn") -> VLModel:
    """A VLModel for board images with the ``pcb`` detection head (and the ``industrial.pcb_defect`` expert).

    Args:
        config: named backbone config.
        in_chans: 1 (board) or 2 (board + template).
        num_classes: defect classes.
        expert: insert the registered ``industrial.pcb_defect`` expert into every MoE layer.
        stem: ``"cnn"`` (hybrid) or ``"patch"`` (plain ViT), see ``BackboneConfig``.
    """
    settings = PcbSettings(model=config, template=in_chans == 2, stem=stem,  # type: ignore[arg-type]
                           experts=["industrial.pcb_defect"] if expert else [])
    if in_chans not in (1, 2) or num_classes < 1:
        raise ValueError(f"in_chans must be 1 or 2 and num_classes >= 1, got {in_chans}, {num_classes}")
    return PcbTask().model_for(settings, num_classes)


def detection_loss(model: VLModel, batch: Any) -> Any:
    """``loss_fn(model, batch)`` for :class:`vlsdk.train.Trainer`: the ``pcb`` head's loss.

    Args:
        model: from :func:`build_detector`.
        batch: a :func:`vlsdk.data.collate.collate_uint8` (or float) batch already on the device.
    """
    return PcbTask().loss(model, batch)


class PcbTask(DetectionTask):
    """PCB defect detection on DeepPCB (see the module docstring); primary metric: DeepPCB's criterion."""

    name = "industrial.pcb"
    settings_type = PcbSettings
    primary_metric = "map_deeppcb"
    description = "PCB defect detection on DeepPCB (+ synthetic boards): mAP at IoU > 0.33, 0.5, 0.5:0.95"
    quick = {"model": "tiny", "image_size": 256, "train_pairs": 8, "eval_pairs": 4, "epochs": 2, "batch_size": 4,
             "max_steps": 3, "synthetic_ratio": 3.0, "num_workers": 0, "draw": 4}
    head = HEAD

    def dataset_context(self, settings: PcbSettings, split: str) -> dict[str, Any]:
        train = split == "train"
        return {"template": settings.template, "on_error": "skip", "cache": settings.cache if train else "none",
                "max_samples": settings.train_pairs if train else settings.eval_pairs}

    def synthesizer_context(self, settings: PcbSettings) -> dict[str, Any]:
        counts = {"min_defects": 4, "max_defects": 10} if settings.synthetic_style == "deeppcb" else {}
        return {"size": 640, "template": settings.template, "style": settings.synthetic_style, **counts}

    def build_model(self, settings: PcbSettings, data: Any) -> VLModel:
        return self.model_for(settings, len(DEEPPCB_CLASSES))

    def model_for(self, settings: PcbSettings, num_classes: int) -> VLModel:
        """The detector: the backbone with the settings' stem, experts and the ``pcb`` head."""
        from vlsdk import VLModel

        model = VLModel(settings.model, in_chans=settings.channels, text=None, stem=settings.stem)
        return self.attach(model, settings, num_classes)

    def metadata(self, settings: PcbSettings, data: Any) -> dict[str, Any]:
        meta = super().metadata(settings, data)
        meta["input"]["channels"] = ["board", "template"] if settings.template else ["board"]
        meta["training"] = {"data": "DeepPCB (github.com/tangsanli5201/DeepPCB)", "data_licence": "MIT"}
        meta["intended_use"] = "defect detection on binarised PCB board images aligned with a defect-free template"
        meta["limitations"] = ("trained on DeepPCB's six defect classes at 640 px; other board styles, "
                               "colour images or unaligned templates are outside the training data")
        return meta

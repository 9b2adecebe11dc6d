"""``medical.lesion``: whole-tumour segmentation of BraTS MRI on the task runtime.

Training samples are 2D slices of the training patients (FLAIR + T1c, with ``context_slices``
neighbours as channels for 2.5D input) through the registered MONAI pipeline (``medical.default``:
crops centred on lesion or background pixels, ``crop_pos_neg`` 2:1 by default, flips, affine,
intensity). Evaluation segments every slice of each held-out patient with sliding-window inference
and scores the patient's volume, before and after post-processing (:mod:`vlsdk_medical.evaluation`).
The runner (:mod:`vlsdk.tasks.runner`) does the rest: seeding, device, precision, the Trainer,
``save_pretrained`` with the model's metadata, ``metrics.json`` and the report.

::

    vlsdk train examples/configs/medical_lesion.yaml data=../shared/data/brats_lesion_mri --quick
    vlsdk eval runs/medical_lesion/model held_out='["brats_2013_pat0005_1"]'

Example:
    >>> task = LesionTask()
    >>> task.settings(held_out=["brats_2013_pat0004_1"]).experts
    ['medical.lesion']
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk.tasks.protocol import Task
from vlsdk_medical.lesion_settings import ALL_SPLITS, INTENSITY_AUG, LesionSettings

if TYPE_CHECKING:
    import torch

    from vlsdk.models.model import VLModel
    from vlsdk_medical.dataset import LesionCase, LesionSliceDataset

__all__ = ["BRATS_CLASSES", "LesionTask", "held_out_cases", "held_out_set", "lesion_loss", "lesion_train_set",
           "train_cases"]

#: The BraTS labels 0-4 (``classes: brats``).
BRATS_CLASSES = ("background", "necrosis", "oedema", "non-enhancing", "enhancing")


def lesion_loss(model: VLModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """BCE + soft Dice (binary head) or cross-entropy + Dice of the ``lesion`` head, logits in float32.

    The Trainer adds the MoE load-balancing and z-losses itself.

    Args:
        model: a ``VLModel`` with the segmentation head ``lesion``.
        batch: a :func:`~vlsdk_medical.dataset.collate_samples` batch on the device.
    """
    from vlsdk.heads.segmentation import SegmentationOutput

    out = model(batch["image"], heads=["lesion"])
    return model.heads["lesion"].loss(SegmentationOutput(out["lesion"].logits.float()), batch["label"][:, 0].long())


def _patients(settings: LesionSettings, splits: Any) -> list[LesionCase]:
    from vlsdk_medical.dataset import find_brats_cases

    return find_brats_cases(settings.data, splits, settings.modalities)


def held_out_cases(settings: LesionSettings) -> list[LesionCase]:
    """The patients evaluated on: ``held_out`` if given, else those of ``eval_splits``.

    Raises:
        ValueError: a ``held_out`` name that is no patient of the data folder.
    """
    if not settings.held_out:
        return _patients(settings, settings.eval_splits)
    cases = _patients(settings, None)
    unknown = sorted(set(settings.held_out) - {c.case_id for c in cases})
    if unknown:
        raise ValueError(f"held_out {unknown} are not patients under {settings.data}; "
                         f"patients: {[c.case_id for c in cases]}")
    return [c for c in cases if c.case_id in set(settings.held_out)]


def train_cases(settings: LesionSettings) -> list[LesionCase]:
    """The training patients: ``train_splits`` (every split with ``held_out``) less ``exclude_cases`` and ``held_out``.

    Raises:
        ValueError: unknown ``held_out`` or ``exclude_cases`` names, or no patient left to train on.
    """
    held = {c.case_id for c in held_out_cases(settings)} if settings.held_out else set()
    cases = _patients(settings, ALL_SPLITS if settings.held_out else settings.train_splits)
    unknown = sorted(set(settings.exclude_cases) - {c.case_id for c in cases})
    if unknown:
        raise ValueError(f"exclude_cases {unknown} are not patients of the training splits "
                         f"{list(ALL_SPLITS if settings.held_out else settings.train_splits)}")
    kept = [c for c in cases if c.case_id not in held | set(settings.exclude_cases)]
    if not kept:
        raise ValueError(f"exclude_cases {settings.exclude_cases} and held_out {settings.held_out} leave no "
                         "training patient")
    return kept


def _label_options(settings: LesionSettings) -> dict[str, Any]:
    return ({"label_mode": "binary"} if settings.classes == "whole" else
            {"label_mode": "multiclass", "label_values": (0, 1, 2, 3, 4)})


def lesion_train_set(settings: LesionSettings, world: int = 1) -> LesionSliceDataset:
    """The augmented training slices, built from the registered dataset and transform of ``settings``.

    Every slice is listed ``repeats`` times, each repeat with its own augmentation stream, so that the
    ``epochs * ceil(slices / global batch)`` steps (capped by ``max_steps``) see fresh crops on every
    visit; :meth:`LesionTask.steps_per_epoch` counts an epoch in passes over the slices, not the repeats.

    Args:
        settings: the task settings.
        world: ranks under ``torchrun`` (a global batch is ``batch_size x world`` slices).
    """
    from vlsdk.tasks.components import build

    pos, neg = settings.crop_pos_neg
    transform = build("transforms", settings.transforms, "transforms", train=True, spatial_dims=2,
                      roi_size=settings.roi_size, pos=pos, neg=neg, **INTENSITY_AUG[settings.intensity_aug])
    data = build("datasets", settings.dataset, "dataset", cases=train_cases(settings), transform=transform,
                 seed=settings.seed, max_slices_per_case=settings.max_slices_per_case,
                 context_slices=settings.context_slices, **_label_options(settings))
    n, global_batch = len(data), settings.batch_size * world
    total = settings.epochs * math.ceil(n / global_batch)
    total = total if settings.max_steps is None else min(settings.max_steps, total)
    data.repeats = max(1, math.ceil(total * global_batch / n))
    return data


def held_out_set(settings: LesionSettings) -> LesionSliceDataset:
    """The held-out patients' slices as stored (every slice, or ``eval_slices`` brain slices per patient).

    Args:
        settings: the task settings.
    """
    from vlsdk.tasks.components import build

    return build("datasets", settings.dataset, "dataset", cases=held_out_cases(settings), transform=None,
                 slices="all" if settings.eval_slices is None else "foreground",
                 max_slices_per_case=settings.eval_slices, seed=settings.seed,
                 context_slices=settings.context_slices, **_label_options(settings))


class LesionTask(Task):
    """Whole-tumour (or BraTS 5-class) lesion segmentation; Dice/HD95 per held-out patient volume."""

    name = "medical.lesion"
    settings_type = LesionSettings
    primary_metric = "dice_mean"
    description = "lesion segmentation on BraTS (whole tumour): held-out Dice/HD95 per patient volume"
    quick = {"model": "tiny", "train_splits": ["train"], "max_steps": 6, "batch_size": 4, "roi_size": 96,
             "max_slices_per_case": 12, "eval_slices": 8, "epochs": 1, "progress": False}
    head = "lesion"

    def __init__(self) -> None:
        self._shown: dict[int, Any] = {}  # id(held-out set) -> its last evaluation's panels, for render()

    def datasets(self, settings: LesionSettings, split: str) -> Any:
        if split == "train":
            from vlsdk.train.distributed import init_from_env

            return lesion_train_set(settings, init_from_env(settings.device)[1])
        return held_out_set(settings)

    def steps_per_epoch(self, settings: LesionSettings, data: Any, world: int) -> int:
        """An epoch is one pass over the slices (not their repeats), the last global batch partial."""
        return math.ceil(len(data) / data.repeats / (settings.batch_size * world))

    def collate(self, samples: list[Any]) -> Any:
        from vlsdk_medical.dataset import collate_samples

        return collate_samples(samples)

    def build_model(self, settings: LesionSettings, data: Any) -> VLModel:
        from vlsdk import VLModel

        model = VLModel(settings.model, in_chans=data.num_channels)
        model.add_head(self.head, task="segmentation", num_classes=settings.num_classes)
        for expert in settings.experts:
            if model.moe_layers:
                model.add_expert(expert, init_bias=0.0)
        return model

    def loss(self, model: VLModel, batch: Any) -> Any:
        return lesion_loss(model, batch)

    def evaluate(self, model: VLModel, data: Any, settings: LesionSettings) -> dict[str, Any]:
        from vlsdk_medical.evaluation import evaluate_held_out

        result = evaluate_held_out(model, data, settings, self.head)
        shown = result.pop("shown")
        first = next(iter(shown), None)  # render() draws the first patient: keep only its panels in memory
        self._shown = {id(data): {first: shown[first]}} if first is not None else {}
        return result

    def describe(self, metrics: dict[str, Any]) -> str | None:
        """Dice, HD95 and voxel precision / recall / volume ratio per held-out patient, before and after
        post-processing, and the mean Dice."""
        before, lines = metrics["before"], []
        for cid in metrics["eval_cases"]:
            o, o0 = metrics["overlap"][cid], before["overlap"][cid]
            lines += [f"held-out patient {cid}: whole-tumour Dice {metrics['dice'][cid]:.4f}  HD95 "
                      f"{metrics['hd95'][cid]:.2f} mm  (postprocess {metrics['postprocess']}; before: Dice "
                      f"{before['dice'][cid]:.4f}  HD95 {before['hd95'][cid]:.2f} mm)",
                      f"  precision / recall / predicted:true volume {o['precision']:.3f} / {o['recall']:.3f} / "
                      f"{o['volume_ratio']:.2f} (before postprocess {o0['precision']:.3f} / {o0['recall']:.3f} / "
                      f"{o0['volume_ratio']:.2f})"]
        lines.append(f"mean Dice over {len(metrics['eval_cases'])} held-out patient(s): {metrics['dice_mean']:.4f} "
                     f"(before postprocess {before['dice_mean']:.4f})")
        return "\n".join(lines)

    def predict(self, model: VLModel, data: Any, settings: LesionSettings) -> list[dict[str, Any]]:
        from vlsdk_medical.evaluation import predict_cases

        rows = []
        for p in predict_cases(model, data, settings, self.head):
            labels = p.postprocessed(p.raw_labels(settings.threshold), settings)
            counts = labels.flatten().bincount(minlength=max(2, settings.num_classes)).tolist()
            rows.append({"case": p.case_id, "slices": p.slices.tolist(), "voxels": counts,
                         "volume_mm3": float(sum(counts[1:]) * math.prod(p.spacing))})
        return rows

    def render(self, model: VLModel, data: Any, settings: LesionSettings, path: Path) -> Path | None:
        from vlsdk_medical.overlay import write_overlay

        shown = self._shown.get(id(data))
        if shown is None:  # not the set evaluated last: evaluate it again for the picture
            from vlsdk_medical.evaluation import evaluate_held_out

            shown = evaluate_held_out(model, data, settings, self.head)["shown"]
        first = next(iter(shown))
        images, labels, pred, slices = shown[first]
        return write_overlay(path, images, labels, pred, num=settings.draw, title=first, slice_ids=slices.tolist())

    def metadata(self, settings: LesionSettings, data: Any) -> dict[str, Any]:
        offsets = range(-settings.context_slices, settings.context_slices + 1)
        channels = [m if o == 0 else f"{m}{o:+d}" for m in settings.modalities for o in offsets]
        names = ["background", "lesion"] if settings.classes == "whole" else list(BRATS_CLASSES)
        trained_on = [c.case_id for c in train_cases(settings)]
        return {"task": "lesion segmentation", "class_names": {self.head: names},
                "input": {"channels": channels, "scaling": "none",
                          "voxel_spacing": [float(s) for s in data.spacings[0]]},
                "training": {"medical_input": {"modalities": list(settings.modalities),
                                               "num_modalities": len(settings.modalities),
                                               "context_slices": settings.context_slices,
                                               "train_cases": trained_on, "class_names": names[1:]}}}

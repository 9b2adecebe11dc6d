"""Settings of the ``medical.lesion`` task (:class:`LesionSettings`): BraTS whole-tumour segmentation.

Every :class:`~vlsdk.tasks.RunSettings` field (data, out, model, schedule, device, precision,
seed...) and the domain's own: which patients train and which are held out, the input (modalities,
2.5D context slices), the training crops and augmentation, the registered parts by name, and the
held-out inference (threshold, sliding window, flip TTA, post-processing).

Example:
    >>> LesionSettings(held_out=["brats_2013_pat0005_1"], context_slices=1).in_channels
    6
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlsdk.tasks.settings import RunSettings, help_field

__all__ = ["ALL_SPLITS", "INTENSITY_AUG", "LesionSettings"]

#: training intensity augmentation presets (``intensity_aug``): ``light`` scales and shifts by
#: +-10 % with probability 0.3; ``strong`` follows nnU-Net's ranges (scale and shift +-25 %, gamma
#: 0.7-1.5, probability 0.5), for held-out patients whose contrast differs from the training ones.
INTENSITY_AUG = {"light": {"intensity_prob": 0.3},
                 "strong": {"intensity_prob": 0.5, "intensity_range": 0.25, "gamma": (0.7, 1.5)}}

#: The BraTS splits of the ``brats_lesion_mri`` layout; with ``held_out`` every one of them trains.
ALL_SPLITS = ("train", "validation", "test")


@dataclass
class LesionSettings(RunSettings):
    """Settings of :class:`~vlsdk_medical.task.LesionTask` (every :class:`RunSettings` field, and these).

    Raises:
        ValueError: a value out of range, naming the setting and what was expected.
    """

    out: Path = help_field(Path("runs/medical_lesion"), "output folder: model/, metrics.json, report/, predictions.png")
    model: str = help_field("small", "backbone config (tiny, edge, small, base)")
    epochs: int = help_field(80, "passes over the training slices")
    batch_size: int = help_field(16, "slices per step and rank")
    weight_decay: float = help_field(1e-4, "AdamW weight decay")
    clip_grad: float | None = help_field(1.0, "max gradient norm (none: no clipping)")
    train_splits: list[str] = help_field(["train", "validation"], "BraTS splits to train on (train, validation, test)")
    eval_splits: list[str] = help_field(["test"], "held-out BraTS splits, never trained on")
    held_out: list[str] = help_field([], "evaluate on these patients and train on every other patient of every "
                                         "split (leave-one-patient-out); replaces train_splits and eval_splits")
    exclude_cases: list[str] = help_field([], "patients left out of training (cross-validation folds)")
    modalities: list[str] = help_field(["flair", "t1c"], "input channels: flair, t1c")
    context_slices: int = help_field(0, "2.5D input: also feed the N slices below and above each slice of every "
                                        "modality as channels (0: the slice alone)")
    classes: Literal["whole", "brats"] = help_field("whole", "whole (binary, label > 0) or brats (5 classes 0-4)")
    roi_size: int = help_field(128, "training crop and sliding-window size")
    intensity_aug: Literal["light", "strong"] = help_field("light", "training intensity augmentation preset")
    crop_pos_neg: tuple[float, float] = help_field((2.0, 1.0), "weights of crops centred on lesion vs background")
    max_slices_per_case: int | None = help_field(None, "training slices per patient, evenly spaced (none: all)")
    eval_slices: int | None = help_field(None, "held-out slices scored per patient (none: every slice)")
    dataset: str = help_field("medical.lesion_slices", "registered dataset factory of the slices")
    transforms: str = help_field("medical.default", "registered training transform (MONAI pipeline)")
    metric: str = help_field("medical.dice", "registered per-case Dice metric")
    distance_metric: str = help_field("medical.hd95", "registered per-case surface distance metric")
    experts: list[str] = help_field(["medical.lesion"], "registered experts inserted into every MoE layer")
    threshold: float = help_field(0.5, "foreground probability threshold of the binary head")
    extra_thresholds: list[float] = help_field([], "also score held-out Dice (after post-processing) at these "
                                                   "thresholds: metrics dice_at (threshold cross-validation)")
    sw_overlap: float = help_field(0.25, "sliding-window overlap in [0, 1)")
    sw_mode: Literal["gaussian", "constant"] = help_field("gaussian", "sliding-window blending")
    tta: Literal["none", "flip"] = help_field("none", "test-time augmentation: mean over the 4 in-plane flips")
    postprocess: str = help_field("mask+lcc", "per held-out volume: none, mask, lcc or mask+lcc")
    min_component_mm3: float | None = help_field(None, "with lcc: drop components below this volume (mm3) "
                                                       "instead of keeping the largest only")

    def __post_init__(self) -> None:
        super().__post_init__()
        from vlsdk_medical.postprocess import parse_postprocess

        self.crop_pos_neg = tuple(float(w) for w in self.crop_pos_neg)  # type: ignore[assignment]
        if len(self.crop_pos_neg) != 2 or min(self.crop_pos_neg) < 0 or sum(self.crop_pos_neg) <= 0:
            raise ValueError(f"crop_pos_neg must be (pos, neg) >= 0, not both 0, got {self.crop_pos_neg!r}")
        if self.roi_size < 16:
            raise ValueError(f"roi_size must be >= 16, got {self.roi_size!r}")
        if not isinstance(self.context_slices, int) or self.context_slices < 0:
            raise ValueError(f"context_slices must be an int >= 0, got {self.context_slices!r}")
        if self.intensity_aug not in INTENSITY_AUG:
            raise ValueError(f"intensity_aug must be one of {sorted(INTENSITY_AUG)}, got {self.intensity_aug!r}")
        if self.classes not in ("whole", "brats"):
            raise ValueError(f"classes must be 'whole' or 'brats', got {self.classes!r}")
        if not 0.0 < self.threshold < 1.0 or not 0.0 <= self.sw_overlap < 1.0:
            raise ValueError(f"need 0 < threshold < 1 and 0 <= sw_overlap < 1, got {self.threshold}, {self.sw_overlap}")
        if not all(0.0 < t < 1.0 for t in self.extra_thresholds) or (self.extra_thresholds and self.classes != "whole"):
            raise ValueError(f"extra_thresholds need classes='whole' and values in (0, 1), got classes="
                             f"{self.classes!r}, extra_thresholds={self.extra_thresholds}")
        if self.sw_mode not in ("gaussian", "constant") or self.tta not in ("none", "flip"):
            raise ValueError(f"sw_mode must be 'gaussian'/'constant' and tta 'none'/'flip', got {self.sw_mode!r}, "
                             f"{self.tta!r}")
        parse_postprocess(self.postprocess)
        if self.min_component_mm3 is not None and not self.min_component_mm3 > 0:
            raise ValueError(f"min_component_mm3 must be > 0 or none, got {self.min_component_mm3}")
        for name in ("max_slices_per_case", "eval_slices"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or none, got {getattr(self, name)!r}")
        bad = [s for s in (*self.train_splits, *self.eval_splits) if s not in ALL_SPLITS]
        if bad:
            raise ValueError(f"train_splits and eval_splits take {list(ALL_SPLITS)}, got {bad}")
        if not self.held_out and set(self.train_splits) & set(self.eval_splits):
            raise ValueError(f"train_splits {self.train_splits} and eval_splits {self.eval_splits} overlap")

    @property
    def in_channels(self) -> int:
        """Model input channels: modalities times ``2 * context_slices + 1``."""
        return len(self.modalities) * (2 * self.context_slices + 1)

    @property
    def num_classes(self) -> int:
        """Outputs of the segmentation head: 1 (binary whole tumour) or 5 (BraTS labels 0-4)."""
        return 1 if self.classes == "whole" else 5

"""Lesion segmentation pipeline: train on BraTS patients, evaluate on a held-out one, report Dice.

Used by ``examples/medical_lesion_segmentation.py`` and the ``vlsdk medical-lesion`` subcommand.
Whole tumour = label > 0; channels FLAIR (+ T1c). Training samples are 2D slices with MONAI
augmentation (crops centred on lesion or background pixels, ``crop_pos_neg`` 2:1 by default, flips,
affine); evaluation segments full slices of the held-out patient with sliding-window inference
(optionally flip test-time augmentation), post-processes each volume (brain mask, largest 3D
connected component: :mod:`vlsdk_medical.postprocess`) and scores the stacked volume per patient
(Dice, HD95 in mm) both before and after post-processing, on the same predictions. The model is saved with
``save_pretrained`` and a PNG overlays prediction (red) and ground truth (green) on a few slices.
A saved model can be evaluated again with other inference options (:func:`evaluate_saved_model`,
``--eval-model DIR``) without training.

2.5D context (``context_slices = N``, ``--context-slices N``): every slice is fed with the ``N``
slices below and above it of each modality as extra channels (the border slice repeated at the
volume's edges), in training and in held-out evaluation; the saved model's ``config.json``
records ``N`` and the modalities, and ``--eval-model`` and ``vlsdk predict`` build the same input.

Example:
    >>> results = train_lesion_segmenter(LesionTrainConfig(data_root="../shared/data/brats_lesion_mri",
    ...                                                    quick=True))          # doctest: +SKIP
    >>> results["dice"]                                                           # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["INTENSITY_AUG", "CasePrediction", "LesionTrainConfig", "add_arguments", "evaluate_held_out",
           "evaluate_saved_model", "fit_lesion_model", "held_out_cases", "lesion_loss", "lesion_train_set",
           "predict_cases", "run_from_args", "train_lesion_segmenter", "write_overlay"]

#: training intensity augmentation presets (``--intensity-aug``): ``light`` scales and shifts by
#: +-10 % with probability 0.3; ``strong`` follows nnU-Net's ranges (scale and shift +-25 %, gamma
#: 0.7-1.5, probability 0.5), for held-out patients whose contrast differs from the training ones.
INTENSITY_AUG = {"light": {"intensity_prob": 0.3},
                 "strong": {"intensity_prob": 0.5, "intensity_range": 0.25, "gamma": (0.7, 1.5)}}

DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "brats_lesion_mri"


@dataclass
class LesionTrainConfig:
    """Settings of :func:`train_lesion_segmenter`.

    Args:
        data_root: the ``brats_lesion_mri`` folder.
        out_dir: where the model, ``results.json`` and the overlay PNG go.
        quick: CI mode: few slices, few steps, a small crop, evaluation on a few slices.
        train_splits: BraTS splits to train on (the full run trains on three patients).
        eval_splits: held-out splits (never trained on).
        exclude_cases: patients of ``train_splits`` left out of training (cross-validation folds).
        held_out: evaluate on these patients (case ids) and train on every other patient of every
            split, instead of ``train_splits`` / ``eval_splits`` (leave-one-patient-out runs).
        modalities: channels (``"flair"``, ``"t1c"``).
        context_slices: 2.5D input: also feed the ``N`` slices below and above each slice of every
            modality as channels (``in_chans = len(modalities) * (2N + 1)``; 0: the slice alone).
        model: backbone config name (``"tiny"``, ``"edge"``, ``"small"``, ``"base"``).
        lesion_expert: insert the ``medical.lesion`` MoE expert.
        classes: ``"whole"`` (binary whole tumour, label > 0) or ``"brats"`` (a 5-class head over
            the BraTS labels 0-4; whole-tumour Dice is still the headline, per-class Dice is added).
        epochs: passes over the training slices.
        max_steps: stop after this many optimiser steps (``None``: no limit).
        max_seconds: stop training after this many seconds and evaluate what was learnt (``None``: no limit).
        batch_size: slices per step.
        lr: peak AdamW learning rate (warm-up, then cosine decay; the core Trainer).
        roi_size: training crop size.
        intensity_aug: training intensity augmentation, a key of :data:`INTENSITY_AUG`.
        crop_pos_neg: ``(pos, neg)`` weights of training crops centred on a lesion pixel vs a
            background pixel (MONAI ``RandCropByPosNegLabeld``; ``(2, 1)``: two thirds of the crops
            centred on lesion, ``(1, 1)``: balanced, ``(0, 1)``: background centres only).
        max_slices_per_case: training slices per patient (``None``: every brain slice).
        eval_slices: held-out slices scored per patient (``None``: every slice of the volume).
        device: ``"cpu"``, ``"cuda"``...
        amp: ``None``, ``"bf16"`` or ``"fp16"``.
        num_workers: DataLoader workers.
        seed: everything random derives from it.
        progress: show a tqdm progress bar.
        resume: continue from ``out_dir/train/checkpoint`` if it exists.
        threshold: foreground probability threshold of the binary head.
        threshold_cv: choose ``threshold`` from ``cv_thresholds`` by cross-validation over the
            training patients before the final training (:mod:`vlsdk_medical.threshold_cv`;
            one extra training per training patient). The held-out patients are not used.
        cv_thresholds: the candidate thresholds of ``threshold_cv``.
        sw_overlap: sliding-window overlap fraction in [0, 1).
        sw_mode: sliding-window blending, ``"gaussian"`` or ``"constant"``.
        tta: test-time augmentation, ``"none"`` or ``"flip"`` (mean over the 4 in-plane flips).
        postprocess: ``"none"``, ``"mask"`` (brain mask), ``"lcc"`` (largest 3D connected
            component) or ``"mask+lcc"``; metrics are reported before and after.
        min_component_mm3: with ``lcc``: drop components smaller than this (mm³) instead of
            keeping only the largest (``None``: largest only).
    """

    data_root: str = str(DEFAULT_DATA)
    out_dir: str = "runs/medical_lesion"
    quick: bool = False
    train_splits: Sequence[str] = ("train", "validation")
    eval_splits: Sequence[str] = ("test",)
    exclude_cases: Sequence[str] = ()
    held_out: Sequence[str] = ()
    modalities: Sequence[str] = ("flair", "t1c")
    context_slices: int = 0
    model: str = "small"
    lesion_expert: bool = True
    classes: str = "whole"
    epochs: int = 80
    max_steps: int | None = None
    max_seconds: float | None = None
    batch_size: int = 16
    lr: float = 1e-3
    roi_size: int = 128
    intensity_aug: str = "light"
    crop_pos_neg: tuple[float, float] = (2.0, 1.0)
    max_slices_per_case: int | None = None
    eval_slices: int | None = None
    device: str = "cpu"
    amp: str | None = None
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    resume: bool = False
    threshold: float = 0.5
    threshold_cv: bool = False
    cv_thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    sw_overlap: float = 0.25
    sw_mode: str = "gaussian"
    tta: str = "none"
    postprocess: str = "mask+lcc"
    min_component_mm3: float | None = None

    def resolved(self) -> LesionTrainConfig:
        """The config with the ``quick`` presets filled in and the arguments checked."""
        cfg = LesionTrainConfig(**asdict(self))
        if cfg.quick:
            cfg.train_splits, cfg.model = ("train",), "tiny"
            cfg.max_steps = 6 if self.max_steps is None else self.max_steps
            cfg.batch_size = min(cfg.batch_size, 4)
            cfg.roi_size = min(cfg.roi_size, 96)
            cfg.max_slices_per_case = cfg.max_slices_per_case or 12
            cfg.eval_slices = cfg.eval_slices or 8
            cfg.epochs = 1
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.roi_size < 16 or cfg.lr <= 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1, roi_size >= 16, lr > 0; got {cfg}")
        if cfg.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {cfg.amp!r}")
        pos_neg = tuple(float(w) for w in cfg.crop_pos_neg)
        if len(pos_neg) != 2 or min(pos_neg) < 0 or sum(pos_neg) <= 0:
            raise ValueError(f"crop_pos_neg must be (pos, neg) >= 0, not both 0, got {cfg.crop_pos_neg!r}")
        cfg.crop_pos_neg = pos_neg
        if not isinstance(cfg.context_slices, int) or cfg.context_slices < 0:
            raise ValueError(f"context_slices must be an int >= 0, got {cfg.context_slices!r}")
        if cfg.held_out:  # every other patient trains; the held-out ones are excluded from it
            cfg.held_out = (cfg.held_out,) if isinstance(cfg.held_out, str) else tuple(cfg.held_out)
            cfg.train_splits, cfg.eval_splits = ("train", "validation", "test"), ()
            cfg.exclude_cases = tuple(dict.fromkeys((*cfg.exclude_cases, *cfg.held_out)))
        if cfg.intensity_aug not in INTENSITY_AUG:
            raise ValueError(f"intensity_aug must be one of {sorted(INTENSITY_AUG)}, got {cfg.intensity_aug!r}")
        if cfg.classes not in ("whole", "brats"):
            raise ValueError(f"classes must be 'whole' or 'brats', got {cfg.classes!r}")
        if not 0.0 < cfg.threshold < 1.0 or not 0.0 <= cfg.sw_overlap < 1.0:
            raise ValueError(f"need 0 < threshold < 1 and 0 <= sw_overlap < 1, got {cfg.threshold}, {cfg.sw_overlap}")
        if cfg.threshold_cv and (cfg.classes != "whole" or not cfg.cv_thresholds
                                 or not all(0.0 < t < 1.0 for t in cfg.cv_thresholds)):
            raise ValueError(f"threshold_cv needs classes='whole' and cv_thresholds in (0, 1), got classes="
                             f"{cfg.classes!r}, cv_thresholds={cfg.cv_thresholds}")
        if cfg.sw_mode not in ("gaussian", "constant") or cfg.tta not in ("none", "flip"):
            raise ValueError(f"sw_mode must be 'gaussian'/'constant' and tta 'none'/'flip', got {cfg.sw_mode!r}, "
                             f"{cfg.tta!r}")
        from vlsdk_medical.postprocess import parse_postprocess

        parse_postprocess(cfg.postprocess)
        if cfg.min_component_mm3 is not None and not cfg.min_component_mm3 > 0:
            raise ValueError(f"min_component_mm3 must be > 0 or None, got {cfg.min_component_mm3}")
        if set(cfg.train_splits) & set(cfg.eval_splits):
            raise ValueError(f"train_splits {cfg.train_splits} and eval_splits {cfg.eval_splits} overlap")
        return cfg


def lesion_loss(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``loss_fn(model, batch)`` for :class:`vlsdk.train.Trainer`: BCE + soft Dice of the ``lesion`` head.

    The Trainer adds the MoE load-balancing and z-losses itself; logits are scored in float32.

    Args:
        model: a ``VLModel`` with the binary segmentation head ``lesion``.
        batch: a :func:`~vlsdk_medical.dataset.collate_samples` batch on the device.
    """
    from vlsdk.heads.segmentation import SegmentationOutput

    out = model(batch["image"], heads=["lesion"])
    head = model.heads["lesion"]
    return head.loss(SegmentationOutput(out["lesion"].logits.float()), batch["label"][:, 0].long())


def train_lesion_segmenter(config: LesionTrainConfig) -> dict[str, Any]:
    """Train, evaluate on the held-out patients, save the model and the overlay PNG.

    Args:
        config: the settings.

    Returns:
        ``{"dice": {patient: value}, "dice_mean", "hd95": {...}, "hd95_mean"`` (after
        post-processing), ``"before": {the same before post-processing}, "postprocess",
        "inference", "model_dir", "overlay", "steps", "train_cases", "eval_cases", "seconds"}``
        (also written to ``out_dir/results.json``).
    """
    from vlsdk_medical.inference import record_input

    cfg = config.resolved()
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # fail before training, not after
        raise ImportError('the overlay PNG needs matplotlib: pip install "vlsdk[plot]"')
    start = time.perf_counter()
    cv = None
    if cfg.threshold_cv:
        from vlsdk_medical.threshold_cv import cross_validate_threshold

        cv = cross_validate_threshold(cfg)
        cfg.threshold = cv["threshold"]
    out_dir = Path(cfg.out_dir)
    trainer, train_cases = fit_lesion_model(cfg)
    model, step, device = trainer.model, trainer.step, trainer.device
    if trainer.rank != 0:  # under torchrun only rank 0 evaluates and writes
        return {"steps": step}

    model_dir = model.save_pretrained(out_dir / "model")
    record_input(model_dir, cfg.modalities, cfg.context_slices, [c.case_id for c in train_cases])
    results = _report(model, cfg, device, out_dir)
    results.update({"model_dir": str(model_dir), "steps": step, "threshold_cv": cv,
                    "train_cases": [c.case_id for c in train_cases], "seconds": time.perf_counter() - start})
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def fit_lesion_model(cfg: LesionTrainConfig, label: str = "train") -> tuple[Any, list[Any]]:
    """Build the lesion segmenter of ``cfg`` and train it on ``cfg.train_splits`` (less ``cfg.exclude_cases``).

    Seeded with ``cfg.seed`` here, so every call with the same config trains the same model.

    Args:
        cfg: a :meth:`LesionTrainConfig.resolved` config; checkpoints go to ``<out_dir>/train``.
        label: the progress bar's label.

    Returns:
        ``(trainer, train_cases)``: the fitted :class:`vlsdk.train.Trainer` (``trainer.model``,
        ``trainer.step``, ``trainer.device``, ``trainer.rank``) and the patients trained on.
    """
    import vlsdk
    from vlsdk.train import TrainConfig, Trainer
    from vlsdk_medical.dataset import collate_samples

    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_set, total = lesion_train_set(cfg)
    model = vlsdk.VLModel(cfg.model, in_chans=train_set.num_channels)
    model.add_head("lesion", task="segmentation", num_classes=1 if cfg.classes == "whole" else 5)
    if cfg.lesion_expert and model.moe_layers:
        model.add_expert("medical.lesion", init_bias=0.0)
    train_config = TrainConfig(
        steps=max(total, 1), batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=1e-4,
        warmup_steps=max(1, total // 20), amp={None: "off"}.get(cfg.amp, cfg.amp), device=cfg.device,
        num_workers=cfg.num_workers, seed=cfg.seed, out_dir=str(out_dir / "train"), progress=cfg.progress,
        log_every=max(1, min(10, total // 4)), clip_grad=1.0, max_seconds=cfg.max_seconds,
        progress_label=label)
    trainer = Trainer(model, lesion_loss, train_set, train_config, collate_fn=collate_samples)
    trainer.fit(resume=cfg.resume and (out_dir / "train" / "checkpoint").is_dir())
    return trainer, train_set.cases


def evaluate_saved_model(model_dir: str | Path, config: LesionTrainConfig) -> dict[str, Any]:
    """Evaluate a ``save_pretrained`` model on the held-out patients with ``config``'s inference options.

    No training: the way to compare thresholds, sliding-window settings, flip TTA and
    post-processing on one trained model. Writes ``out_dir/results.json`` and the overlay.
    The input is the one the model was trained with: ``context_slices`` (and the modalities)
    come from the model's ``config.json`` when it records them.

    Args:
        model_dir: a :func:`train_lesion_segmenter` ``<out>/model`` folder.
        config: the settings (data, eval splits, ``roi_size`` and the inference options).

    Returns:
        The :func:`train_lesion_segmenter` results without the training entries.

    Raises:
        ValueError: ``config`` asks for another ``context_slices`` or other modalities than the
            model records, or the model's ``in_chans`` does not fit the input.
    """
    import vlsdk
    from vlsdk_medical.inference import check_input_channels, recorded_input

    cfg = config.resolved()
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"no saved model folder {model_dir}")
    start = time.perf_counter()
    recorded = recorded_input(model_dir)
    if recorded is not None:
        saved_n, saved_mods = int(recorded["context_slices"]), recorded.get("modalities")
        if cfg.context_slices not in (0, saved_n):
            raise ValueError(f"{model_dir} was trained with context_slices={saved_n}, not {cfg.context_slices}")
        if saved_mods is not None and list(saved_mods) != list(cfg.modalities):
            raise ValueError(f"{model_dir} was trained on modalities {list(saved_mods)}, not {list(cfg.modalities)}")
        cfg.context_slices = saved_n
        trained_on = set(recorded.get("train_cases") or ()) & {c.case_id for c in held_out_cases(cfg)}
        if trained_on:
            warnings.warn(f"{model_dir} was trained on {sorted(trained_on)}: its Dice there is not a held-out "
                          "figure (pass --held-out with the patient it was trained without)", stacklevel=2)
    model = vlsdk.VLModel.from_pretrained(model_dir).to(cfg.device)
    check_input_channels(model, len(cfg.modalities), cfg.context_slices)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _report(model, cfg, torch.device(cfg.device), out_dir)
    results.update({"model_dir": str(model_dir), "seconds": time.perf_counter() - start})
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def _report(model: torch.nn.Module, cfg: LesionTrainConfig, device: str | torch.device, out_dir: Path
            ) -> dict[str, Any]:
    """Evaluate, print before/after per patient, write the overlay; the results' evaluation entries."""
    evaluated = evaluate_held_out(model, cfg, device)
    eval_cases, shown, before = evaluated["eval_cases"], evaluated["shown"], evaluated["before"]
    for case in eval_cases:
        cid = case.case_id
        print(f"held-out patient {cid}: whole-tumour Dice {evaluated['dice'][cid]:.4f}  HD95 "
              f"{evaluated['hd95'][cid]:.2f} mm  ({len(shown[cid][3])} slices; postprocess "
              f"{cfg.postprocess}; before: Dice {before['dice'][cid]:.4f}  HD95 {before['hd95'][cid]:.2f} mm)")
        o, o0 = evaluated["overlap"][cid], before["overlap"][cid]
        print(f"  precision / recall / predicted:true volume {o['precision']:.3f} / {o['recall']:.3f} / "
              f"{o['volume_ratio']:.2f} (before postprocess {o0['precision']:.3f} / {o0['recall']:.3f} / "
              f"{o0['volume_ratio']:.2f})")
    print(f"mean Dice over {len(eval_cases)} held-out patient(s): {evaluated['dice_mean']:.4f} "
          f"(before postprocess {before['dice_mean']:.4f})")
    first = eval_cases[0].case_id
    overlay = write_overlay(out_dir / "overlay.png", *shown[first][:3], title=first,
                            slice_ids=shown[first][3].tolist())
    return {
        **{k: evaluated[k] for k in ("dice", "dice_mean", "hd95", "hd95_mean", "overlap", "dice_per_class", "before",
                                     "postprocess", "inference", "brain_mask")},
        "overlay": str(overlay), "eval_cases": [c.case_id for c in eval_cases],
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }


def _label_options(cfg: LesionTrainConfig) -> dict[str, Any]:
    return ({"label_mode": "binary"} if cfg.classes == "whole" else
            {"label_mode": "multiclass", "label_values": (0, 1, 2, 3, 4)})


def lesion_train_set(cfg: LesionTrainConfig) -> tuple[Any, int]:
    """The augmented training slices of ``cfg.train_splits`` and the number of optimiser steps.

    Args:
        cfg: a :meth:`LesionTrainConfig.resolved` config.

    Returns:
        ``(train_set, steps)``: a :class:`~vlsdk_medical.dataset.LesionSliceDataset` whose
        ``repeats`` cover ``steps`` global batches with fresh crops, and ``epochs`` passes capped
        by ``max_steps``. Under ``torchrun`` (joined here) a step is ``batch_size`` per rank, so
        N ranks take 1/N of the steps of one for the same epochs.
    """
    from vlsdk.train.distributed import init_from_env
    from vlsdk_medical.dataset import LesionSliceDataset, find_brats_cases

    if cfg.held_out:
        held_out_cases(cfg)  # an unknown name fails here, named as held_out
    train_cases = find_brats_cases(cfg.data_root, cfg.train_splits, cfg.modalities)
    unknown = sorted(set(cfg.exclude_cases) - {c.case_id for c in train_cases})
    if unknown:
        raise ValueError(f"exclude_cases {unknown} are not patients of the training splits {list(cfg.train_splits)}")
    train_cases = [c for c in train_cases if c.case_id not in set(cfg.exclude_cases)]
    if not train_cases:
        raise ValueError(f"exclude_cases {list(cfg.exclude_cases)} leave no training patient")
    train_set = LesionSliceDataset(train_cases, roi_size=cfg.roi_size, seed=cfg.seed, **_label_options(cfg),
                                   max_slices_per_case=cfg.max_slices_per_case, context_slices=cfg.context_slices,
                                   transform_options={"pos": cfg.crop_pos_neg[0], "neg": cfg.crop_pos_neg[1],
                                                      **INTENSITY_AUG[cfg.intensity_aug]})
    n, global_batch = len(train_set), cfg.batch_size * init_from_env(cfg.device)[1]  # per rank x ranks (torchrun)
    total = cfg.epochs * math.ceil(n / global_batch)
    total = total if cfg.max_steps is None else min(cfg.max_steps, total)
    # each repeat of a slice gets its own augmentation stream: fresh crops on every visit
    train_set.repeats = max(1, math.ceil(total * global_batch / n))
    return train_set, total


def held_out_cases(cfg: LesionTrainConfig) -> list[Any]:
    """The patients ``cfg`` evaluates on: ``cfg.held_out`` if given, else those of ``cfg.eval_splits``.

    Args:
        cfg: a :meth:`LesionTrainConfig.resolved` config.

    Raises:
        ValueError: a ``held_out`` name that is no patient of the data folder.
    """
    from vlsdk_medical.dataset import find_brats_cases

    if not cfg.held_out:
        return find_brats_cases(cfg.data_root, cfg.eval_splits, cfg.modalities)
    cases = find_brats_cases(cfg.data_root, None, cfg.modalities)
    unknown = sorted(set(cfg.held_out) - {c.case_id for c in cases})
    if unknown:
        raise ValueError(f"held_out {unknown} are not patients under {cfg.data_root}; "
                         f"patients: {[c.case_id for c in cases]}")
    return [c for c in cases if c.case_id in set(cfg.held_out)]


@torch.no_grad()
def evaluate_held_out(model: torch.nn.Module, cfg: LesionTrainConfig, device: str | torch.device,
                      head: str = "lesion") -> dict[str, Any]:
    """Whole-tumour Dice and HD95 of ``model`` on the held-out patients (:func:`held_out_cases`).

    Full slices, sliding-window inference (``cfg.sw_overlap``, ``cfg.sw_mode``, ``cfg.tta``),
    ``cfg.threshold`` (binary head) or argmax, then ``cfg.postprocess`` per patient volume (see
    the module doc). The same predictions are scored before and after post-processing. Each
    slice is fed with ``cfg.context_slices`` neighbours on each side, as in training.

    Args:
        model: a ``VLModel`` with the segmentation head ``head`` (put in eval mode here).
        cfg: a :meth:`LesionTrainConfig.resolved` config (``eval_slices``, ``roi_size``, ``amp``...).
        device: where to run the model.
        head: the segmentation head.

    Returns:
        ``{"dice": {patient: value}, "dice_mean", "hd95", "hd95_mean", "overlap": {patient:
        {"precision", "recall", "volume_ratio"}}, "dice_per_class"`` (after post-processing; whole
        tumour, ``volume_ratio`` = predicted / true volume), ``"before": {"dice", "dice_mean",
        "hd95", "hd95_mean", "overlap"}, "postprocess",
        "inference", "brain_mask": {patient: source}, "eval_cases", "shown": {patient: (images,
        whole, pred, slice_ids)}}`` (``images``: the slices' own channels, without context).

    Raises:
        ValueError: the model's ``in_chans`` does not fit the modalities and ``cfg.context_slices``.
    """
    from vlsdk_medical.inference import centre_channels
    from vlsdk_medical.metrics import CaseDice, CaseHD95

    eval_cases = held_out_cases(cfg)
    after, before = (CaseDice(2), CaseHD95(2)), (CaseDice(2), CaseHD95(2))  # whole tumour: label > 0
    class_dice = CaseDice(5) if cfg.classes == "brats" else None
    shown: dict[str, Any] = {}
    sources: dict[str, str] = {}
    overlap: dict[str, dict[str, dict[str, float]]] = {"after": {}, "before": {}}
    for case, p in zip(eval_cases, predict_cases(model, cfg, device, eval_cases, head), strict=True):
        ks, images, labels, spacing = p.slices, p.images, p.labels, p.spacing
        sources[case.case_id] = p.brain_source
        raw = p.raw_labels(cfg.threshold)
        classes = p.postprocessed(raw, cfg)
        if class_dice is not None:
            class_dice.update(classes, labels, cases=[case.case_id] * len(ks))
        whole = (labels > 0).long()
        for (dice, hd95), pred in ((before, (raw > 0).long()), (after, (classes > 0).long())):
            dice.update(pred, whole, cases=[case.case_id] * len(ks), spacing=spacing)
            hd95.update(pred, whole, cases=[case.case_id] * len(ks), spacing=spacing)
        for key, pred in (("before", raw > 0), ("after", classes > 0)):
            overlap[key][case.case_id] = _overlap(pred, whole > 0)
        own = images[:, centre_channels(len(cfg.modalities), cfg.context_slices)]  # (S, C, X, Y)
        shown[case.case_id] = (own, whole, (classes > 0).long(), ks)
    (d, h), (d0, h0) = (m.compute() for m in after), (m.compute() for m in before)
    return {"dice": d["per_case"], "dice_mean": d["mean"], "hd95": h["per_case"], "hd95_mean": h["mean"],
            "overlap": overlap["after"],
            "dice_per_class": None if class_dice is None else class_dice.compute()["per_class"],
            "before": {"dice": d0["per_case"], "dice_mean": d0["mean"], "hd95": h0["per_case"],
                       "hd95_mean": h0["mean"], "overlap": overlap["before"]},
            "postprocess": cfg.postprocess if cfg.min_component_mm3 is None
            else f"{cfg.postprocess} (components >= {cfg.min_component_mm3} mm3)",
            "inference": {"threshold": cfg.threshold, "sw_overlap": cfg.sw_overlap, "sw_mode": cfg.sw_mode,
                          "tta": cfg.tta},
            "brain_mask": sources, "eval_cases": eval_cases, "shown": shown}


@dataclass
class CasePrediction:
    """One held-out case's sliding-window probabilities, ready to threshold and post-process.

    Attributes:
        slices: the volume slice indices scored, ``(S,)``.
        images: the model input of those slices, ``(S, C * (2 * context_slices + 1), X, Y)``.
        labels: ground-truth labels, ``(S, X, Y)``.
        probs: foreground (binary head) or class probabilities, ``(S, 1 or K, X, Y)`` on the CPU.
        spacing: voxel size in mm (the slice step scaled when only a subset of slices is scored).
        brain: the brain mask of the scored slices, ``(X, Y, S)``.
        brain_source: where the mask came from (file or ``"foreground"``).
    """

    slices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor
    spacing: list[float]
    brain: torch.Tensor
    brain_source: str

    def raw_labels(self, threshold: float) -> torch.Tensor:
        """``(S, X, Y)`` labels: foreground probability above ``threshold``, or the argmax class."""
        return (self.probs[:, 0] > threshold).long() if self.probs.shape[1] == 1 else self.probs.argmax(1)

    def postprocessed(self, raw: torch.Tensor, cfg: LesionTrainConfig) -> torch.Tensor:
        """``raw`` after ``cfg.postprocess``, applied to the ``(X, Y, S)`` volume (components are 3D)."""
        from vlsdk_medical.postprocess import postprocess_labels

        return postprocess_labels(raw.movedim(0, -1), cfg.postprocess, brain=self.brain,
                                  min_size=cfg.min_component_mm3, spacing=self.spacing).movedim(-1, 0)


def predict_cases(model: torch.nn.Module, cfg: LesionTrainConfig, device: str | torch.device,
                  cases: Sequence[Any], head: str = "lesion") -> Iterator[CasePrediction]:
    """Sliding-window predictions of ``cases``' slices (``cfg.eval_slices``, ``cfg.tta``...), one case at a time.

    Args:
        model: a ``VLModel`` with the segmentation head ``head`` (put in eval mode here).
        cfg: a :meth:`LesionTrainConfig.resolved` config.
        device: where to run the model.
        cases: ``LesionCase`` objects (:func:`~vlsdk_medical.dataset.find_brats_cases`).
        head: the segmentation head.

    Raises:
        ValueError: the model's ``in_chans`` does not fit the modalities and ``cfg.context_slices``.
    """
    from vlsdk_medical.dataset import LesionSliceDataset
    from vlsdk_medical.inference import check_input_channels, model_predictor, predict_slices
    from vlsdk_medical.postprocess import case_brain_mask

    if hasattr(model, "config"):
        check_input_channels(model, len(cfg.modalities), cfg.context_slices)
    model.eval()
    # full mode scores every slice of the volume; quick mode a few brain slices
    slices = "all" if cfg.eval_slices is None else "foreground"
    eval_set = LesionSliceDataset(list(cases), transform=None, slices=slices, max_slices_per_case=cfg.eval_slices,
                                  seed=cfg.seed, context_slices=cfg.context_slices, **_label_options(cfg))
    predictor = model_predictor(model, head, cfg.tta)
    for ci, case in enumerate(eval_set.cases):
        ks = torch.tensor([k for c, k in eval_set.index if c == ci])
        images = eval_set.slice_images(ci, ks)
        with torch.no_grad():
            probs = predict_slices(predictor, images, cfg.roi_size, sw_batch_size=32, overlap=cfg.sw_overlap,
                                   mode=cfg.sw_mode, device=device, amp=cfg.amp).cpu()
        spacing = list(eval_set.spacings[ci])
        if len(ks) > 1:  # a subset of slices (quick mode) is about evenly spaced: scale the slice step
            spacing[2] *= float(ks.diff().float().median())
        brain, source = case_brain_mask(case, eval_set.images[ci])
        yield CasePrediction(ks, images, eval_set.labels[ci].index_select(3, ks)[0].movedim(2, 0).long(), probs,
                             spacing, brain.index_select(2, ks), source)


def _overlap(pred: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Voxel precision, recall and predicted / true volume of two boolean masks (NaN where undefined)."""
    tp, npred, ntrue = int((pred & true).sum()), int(pred.sum()), int(true.sum())
    return {"precision": tp / npred if npred else math.nan, "recall": tp / ntrue if ntrue else math.nan,
            "volume_ratio": npred / ntrue if ntrue else math.nan}


def write_overlay(path: str | Path, images: torch.Tensor, labels: torch.Tensor, pred: torch.Tensor, *,
                  num: int = 4, title: str = "", slice_ids: Sequence[int] | None = None,
                  panel: str = "slice") -> Path:
    """PNG of the ``num`` slices with most lesion: image, ground truth (green), prediction (red).

    Args:
        path: the PNG file.
        images: ``(S, C, X, Y)`` slices (channel 0 is shown).
        labels: ``(S, X, Y)`` ground truth.
        pred: ``(S, X, Y)`` prediction.
        num: slices to show.
        title: figure title.
        slice_ids: the volume slice index of each slice, for the panel titles.
        panel: the panel title's word (``"slice 12"``; ``"image"`` for 2D images).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not images.shape[0] == labels.shape[0] == pred.shape[0]:
        raise ValueError("images, labels and pred need the same number of slices")
    order = labels.flatten(1).sum(1).argsort(descending=True)[: max(1, num)]
    fig, axes = plt.subplots(1, len(order), figsize=(3 * len(order), 3.2), squeeze=False)
    for ax, i in zip(axes[0], order.tolist(), strict=True):
        # (X, Y) RAS -> show with anterior up and patient right on the left (radiological view)
        ax.imshow(images[i, 0].T.flip(0).numpy(), cmap="gray")
        for mask, colour in ((labels[i], "lime"), (pred[i], "red")):
            m = mask.T.flip(0).float().numpy()
            if m.any():
                ax.contour(m, levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(f"{panel} {slice_ids[i] if slice_ids is not None else i}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{title}  green: ground truth, red: prediction", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the pipeline's command-line options to ``parser``.

    Args:
        parser: an ``argparse`` parser (the example's or the ``vlsdk`` subcommand's).
    """
    d = LesionTrainConfig()
    parser.add_argument("--data", default=d.data_root, help="brats_lesion_mri folder")
    parser.add_argument("--out", default=d.out_dir, help="output folder (model, results.json, overlay.png)")
    parser.add_argument("--quick", action="store_true", help="CI mode: a few steps on a few slices")
    parser.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1...")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (GPU)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop training after this many seconds, then evaluate (a time-boxed GPU run)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--roi-size", type=int, default=d.roi_size)
    parser.add_argument("--crop-pos-neg", type=_pos_neg, default=d.crop_pos_neg, metavar="POS:NEG",
                        help="training crops centred on lesion vs background pixels (default 2:1; 1:1 balanced)")
    parser.add_argument("--intensity-aug", choices=sorted(INTENSITY_AUG), default=d.intensity_aug,
                        help="training intensity augmentation: light (+-10 %%) or strong (nnU-Net ranges, gamma)")
    parser.add_argument("--model", default=d.model, help="backbone config: tiny, edge, small, base")
    parser.add_argument("--modalities", default=",".join(d.modalities), help="flair,t1c or flair")
    parser.add_argument("--context-slices", type=int, default=d.context_slices, metavar="N",
                        help="2.5D input: also feed the N slices below and above each slice of every modality "
                             "as channels (0: the slice alone; --eval-model uses what the model records)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers (default: 0 on CPU, up to 8 on a GPU)")
    parser.add_argument("--no-lesion-expert", action="store_true", help="leave out the medical.lesion expert")
    parser.add_argument("--classes", choices=["whole", "brats"], default=d.classes,
                        help="binary whole tumour, or a 5-class head over the BraTS labels")
    parser.add_argument("--held-out", default=None, metavar="CASE[,CASE]",
                        help="evaluate on these patients and train on all the others (leave-one-patient-out); "
                             "default: train on the train and validation splits (train only with --quick), "
                             "evaluate on test")
    parser.add_argument("--eval-slices", type=int, default=None, help="slices per held-out patient (default all)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/train/checkpoint")
    from vlsdk_medical.postprocess import POSTPROCESS_MODES

    parser.add_argument("--postprocess", choices=POSTPROCESS_MODES, default=d.postprocess,
                        help="per held-out volume: restrict to the brain mask, keep the largest 3D connected "
                             "component (Dice/HD95 reported before and after)")
    parser.add_argument("--min-component-mm3", type=float, default=None,
                        help="with lcc: drop components smaller than this (mm3) instead of keeping the largest")
    parser.add_argument("--threshold", type=float, default=d.threshold, help="foreground probability threshold")
    parser.add_argument("--threshold-cv", action="store_true",
                        help="choose the threshold by cross-validation over the training patients (one extra "
                             "training per training patient), then train on all of them")
    parser.add_argument("--sw-overlap", type=float, default=d.sw_overlap, help="sliding-window overlap in [0, 1)")
    parser.add_argument("--sw-mode", choices=["gaussian", "constant"], default=d.sw_mode,
                        help="sliding-window blending")
    parser.add_argument("--tta", choices=["none", "flip"], default=d.tta,
                        help="test-time augmentation: mean over the 4 in-plane flips")
    parser.add_argument("--eval-model", default=None,
                        help="skip training: evaluate this saved model folder (<out>/model) with the options")


def _pos_neg(text: str) -> tuple[float, float]:
    """``"2:1"`` -> ``(2.0, 1.0)`` for ``--crop-pos-neg``."""
    try:
        pos, neg = (float(w) for w in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected POS:NEG (e.g. 2:1), got {text!r}") from None
    if min(pos, neg) < 0 or pos + neg <= 0:
        raise argparse.ArgumentTypeError(f"POS and NEG must be >= 0 and not both 0, got {text!r}")
    return pos, neg


def run_from_args(args: argparse.Namespace) -> int:
    """Run the pipeline from parsed :func:`add_arguments` options; returns the exit status.

    Args:
        args: the parsed options.
    """
    if not Path(args.data).is_dir():
        print(f"error: BraTS data folder {args.data} not found (pass --data)")
        return 2
    cfg = LesionTrainConfig(
        data_root=args.data, out_dir=args.out, quick=args.quick, device=args.device, amp=args.amp,
        epochs=args.epochs, max_steps=args.max_steps, max_seconds=args.max_seconds, batch_size=args.batch_size,
        lr=args.lr,
        roi_size=args.roi_size, intensity_aug=args.intensity_aug, crop_pos_neg=args.crop_pos_neg, model=args.model,
        modalities=tuple(args.modalities.split(",")),
        context_slices=args.context_slices,
        num_workers=args.num_workers if args.num_workers is not None else (
            0 if args.device == "cpu" or args.quick else min(8, os.cpu_count() or 1)),
        lesion_expert=not args.no_lesion_expert, classes=args.classes, eval_slices=args.eval_slices,
        seed=args.seed, progress=not args.no_progress, resume=args.resume, postprocess=args.postprocess,
        min_component_mm3=args.min_component_mm3, threshold=args.threshold,
        threshold_cv=args.threshold_cv, sw_overlap=args.sw_overlap,
        held_out=tuple(c.strip() for c in (args.held_out or "").split(",") if c.strip()),
        sw_mode=args.sw_mode, tta=args.tta)
    if args.eval_model is not None:
        if args.threshold_cv:
            print("error: --threshold-cv trains the fold models; it does not go with --eval-model")
            return 2
        results = evaluate_saved_model(args.eval_model, cfg)
        print(f"results in {Path(cfg.out_dir) / 'results.json'}; overlay {results['overlay']}; "
              f"{results['seconds']:.1f} s")
        return 0
    results = train_lesion_segmenter(cfg)
    if "model_dir" not in results:  # a non-zero torchrun rank: rank 0 reports
        return 0
    print(f"model saved to {results['model_dir']}; overlay {results['overlay']}; "
          f"{results['steps']} steps in {results['seconds']:.1f} s")
    return 0

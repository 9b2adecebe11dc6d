"""The foreground threshold chosen by cross-validation over the training patients (``--threshold-cv``).

A binary lesion head thresholds its foreground probability at 0.5 by default. A model trained on
three patients is not calibrated for a fourth: on BraTS it calls a rim of FLAIR-bright tissue
around the held-out tumour lesion and predicts 1.4x the true volume. The threshold is a choice
to be made on training data, not on the held-out patients, so it is cross-validated, the way
nnU-Net chooses its post-processing (on BraTS every fold preferred 0.5: see ``BENCHMARKS.md``):

1. for each training patient, a model is trained on the other training patients with the same
   settings and predicts the left-out patient once;
2. Dice after post-processing is scored at every candidate threshold (one prediction, several
   thresholds);
3. the threshold with the best mean Dice over the folds is kept (ties: the lowest), and the final
   model, trained on every training patient, is evaluated on the held-out patients with it.

Example:
    >>> cfg = LesionTrainConfig(data_root="../shared/data/brats_lesion_mri", threshold_cv=True)
    >>> train_lesion_segmenter(cfg)["threshold_cv"]["threshold"]                 # doctest: +SKIP
    0.5
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vlsdk_medical.pipeline import LesionTrainConfig

__all__ = ["cross_validate_threshold", "pick_threshold", "threshold_dice"]


def threshold_dice(model: torch.nn.Module, cfg: LesionTrainConfig, device: str | torch.device,
                   cases: Sequence[Any], thresholds: Sequence[float]) -> dict[str, dict[float, float]]:
    """Whole-lesion Dice of each case at each threshold, after ``cfg.postprocess``, from one prediction.

    Scored like :func:`~vlsdk_medical.pipeline.evaluate_held_out` (MONAI Dice over the case's
    stacked slices): at ``cfg.threshold`` the two agree.

    Args:
        model: a ``VLModel`` with the binary segmentation head ``lesion``.
        cfg: a resolved :class:`~vlsdk_medical.pipeline.LesionTrainConfig` (inference options).
        device: where to run the model.
        cases: the patients to score (``LesionCase``).
        thresholds: candidate foreground probability thresholds.

    Returns:
        ``{case_id: {threshold: dice}}``.
    """
    from vlsdk_medical.metrics import CaseDice
    from vlsdk_medical.pipeline import predict_cases

    table: dict[str, dict[float, float]] = {}
    for case, p in zip(cases, predict_cases(model, cfg, device, cases), strict=True):
        if p.probs.shape[1] != 1:
            raise ValueError(f"threshold_dice needs a binary head, got {p.probs.shape[1]} output channels")
        whole = (p.labels > 0).long()
        table[case.case_id] = {}
        for t in thresholds:
            dice = CaseDice(2)
            pred = (p.postprocessed(p.raw_labels(t), cfg) > 0).long()
            dice.update(pred, whole, cases=[case.case_id] * len(p.slices), spacing=p.spacing)
            table[case.case_id][float(t)] = float(dice.compute()["per_case"][case.case_id])
    return table


def pick_threshold(table: Mapping[str, Mapping[float, float]]) -> tuple[float, dict[float, float]]:
    """The threshold with the best mean Dice over the cases of ``table`` (ties: the lowest).

    Args:
        table: ``{case_id: {threshold: dice}}`` with the same thresholds for every case (NaN
            Dice, a case without lesion, is left out of that threshold's mean).

    Returns:
        ``(threshold, {threshold: mean dice})``.
    """
    if not table:
        raise ValueError("pick_threshold needs at least one case")
    thresholds = sorted(next(iter(table.values())))
    if any(sorted(row) != thresholds for row in table.values()):
        raise ValueError(f"every case needs the same thresholds, got {[sorted(r) for r in table.values()]}")
    means = {}
    for t in thresholds:
        scores = [row[t] for row in table.values() if not math.isnan(row[t])]
        means[t] = sum(scores) / len(scores) if scores else math.nan
    scored = [t for t in thresholds if not math.isnan(means[t])]
    if not scored:
        raise ValueError("no case has a lesion: Dice is undefined at every threshold")
    return max(scored, key=lambda t: (means[t], -t)), means


def cross_validate_threshold(cfg: LesionTrainConfig) -> dict[str, Any]:
    """Leave-one-patient-out over ``cfg``'s training patients: the threshold for the final model.

    Each fold trains with ``cfg``'s settings under ``<out_dir>/cv/<patient>``; fold models are
    not saved.

    Args:
        cfg: a resolved :class:`~vlsdk_medical.pipeline.LesionTrainConfig` with at least two
            training patients; ``cfg.cv_thresholds`` are the candidates.

    Returns:
        ``{"threshold", "mean": {threshold: mean dice}, "folds": {patient: {threshold: dice}},
        "seconds"}``.

    Raises:
        ValueError: fewer than two training patients.
    """
    from vlsdk_medical.dataset import find_brats_cases
    from vlsdk_medical.pipeline import fit_lesion_model

    start = time.perf_counter()
    cases = [c for c in find_brats_cases(cfg.data_root, cfg.train_splits, cfg.modalities)
             if c.case_id not in set(cfg.exclude_cases)]
    if len(cases) < 2:
        raise ValueError(f"threshold cross-validation needs >= 2 training patients, got {[c.case_id for c in cases]}")
    folds: dict[str, dict[float, float]] = {}
    for i, case in enumerate(cases):
        fold = dataclasses.replace(cfg, exclude_cases=(*cfg.exclude_cases, case.case_id), threshold_cv=False,
                                   out_dir=str(Path(cfg.out_dir) / "cv" / case.case_id), resume=False)
        trainer, _ = fit_lesion_model(fold, label=f"fold {i + 1}/{len(cases)}")
        folds.update(threshold_dice(trainer.model, fold, trainer.device, [case], cfg.cv_thresholds))
        row = "  ".join(f"{t:g}: {d:.4f}" for t, d in folds[case.case_id].items())
        print(f"threshold cv, fold {i + 1}/{len(cases)} ({case.case_id} left out): Dice {row}")
    threshold, means = pick_threshold(folds)
    print(f"threshold cv: {threshold:g} (mean Dice over {len(cases)} folds "
          + "  ".join(f"{t:g}: {d:.4f}" for t, d in means.items()) + ")")
    return {"threshold": threshold, "mean": means, "folds": folds, "seconds": time.perf_counter() - start}

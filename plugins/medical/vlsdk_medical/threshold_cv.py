"""The foreground threshold chosen by cross-validation over the training patients (``--threshold-cv``).

A binary lesion head thresholds its foreground probability at 0.5 by default. A model trained on
three patients is not calibrated for a fourth: on BraTS it calls a rim of FLAIR-bright tissue
around the held-out tumour lesion and predicts 1.4x the true volume. The threshold is a choice
to be made on training data, not on the held-out patients, so it is cross-validated, the way
nnU-Net chooses its post-processing (on BraTS every fold preferred 0.5: see ``BENCHMARKS.md``):

1. for each training patient, the task runner trains a model on the other training patients with
   the same settings (under ``<out>/cv/<patient>``) and predicts the left-out patient once;
2. Dice after post-processing is scored at every candidate threshold (one prediction, several
   thresholds: the task's ``extra_thresholds``);
3. the threshold with the best mean Dice over the folds is kept (ties: the lowest); the final
   model, trained on every training patient, is then evaluated on the held-out patients with it.

Example:
    >>> from vlsdk_medical.task import LesionTask
    >>> task = LesionTask()
    >>> cv = cross_validate_threshold(task, task.settings(data="../shared/data/brats_lesion_mri"),
    ...                               [0.5, 0.7, 0.9])                                # doctest: +SKIP
    >>> cv["threshold"]                                                               # doctest: +SKIP
    0.5
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlsdk_medical.lesion_settings import LesionSettings
    from vlsdk_medical.task import LesionTask

__all__ = ["cross_validate_threshold", "fold_settings", "pick_threshold"]


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


def fold_settings(settings: LesionSettings, patient: str, thresholds: Sequence[float]) -> LesionSettings:
    """The settings of the fold that leaves ``patient`` out.

    The fold trains on the other training patients of ``settings`` (never on its held-out ones),
    scores ``patient`` at every threshold and writes under ``<out>/cv/<patient>``.

    Args:
        settings: the task settings of the final model.
        patient: one of its training patients.
        thresholds: the candidate thresholds.

    Raises:
        ValueError: ``patient`` is no training patient of ``settings``.
    """
    from vlsdk_medical.dataset import find_brats_cases
    from vlsdk_medical.task import train_cases

    trained = {c.case_id for c in train_cases(settings)}
    if patient not in trained:
        raise ValueError(f"{patient} is no training patient of these settings: {sorted(trained)}")
    every = {c.case_id for c in find_brats_cases(settings.data, None, settings.modalities)}
    return dataclasses.replace(settings, held_out=[patient], exclude_cases=sorted(every - trained), draw=0,
                               out=settings.out / "cv" / patient, extra_thresholds=[float(t) for t in thresholds])


def cross_validate_threshold(task: LesionTask, settings: LesionSettings, thresholds: Sequence[float]
                             ) -> dict[str, Any]:
    """Leave-one-patient-out over the training patients of ``settings``: the threshold for the final model.

    Each fold is a full run of the task runner (:func:`vlsdk.tasks.train`) on :func:`fold_settings`.

    Args:
        task: the lesion task.
        settings: the settings of the final model (at least two training patients).
        thresholds: the candidate thresholds, each in (0, 1).

    Returns:
        ``{"threshold", "mean": {threshold: mean dice}, "folds": {patient: {threshold: dice}}, "seconds"}``.

    Raises:
        ValueError: fewer than two training patients, a multi-class head, or thresholds outside (0, 1).
    """
    from vlsdk.tasks.runner import train
    from vlsdk_medical.task import train_cases

    start = time.perf_counter()
    if settings.classes != "whole" or not thresholds or not all(0.0 < t < 1.0 for t in thresholds):
        raise ValueError(f"threshold_cv needs classes='whole' and thresholds in (0, 1), got classes="
                         f"{settings.classes!r}, thresholds={list(thresholds)}")
    cases = [c.case_id for c in train_cases(settings)]
    if len(cases) < 2:
        raise ValueError(f"threshold cross-validation needs >= 2 training patients, got {cases}")
    folds: dict[str, dict[float, float]] = {}
    for i, case in enumerate(cases):
        result = train(task, fold_settings(settings, case, thresholds))
        if not result.metrics:  # a rank other than 0 under torchrun: rank 0 scores the folds
            continue
        folds[case] = {float(t): float(d[case]) for t, d in result.metrics["dice_at"].items()}
        row = "  ".join(f"{t:g}: {d:.4f}" for t, d in folds[case].items())
        print(f"threshold cv, fold {i + 1}/{len(cases)} ({case} left out): Dice {row}")
    if not folds:
        return {"threshold": None, "mean": {}, "folds": {}, "seconds": time.perf_counter() - start}
    threshold, means = pick_threshold(folds)
    print(f"threshold cv: {threshold:g} (mean Dice over {len(cases)} folds "
          + "  ".join(f"{t:g}: {d:.4f}" for t, d in means.items()) + ")")
    return {"threshold": threshold, "mean": means, "folds": folds, "seconds": time.perf_counter() - start}

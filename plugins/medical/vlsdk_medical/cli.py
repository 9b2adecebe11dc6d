"""``vlsdk`` subcommands of the medical plugin: ``medical-lesion`` and ``dicom-info``.

``vlsdk medical-lesion`` is the ``medical.lesion`` task (:mod:`vlsdk_medical.task`) with the flags
of the pipeline it replaced (kept for this release): they map onto the task's settings, and the run
goes through the task runner (:func:`vlsdk.tasks.train`). ``--threshold-cv`` first runs the
threshold cross-validation folds (:mod:`vlsdk_medical.threshold_cv`); ``--eval-model DIR``
evaluates a saved model with the inference flags instead of training. The same run, configured by
file: ``vlsdk train examples/configs/medical_lesion.yaml data=DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["CV_THRESHOLDS", "add_arguments", "configure_dicom_info", "evaluate_saved_model", "run_dicom_info",
           "run_from_args", "settings_from_args"]

#: The candidate thresholds of ``--threshold-cv``.
CV_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vlsdk medical-lesion`` options to ``parser`` (the example's or the subcommand's).

    Args:
        parser: an ``argparse`` parser.
    """
    from vlsdk_medical.lesion_settings import INTENSITY_AUG, LesionSettings
    from vlsdk_medical.postprocess import POSTPROCESS_MODES

    d = LesionSettings()
    add = parser.add_argument
    add("--data", default=None, help="brats_lesion_mri folder (required)")
    add("--out", default=str(d.out), help="output folder (model/, metrics.json, predictions.png, report/)")
    add("--quick", action="store_true", help="CI mode: a few steps on a few slices")
    add("--device", default="cpu", help="cpu, cuda, cuda:1, auto...")
    add("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (GPU)")
    add("--epochs", type=int, default=d.epochs)
    add("--max-steps", type=int, default=None)
    add("--max-seconds", type=float, default=None,
        help="stop training after this many seconds, then evaluate (a time-boxed GPU run)")
    add("--batch-size", type=int, default=d.batch_size)
    add("--lr", type=float, default=d.lr)
    add("--roi-size", type=int, default=d.roi_size)
    add("--crop-pos-neg", type=_pos_neg, default=d.crop_pos_neg, metavar="POS:NEG",
        help="training crops centred on lesion vs background pixels (default 2:1; 1:1 balanced)")
    add("--intensity-aug", choices=sorted(INTENSITY_AUG), default=d.intensity_aug,
        help="training intensity augmentation: light (+-10 %%) or strong (nnU-Net ranges, gamma)")
    add("--model", default=d.model, help="backbone config: tiny, edge, small, base")
    add("--modalities", default=",".join(d.modalities), help="flair,t1c or flair")
    add("--context-slices", type=int, default=d.context_slices, metavar="N",
        help="2.5D input: also feed the N slices below and above each slice of every modality as channels "
             "(0: the slice alone; --eval-model uses what the model records)")
    add("--num-workers", type=int, default=None, help="DataLoader workers (default: 0 on CPU, up to 8 on a GPU)")
    add("--no-lesion-expert", action="store_true", help="leave out the medical.lesion expert")
    add("--classes", choices=["whole", "brats"], default=d.classes,
        help="binary whole tumour, or a 5-class head over the BraTS labels")
    add("--held-out", default=None, metavar="CASE[,CASE]",
        help="evaluate on these patients and train on all the others (leave-one-patient-out); default: train on "
             "the train and validation splits (train only with --quick), evaluate on test")
    add("--eval-slices", type=int, default=None, help="slices per held-out patient (default all)")
    add("--seed", type=int, default=d.seed)
    add("--no-progress", action="store_true")
    add("--resume", action="store_true", help="continue from <out>/train/checkpoint (exactly: same data order)")
    add("--postprocess", choices=POSTPROCESS_MODES, default=d.postprocess,
        help="per held-out volume: restrict to the brain mask, keep the largest 3D connected component "
             "(Dice/HD95 reported before and after)")
    add("--min-component-mm3", type=float, default=None,
        help="with lcc: drop components smaller than this (mm3) instead of keeping the largest")
    add("--threshold", type=float, default=d.threshold, help="foreground probability threshold")
    add("--threshold-cv", action="store_true",
        help="choose the threshold by cross-validation over the training patients (one extra training per "
             "training patient), then train on all of them")
    add("--sw-overlap", type=float, default=d.sw_overlap, help="sliding-window overlap in [0, 1)")
    add("--sw-mode", choices=["gaussian", "constant"], default=d.sw_mode, help="sliding-window blending")
    add("--tta", choices=["none", "flip"], default=d.tta, help="test-time augmentation: mean over the 4 in-plane flips")
    add("--eval-model", default=None,
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


def settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~vlsdk_medical.lesion_settings.LesionSettings` of parsed :func:`add_arguments` options.

    ``--quick`` keeps its meaning: the training split alone, ``tiny``, 6 steps (unless
    ``--max-steps``), batch <= 4, crops <= 96, 12 slices per training and 8 per held-out patient.

    Raises:
        ValueError: a value out of range, naming the setting.
    """
    from vlsdk_medical.task import LesionTask

    workers = args.num_workers if args.num_workers is not None else (
        0 if args.device == "cpu" or args.quick else min(8, os.cpu_count() or 1))
    values: dict[str, Any] = {
        "data": args.data, "out": args.out, "device": args.device, "precision": args.amp or "off",
        "epochs": args.epochs, "max_steps": args.max_steps, "max_seconds": args.max_seconds,
        "batch_size": args.batch_size, "lr": args.lr, "roi_size": args.roi_size, "crop_pos_neg": args.crop_pos_neg,
        "intensity_aug": args.intensity_aug, "model": args.model, "modalities": args.modalities.split(","),
        "context_slices": args.context_slices, "num_workers": workers, "classes": args.classes,
        "experts": [] if args.no_lesion_expert else ["medical.lesion"], "eval_slices": args.eval_slices,
        "held_out": [c.strip() for c in (args.held_out or "").split(",") if c.strip()], "seed": args.seed,
        "progress": not args.no_progress, "postprocess": args.postprocess, "threshold": args.threshold,
        "min_component_mm3": args.min_component_mm3, "sw_overlap": args.sw_overlap, "sw_mode": args.sw_mode,
        "tta": args.tta, "resume": args.resume}
    if args.quick:
        values.update(train_splits=["train"], model="tiny", epochs=1, max_slices_per_case=12,
                      max_steps=6 if args.max_steps is None else args.max_steps,
                      batch_size=min(args.batch_size, 4), roi_size=min(args.roi_size, 96),
                      eval_slices=args.eval_slices or 8)
    return LesionTask().settings(**values)


def evaluate_saved_model(model_dir: str | Path, settings: Any) -> dict[str, Any]:
    """Evaluate a saved lesion model on the held-out patients of ``settings``, with its inference options.

    No training: the way to compare thresholds, sliding-window settings, flip TTA and post-processing
    on one trained model. The input is the one the model was trained with: ``context_slices`` (and
    the modalities) come from the model's recorded input. Writes ``<out>/metrics.json`` and
    ``<out>/predictions.png``.

    Args:
        model_dir: a saved model folder (``<out>/model``).
        settings: the task settings (data, held-out patients, ``roi_size`` and the inference options).

    Returns:
        ``{"metrics", "settings", "model", "predictions_png", "seconds"}``.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: other ``context_slices`` or modalities than the model records, or an ``in_chans``
            that does not fit the input.
    """
    import torch

    import vlsdk
    from vlsdk.tasks.runner import jsonable
    from vlsdk_medical.inference import recorded_input
    from vlsdk_medical.task import LesionTask, held_out_cases

    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"no saved model folder {model_dir}")
    start = time.perf_counter()
    recorded = recorded_input(model_dir)
    if recorded is not None:
        saved_n, saved_mods = int(recorded["context_slices"]), recorded.get("modalities")
        if settings.context_slices not in (0, saved_n):
            raise ValueError(f"{model_dir} was trained with context_slices={saved_n}, not {settings.context_slices}")
        if saved_mods is not None and list(saved_mods) != list(settings.modalities):
            raise ValueError(f"{model_dir} was trained on modalities {list(saved_mods)}, not {settings.modalities}")
        settings = dataclasses.replace(settings, context_slices=saved_n)
        trained_on = set(recorded.get("train_cases") or ()) & {c.case_id for c in held_out_cases(settings)}
        if trained_on:
            warnings.warn(f"{model_dir} was trained on {sorted(trained_on)}: its Dice there is not a held-out "
                          "figure (pass --held-out with the patient it was trained without)", stacklevel=2)
    from vlsdk.tasks.runner import resolve_device

    model = vlsdk.VLModel.from_pretrained(model_dir, map_location=resolve_device(settings.device))
    task = LesionTask()
    data = task.datasets(settings, "val")
    with torch.no_grad():
        metrics = task.evaluate(model.eval(), data, settings)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    picture = task.render(model, data, settings, out / "predictions.png") if settings.draw else None
    summary = {"metrics": metrics, "settings": dataclasses.asdict(settings), "model": str(model_dir),
               "predictions_png": None if picture is None else str(picture), "seconds": time.perf_counter() - start}
    (out / "metrics.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n", encoding="utf-8")
    return summary


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``vlsdk medical-lesion`` from parsed :func:`add_arguments` options; returns the exit status.

    Args:
        args: the parsed options.
    """
    from vlsdk.tasks.runner import train
    from vlsdk_medical.task import LesionTask

    if args.data is None or not Path(args.data).is_dir():
        print(f"error: BraTS data folder {args.data} not found: pass --data DIR (a brats_lesion_mri folder)")
        return 2
    if args.threshold_cv and args.eval_model is not None:
        print("error: --threshold-cv trains the fold models; it does not go with --eval-model")
        return 2
    try:
        settings = settings_from_args(args)
        if args.eval_model is not None:
            summary = evaluate_saved_model(args.eval_model, settings)
            print(LesionTask().describe(summary["metrics"]))
            print(f"results in {settings.out / 'metrics.json'}; overlay {summary['predictions_png']}; "
                  f"{summary['seconds']:.1f} s")
            return 0
        task, cv = LesionTask(), None
        if args.threshold_cv:
            from vlsdk_medical.threshold_cv import cross_validate_threshold

            cv = cross_validate_threshold(task, settings, CV_THRESHOLDS)
            if cv["threshold"] is not None:
                settings = dataclasses.replace(settings, threshold=cv["threshold"])
        result = train(task, settings)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    if result.model_dir is None:  # a non-zero torchrun rank: rank 0 reports
        return 0
    if cv is not None:
        from vlsdk.tasks.runner import jsonable

        (settings.out / "threshold_cv.json").write_text(json.dumps(jsonable(cv), indent=2) + "\n", encoding="utf-8")
    print(f"model saved to {result.model_dir}; overlay {settings.out / 'predictions.png'}; "
          f"{result.steps} steps in {result.seconds:.1f} s")
    return 0


def configure_dicom_info(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vlsdk dicom-info``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("path", help="a DICOM file or series folder")
    parser.add_argument("--series-uid", default=None, help="series to load when the folder holds several")
    parser.add_argument("--seg", default=None, help="a DICOM SEG file to place on the series")


def run_dicom_info(args: argparse.Namespace) -> int:
    """Print geometry, value range and skipped files of a DICOM file or series (exit 1 on a bad input).

    Args:
        args: parsed :func:`configure_dicom_info` options.
    """
    from pathlib import Path

    from vlsdk_medical.dicom import DicomError, DicomSkipWarning, list_dicom_series, load_dicom, load_dicom_seg

    try:
        if Path(args.path).is_dir() and args.series_uid is None:
            series = list_dicom_series(args.path)
            if len(series) > 1:
                for uid, files in series.items():
                    print(f"series {uid or '<no SeriesInstanceUID>'}: {len(files)} file(s)")
                print("several series: choose one with --series-uid")
                return 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DicomSkipWarning)
            options = {"series_uid": args.series_uid} if args.series_uid else {}
            vol = load_dicom(args.path, **options)
        print(vol.summary())
        print(f"values {float(vol.array.min()):.1f} .. {float(vol.array.max()):.1f}"
              f"{' (rescaled)' if vol.rescaled else ''}; affine ({vol.space}):")
        for row in vol.affine:
            print("  " + " ".join(f"{v:10.4f}" for v in row))
        if args.seg:
            seg = load_dicom_seg(args.seg, vol)
            for n, label, mask in zip(seg.segment_numbers, seg.segment_labels, seg.masks, strict=True):
                print(f"segment {n} {label!r}: {int(mask.sum())} voxels on {int(mask.any((0, 1)).sum())} slice(s)")
    except DicomError as exc:
        print(f"error: {exc}")
        return 1
    return 0

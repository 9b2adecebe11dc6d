"""The official nuScenes detection evaluation (mAP, NDS, mATE/mASE/mAOE/mAVE/mAAE) of a submission.

:func:`detection_eval` scores a submission JSON (:mod:`vlsdk_driving.submission`) with
``nuscenes.eval.detection.evaluate.DetectionEval`` and the ``detection_cvpr_2019`` config. The
devkit evaluates a split of scenes: a predefined one (``mini_train`` holds the real keyframe's
scene-0061) or a custom split of ``<version>/splits.json``, which the synthetic writer fills
(split ``synthetic``); :func:`resolve_eval_set` picks the split holding every scene of the tables.

``DetectionEval`` loads ground truth with the devkit's nuScenes category names, measures distance
from the ``LIDAR_TOP`` ego pose, looks up every ``prev``/``next`` link and cannot score a submission
without boxes. Where a dataset needs otherwise (a category map for another fleet's names, another
LiDAR channel, dangling links, records skipped under ``on_error="skip"``, no split holding its
scenes, no predicted box), the evaluator loads the same ground truth records
through the dataset, then runs the devkit's own ``filter_eval_boxes`` and the inherited
``DetectionEval.evaluate`` (``accumulate``, ``calc_ap``, ``calc_tp``, ``DetectionMetrics``). The
result says which evaluator ran (``"evaluator"``) and why.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk_driving.sample import Boxes3D

if TYPE_CHECKING:
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.data_classes import DetectionConfig, DetectionMetrics

    from vlsdk_driving.nuscenes_adapter import NuScenesDataset

__all__ = ["TP_NAMES", "resolve_eval_set", "ground_truth_boxes", "detection_eval",
           "evaluate_predictions", "format_nds_summary", "report_devkit_evaluation"]

#: The devkit's TP error names -> the short names of the nuScenes leaderboard.
TP_NAMES: dict[str, str] = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE",
                            "attr_err": "mAAE"}
_VERSION_SPLITS = {"mini": ("mini_train", "mini_val"), "trainval": ("train", "val"), "test": ("test",)}


def resolve_eval_set(dataset: NuScenesDataset) -> str | None:
    """The devkit split holding every scene of ``dataset``'s tables, or ``None``.

    Predefined splits of the table version come first (``v1.0-mini``: ``mini_train``, ``mini_val``),
    then the custom splits of ``<version>/splits.json``.

    Args:
        dataset: the dataset.
    """
    from nuscenes.utils.splits import create_splits_scenes

    names = {s["name"] for s in dataset.nusc.scene}
    predefined = create_splits_scenes()
    for split in _VERSION_SPLITS.get(dataset.version.rsplit("-", 1)[-1], ()):
        if names <= set(predefined[split]):
            return split
    custom = dataset.table_root / "splits.json"
    if custom.is_file():
        for split, scenes in json.loads(custom.read_text()).items():
            if split not in predefined and isinstance(scenes, list) and names <= set(scenes):
                return split
    return None


def ground_truth_boxes(dataset: NuScenesDataset, sample_tokens: Sequence[str]) -> EvalBoxes:
    """The ground-truth ``DetectionBox`` es of samples, read as the devkit's ``load_gt`` does, through the dataset.

    Categories go through the dataset's category map, velocities through its
    :meth:`~vlsdk_driving.nuscenes_adapter.NuScenesDataset.box_velocity` (NaN for dangling links);
    annotations skipped by the dataset (non-finite, non-positive size) are left out; attribute names
    the devkit does not know (another fleet's) become ``""`` (not scored).

    Args:
        dataset: the dataset.
        sample_tokens: the samples.
    """
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES
    from nuscenes.eval.detection.data_classes import DetectionBox

    attribute_map = {a["token"]: a["name"] for a in dataset.nusc.attribute}
    out = EvalBoxes()
    for token in sample_tokens:
        boxes = []
        for ann_token in dataset.get("sample", token)["anns"]:
            ann = dataset.get("sample_annotation", ann_token, f"sample {token}")
            name = dataset.detection_name(ann["category_name"])
            if name is None or not dataset.is_usable_annotation(ann_token) or min(ann["size"]) <= 0:
                continue
            attrs = [attribute_map.get(a, "") for a in ann["attribute_tokens"]]
            attribute = attrs[0] if len(attrs) == 1 and attrs[0] in ATTRIBUTE_NAMES else ""
            boxes.append(DetectionBox(
                sample_token=token, translation=tuple(ann["translation"]), size=tuple(ann["size"]),
                rotation=tuple(ann["rotation"]), velocity=tuple(dataset.box_velocity(ann_token)[:2].tolist()),
                num_pts=int(ann["num_lidar_pts"] + ann["num_radar_pts"]), detection_name=name,
                detection_score=-1.0, attribute_name=attribute))
        out.add_boxes(token, boxes)
    return out


def _add_center_dist(dataset: NuScenesDataset, boxes: EvalBoxes) -> None:
    """``ego_translation`` of each box from its sample's LiDAR keyframe ego pose (the devkit's ``add_center_dist``)."""
    for token in boxes.sample_tokens:
        sd = dataset.get("sample_data", dataset.lidar_token(token), f"sample {token}")
        ego = dataset.get("ego_pose", sd["ego_pose_token"], f"sample_data {sd['token']}")["translation"]
        for box in boxes[token]:
            box.ego_translation = tuple(float(b - e) for b, e in zip(box.translation, ego, strict=True))


def _dataset_detection_eval(dataset: NuScenesDataset, config: DetectionConfig, result_path: Path,
                            sample_tokens: Sequence[str], output_dir: Path) -> Any:
    """A ``DetectionEval`` whose predictions and ground truth the dataset loaded (its ``evaluate`` unchanged)."""
    from nuscenes.eval.common.loaders import filter_eval_boxes, load_prediction_of_sample_tokens
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.evaluate import DetectionEval

    class _Eval(DetectionEval):
        def __init__(self) -> None:  # DetectionEval's own __init__ loads through nuScenes names and LIDAR_TOP
            self.nusc, self.cfg, self.verbose = dataset.nusc, config, False
            self.result_path, self.eval_set, self.output_dir = str(result_path), None, str(output_dir)
            self.plot_dir = os.path.join(self.output_dir, "plots")
            self.pred_boxes, self.meta = load_prediction_of_sample_tokens(
                str(result_path), config.max_boxes_per_sample, DetectionBox, sample_tokens=list(sample_tokens))
            self.gt_boxes = ground_truth_boxes(dataset, sample_tokens)
            for boxes in (self.pred_boxes, self.gt_boxes):
                _add_center_dist(dataset, boxes)
                if boxes.all:  # the devkit's filter cannot tell the box type of an empty set
                    filter_eval_boxes(self.nusc, boxes, config.class_range)
            self.sample_tokens = self.gt_boxes.sample_tokens

    return _Eval()


def _why_not_official(dataset: NuScenesDataset, eval_set: str | None, n_pred: int) -> str:
    reasons = [
        (dataset.category_map is not None, "a category map"),
        (dataset.lidar_channel != "LIDAR_TOP", f"LiDAR channel {dataset.lidar_channel} (the devkit uses LIDAR_TOP)"),
        (any(t == "sample_annotation" for t, _, _ in dataset.dangling_links), "dangling annotation links"),
        (len(dataset.sample_tokens) != len(dataset.nusc.sample) or bool(dataset._bad_annotations),
         "records skipped under on_error='skip'"),
        (eval_set is None, "no devkit split holds every scene"),
        (n_pred == 0, "no predicted box"),
    ]
    return ", ".join(why for cond, why in reasons if cond)


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN -> ``None``, float keys -> strings."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _summary(metrics: DetectionMetrics, gt: EvalBoxes, pred: EvalBoxes) -> dict[str, Any]:
    errors = metrics.tp_errors
    class_ap = {c: float(v) for c, v in metrics.mean_dist_aps.items()}
    present = sorted({b.detection_name for b in gt.all})
    out: dict[str, Any] = {"mAP": metrics.mean_ap, "NDS": metrics.nd_score}
    out.update({short: errors[name] for name, short in TP_NAMES.items()})
    out.update({
        "class_ap": class_ap,
        "mAP_classes_with_gt": sum(class_ap[c] for c in present) / len(present) if present else 0.0,
        "label_aps": {c: {str(th): float(ap) for th, ap in d.items()} for c, d in metrics._label_aps.items()},
        "label_tp_errors": {c: dict(d) for c, d in metrics._label_tp_errors.items()},
        "num_gt": {c: sum(b.detection_name == c for b in gt.all) for c in present},
        "num_pred": len(pred.all),
    })
    return _clean(out)


def detection_eval(dataset: NuScenesDataset, result_path: str | Path, output_dir: str | Path, *,
                   eval_set: str | None = None, config: DetectionConfig | None = None) -> dict[str, Any]:
    """mAP, NDS and the TP errors of a submission JSON, by the devkit's ``DetectionEval``.

    Writes ``<output_dir>/metrics_summary.json`` (the devkit's ``DetectionMetrics.serialize()``).

    Args:
        dataset: the dataset whose samples were predicted (every sample of the split must be in
            the submission, as ``DetectionEval`` requires).
        result_path: the submission JSON.
        output_dir: where the devkit writes.
        eval_set: the devkit split (default: :func:`resolve_eval_set`; with none, every sample
            of ``dataset``).
        config: the detection config (default ``detection_cvpr_2019``).

    Returns:
        ``{"mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "class_ap", "mAP_classes_with_gt",
        "label_aps", "label_tp_errors", "num_gt", "num_pred", "eval_set", "evaluator", "samples"}``;
        ``mAP`` averages the 10 classes as the devkit does (a class without ground truth scores 0),
        ``mAP_classes_with_gt`` only those with ground truth. NaN (an undefined error) is ``None``.

    Raises:
        FileNotFoundError: no submission file.
        ValueError: the submission misses samples of the split or breaks the format (the
            devkit's check, named with the file), or the split has no ground-truth box.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    result_path, output_dir = Path(result_path), Path(output_dir)
    if not result_path.is_file():
        raise FileNotFoundError(f"nuScenes submission not found: {result_path}")
    config = config or config_factory("detection_cvpr_2019")
    results = json.loads(result_path.read_text()).get("results")
    if not isinstance(results, dict):
        raise ValueError(f"{result_path}: expected a 'results' object {{sample_token: [boxes]}}")
    eval_set = eval_set or resolve_eval_set(dataset)
    tokens = list(dataset.sample_tokens)
    missing = [t for t in tokens if t not in results]
    if missing:
        raise ValueError(f"{result_path}: {len(missing)} sample(s) of {dataset.table_root} have no entry in "
                         f"'results' (first: {missing[0]}); DetectionEval needs every sample, [] for none")
    n_pred = sum(len(results[t]) for t in tokens)
    why = _why_not_official(dataset, eval_set, n_pred)
    try:
        if not why:
            evaluator = DetectionEval(dataset.nusc, config, str(result_path), eval_set, str(output_dir),
                                      verbose=False)
        else:
            evaluator = _dataset_detection_eval(dataset, config, result_path, tokens, output_dir)
    except AssertionError as exc:  # the devkit checks the format with asserts
        raise ValueError(f"{result_path}: rejected by the nuScenes devkit: {exc}") from None
    if not evaluator.gt_boxes.all:
        raise ValueError(f"{dataset.table_root}: no ground-truth box of a detection class within the class ranges "
                         f"in {len(tokens)} sample(s); nothing to score")
    metrics, _ = evaluator.evaluate()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics_summary.json").write_text(json.dumps(_clean(metrics.serialize()), indent=2))
    summary = _summary(metrics, evaluator.gt_boxes, evaluator.pred_boxes)
    summary.update({"eval_set": eval_set, "samples": len(evaluator.sample_tokens),
                    "evaluator": "DetectionEval" if not why else
                    f"DetectionEval.evaluate on boxes loaded through the dataset ({why})"})
    return summary


def evaluate_predictions(dataset: NuScenesDataset, predictions: Mapping[str, Boxes3D], output_dir: str | Path,
                         *, eval_set: str | None = None) -> dict[str, Any]:
    """Write ``<output_dir>/submission.json`` from LiDAR-frame predictions and score it (:func:`detection_eval`).

    Args:
        dataset: the dataset the predictions are for.
        predictions: sample token -> predicted boxes in that sample's LiDAR frame.
        output_dir: the folder for the submission and the devkit's output.
        eval_set: the devkit split (default: :func:`resolve_eval_set`).
    """
    from vlsdk_driving.submission import build_submission, write_submission

    output_dir = Path(output_dir)
    path = write_submission(build_submission(dataset, predictions), output_dir / "submission.json")
    result = detection_eval(dataset, path, output_dir, eval_set=eval_set)
    result["submission"] = str(path)
    return result


def format_nds_summary(result: Mapping[str, Any], title: str = "") -> str:
    """The headline numbers of :func:`detection_eval` as text, with per-class AP.

    Args:
        result: what :func:`detection_eval` returned.
        title: a heading line.
    """
    def num(v: Any) -> str:
        return "  n/a" if v is None else f"{v:.3f}"

    lines = [title] if title else []
    lines.append(f"NDS {num(result['NDS'])}  mAP {num(result['mAP'])} (10 classes; "
                 f"{num(result['mAP_classes_with_gt'])} over classes with ground truth)  "
                 + "  ".join(f"{short} {num(result[short])}" for short in TP_NAMES.values()))
    lines += [f"  {c:<22} gt {result['num_gt'][c]:>4}  AP {num(result['class_ap'][c])}" for c in result["num_gt"]]
    lines.append(f"  evaluator: {result['evaluator']}; split {result['eval_set']}, {result['samples']} sample(s)")
    return "\n".join(lines)


def report_devkit_evaluation(dataset: NuScenesDataset, predictions: Sequence[Boxes3D], output_dir: str | Path,
                             title: str) -> dict[str, Any]:
    """Score per-sample predictions with :func:`evaluate_predictions`, print the summary and what the reader dropped.

    The entry point of ``vlsdk driving-detect``: a dataset the devkit cannot score (no ground
    truth in range) is reported as ``{"error": message}`` and printed, not raised, so the run
    still saves its model.

    Args:
        dataset: the dataset, in the order the predictions are.
        predictions: one :class:`Boxes3D` per sample of ``dataset`` (LiDAR frame).
        output_dir: the folder for ``submission.json`` and the devkit's output.
        title: the printed heading.
    """
    if len(predictions) != len(dataset):
        raise ValueError(f"got {len(predictions)} predictions for {len(dataset)} samples of {dataset.table_root}")
    extra: dict[str, Any] = {"dropped_categories": dict(dataset.dropped_categories),
                             "skipped": dict(dataset.skipped)}
    if dataset.dropped_categories:
        listed = ", ".join(f"{n} {c}" for n, c in dataset.dropped_categories.most_common())
        print(f"[driving] {dataset.table_root}: dropped annotations of unmapped categories: {listed}")
    try:
        result = evaluate_predictions(dataset, dict(zip(dataset.sample_tokens, predictions, strict=True)), output_dir)
    except ValueError as exc:
        print(f"[driving] {title}: not scored: {exc}")
        return {"error": str(exc), **extra}
    print(format_nds_summary(result, title))
    return {**result, **extra}

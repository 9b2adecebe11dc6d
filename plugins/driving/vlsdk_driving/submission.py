"""Predictions as the nuScenes detection submission JSON (global frame), the devkit's result format.

``{"meta": {"use_camera", "use_lidar", "use_radar", "use_map", "use_external"}, "results": {sample_token:
[{"sample_token", "translation", "size", "rotation", "velocity", "detection_name", "detection_score",
"attribute_name"}]}}``: ``translation`` in metres and ``rotation`` (quaternion ``w, x, y, z``) in the
global frame, ``size`` as ``w, l, h``, ``velocity`` ``vx, vy`` in m/s in the global frame. Boxes
predicted in a sample's LiDAR frame go through that keyframe's calibrated sensor and ego pose, the
transform the devkit's ``Box.rotate`` / ``Box.translate`` apply, here for all boxes of a sample at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlsdk_driving.sample import DETECTION_CLASSES, Boxes3D

if TYPE_CHECKING:
    from vlsdk_driving.nuscenes_adapter import NuScenesDataset

__all__ = ["LIDAR_ONLY_META", "boxes_to_global", "submission_entries", "build_submission", "write_submission"]

#: The submission's ``meta`` of a LiDAR-only detector.
LIDAR_ONLY_META: dict[str, bool] = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                                    "use_external": False}
#: Speed (m/s) above which a box gets the moving attribute (mmdetection3d's threshold).
_MOVING = 0.2
_ATTR_MOVING = {"car": "vehicle.moving", "truck": "vehicle.moving", "trailer": "vehicle.moving",
                "bus": "vehicle.moving", "construction_vehicle": "vehicle.moving", "bicycle": "cycle.with_rider",
                "motorcycle": "cycle.with_rider", "pedestrian": "pedestrian.moving"}
_ATTR_STILL = {"car": "vehicle.parked", "truck": "vehicle.parked", "trailer": "vehicle.parked",
               "bus": "vehicle.stopped", "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider",
               "motorcycle": "cycle.without_rider", "pedestrian": "pedestrian.standing"}


def _quat_mul(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Hamilton product ``q * r`` of quaternions ``(w, x, y, z)``, broadcast over leading axes."""
    w1, x1, y1, z1 = np.moveaxis(q, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(r, -1, 0)
    return np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], -1)


def boxes_to_global(boxes: Boxes3D, global_from_lidar: np.ndarray,
                    rotation: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres, orientations and velocities of LiDAR-frame boxes in the global frame.

    Args:
        boxes: boxes in the LiDAR frame (velocity ``None`` or NaN rows: 0 is written).
        global_from_lidar: ``(4, 4)`` global-from-LiDAR transform (ego pose @ calibrated sensor).
        rotation: the same rotation as a quaternion ``w, x, y, z`` (ego pose * calibrated sensor),
            composed with each box's yaw as ``Box.rotate`` does.

    Returns:
        ``translation (n, 3)``, ``rotation (n, 4)`` quaternions ``w, x, y, z``, ``velocity (n, 2)``.
    """
    t = np.asarray(global_from_lidar, dtype=np.float64)
    translation = boxes.centers @ t[:3, :3].T + t[:3, 3]
    half = boxes.yaw / 2
    yaw_q = np.stack([np.cos(half), np.zeros_like(half), np.zeros_like(half), np.sin(half)], -1)
    quats = _quat_mul(np.asarray(rotation, dtype=np.float64), yaw_q)
    vel = np.zeros((len(boxes), 3))
    if boxes.velocity is not None:
        vel[:, :2] = np.where(np.isfinite(boxes.velocity), boxes.velocity, 0.0)
    return translation, quats, (vel @ t[:3, :3].T)[:, :2]


def submission_entries(sample_token: str, boxes: Boxes3D, global_from_lidar: np.ndarray,
                       rotation: Sequence[float], max_boxes: int = 500) -> list[dict]:
    """The submission records of one sample's predicted boxes (the ``max_boxes`` best scored).

    Args:
        sample_token: the sample.
        boxes: predictions in the sample's LiDAR frame, with ``scores``.
        global_from_lidar: ``(4, 4)`` global-from-LiDAR transform.
        rotation: its rotation as a quaternion ``w, x, y, z``.
        max_boxes: the devkit's cap per sample (``detection_cvpr_2019``: 500).

    Raises:
        ValueError: boxes without scores, or a non-finite centre, size, yaw or score (the message
            names the sample, the box and the field).
    """
    if not len(boxes):
        return []
    if boxes.scores is None:
        raise ValueError(f"sample {sample_token}: predictions need scores for a submission")
    for field, values in (("centre/size/yaw", boxes.boxes), ("detection_score", boxes.scores[:, None])):
        bad = np.flatnonzero(~np.isfinite(values).all(1))
        if len(bad):
            raise ValueError(f"sample {sample_token}: predicted box {int(bad[0])} has a non-finite {field} "
                             f"{values[bad[0]].tolist()} ({len(bad)} such boxes); expected finite numbers")
    boxes = boxes.select(np.argsort(-boxes.scores, kind="stable")[:max_boxes])
    translation, quats, vel = boxes_to_global(boxes, global_from_lidar, rotation)
    size = boxes.lwh[:, [1, 0, 2]]
    names = np.array(DETECTION_CLASSES)[boxes.labels]
    moving = np.hypot(vel[:, 0], vel[:, 1]) > _MOVING
    attrs = [(_ATTR_MOVING if m else _ATTR_STILL).get(n, "") for n, m in zip(names.tolist(), moving, strict=True)]
    return [{"sample_token": sample_token, "translation": tr, "size": sz, "rotation": q, "velocity": v,
             "detection_name": n, "detection_score": sc, "attribute_name": a}
            for tr, sz, q, v, n, sc, a in zip(translation.tolist(), size.tolist(), quats.tolist(), vel.tolist(),
                                              names.tolist(), boxes.scores.tolist(), attrs, strict=True)]


def build_submission(dataset: NuScenesDataset, predictions: Mapping[str, Boxes3D],
                     meta: Mapping[str, bool] | None = None, max_boxes: int = 500) -> dict:
    """The submission dict of LiDAR-frame predictions for samples of ``dataset``.

    Args:
        dataset: the dataset the samples come from (ego poses and calibrations).
        predictions: sample token -> predicted boxes in that sample's LiDAR frame.
        meta: the ``meta`` block (default :data:`LIDAR_ONLY_META`).
        max_boxes: the devkit's cap per sample.

    Raises:
        ValueError: a sample token not in the dataset's tables, or non-finite predictions.
    """
    results = {}
    for token, boxes in predictions.items():
        matrix, rotation = dataset.global_from_lidar(token)
        results[token] = submission_entries(token, boxes, matrix, rotation, max_boxes)
    return {"meta": dict(LIDAR_ONLY_META if meta is None else meta), "results": results}


def write_submission(submission: Mapping, path: str | Path) -> Path:
    """Write a submission dict as JSON (the file ``DetectionEval`` reads).

    Args:
        submission: what :func:`build_submission` returned.
        path: the ``.json`` file (its folder is created).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(submission, allow_nan=False))
    return path

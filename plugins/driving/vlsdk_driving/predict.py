"""``vlsdk predict`` for LiDAR: a sweep in, 3D boxes in JSON and drawn over the BEV point cloud out.

:data:`POINT_CLOUD_READER` takes ``.pcd.bin`` (nuScenes), ``.bin`` (KITTI velodyne) and ``.npy``
``(N, F)`` point arrays for models of the ``driving.bev`` task (its ``task.json``) or saved by
:meth:`~vlsdk_driving.detector.BEVDetector.save` (a ``bev_encoder.json`` beside the weights) and turns them into the BEV pseudo-image with that
encoder; :data:`BEV_BOXES_WRITER` decodes the ``driving.bev_detection`` head into LiDAR-frame boxes,
lists them in ``predictions.json`` and draws them over the points (:func:`~vlsdk_driving.drawing.render_bev`).

Example::

    vlsdk predict sweep.pcd.bin --model runs/bev --out preds --score-threshold 0.3
    # preds/sweep.bev.png; predictions.json: boxes (x, y, z, l, w, h, yaw), classes, scores
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsdk.predict_io import HeadPrediction, InputReader, OutputWriter, PredictInput

__all__ = ["load_bev_encoder", "read_points", "read_point_cloud", "write_bev_boxes", "POINT_CLOUD_READER",
           "BEV_BOXES_WRITER", "POINT_CLOUD_KIND", "ENCODER_CONFIG"]

#: The reader's registered name (the inputs' ``kind``).
POINT_CLOUD_KIND = "driving.point_cloud"
#: The encoder settings :meth:`BEVDetector.save` writes beside the model.
ENCODER_CONFIG = "bev_encoder.json"
#: The registered task whose saved settings rebuild the encoder (``task.json``).
BEV_TASK = "driving.bev"


def _task_encoder(model_dir: Path) -> Any:
    """The encoder of a ``driving.bev`` task model, rebuilt from its saved settings; ``None`` for other folders."""
    from vlsdk.settings import settings_from
    from vlsdk.tasks.registry import get_task
    from vlsdk.tasks.runner import TASK_FILE

    path = model_dir / TASK_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("task") != BEV_TASK:
        return None
    task = get_task(BEV_TASK)
    return task.encoder(settings_from(task.settings_type, record.get("settings") or {}, str(path)))


def load_bev_encoder(model_dir: str | Path) -> Any:
    """The :class:`~vlsdk_driving.bev.PillarEncoder` of a detector: ``bev_encoder.json`` beside it, or the
    settings of a ``driving.bev`` task model (``task.json``).

    Raises:
        FileNotFoundError: neither file is there.
        ValueError: an unreadable ``task.json``, naming it and the setting.
    """
    from vlsdk_driving.bev import BEVGrid, PillarEncoder

    path = Path(model_dir) / ENCODER_CONFIG
    if not path.is_file():
        encoder = _task_encoder(Path(model_dir))
        if encoder is None:
            raise FileNotFoundError(f"{path} is missing: {model_dir} was neither saved by BEVDetector.save nor "
                                    "trained by the driving.bev task")
        return encoder
    cfg = json.loads(path.read_text(encoding="utf-8"))
    grid = BEVGrid(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.pop("grid").items()})
    return PillarEncoder(grid, **cfg)


def read_points(path: Path, fields: tuple[str, ...]) -> np.ndarray:
    """``(N, len(fields))`` float32 points from a ``.pcd.bin``, ``.bin`` or ``.npy`` file.

    ``.pcd.bin`` and ``.bin`` give ``x, y, z, intensity`` (nuScenes 5-float and KITTI 4-float
    records); an ``.npy`` array's columns are taken as ``fields`` in order. Columns the file lacks
    (``time_lag`` of a single sweep) are zero; rows with a non-finite coordinate are dropped.

    Raises:
        ValueError: an empty or truncated file, or an array that is not ``(N, >= 3)``.
    """
    from vlsdk_driving.kitti import read_kitti_velodyne
    from vlsdk_driving.nuscenes_adapter import read_lidar_file

    name = path.name.lower()
    if name.endswith(".pcd.bin"):
        points, have = read_lidar_file(path), ("x", "y", "z", "intensity")
    elif name.endswith(".bin"):
        points, have = read_kitti_velodyne(path), ("x", "y", "z", "intensity")
    else:
        points = np.load(path, allow_pickle=False)
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"{path}: expected an (N, F >= 3) point array (x, y, z, ...), got shape {points.shape}")
        have = tuple(fields[: points.shape[1]])
    out = np.zeros((len(points), len(fields)), np.float32)
    for j, f in enumerate(fields):
        if f in have:
            out[:, j] = points[:, have.index(f)]
    return out[np.isfinite(out[:, :3]).all(1)]


def _has_encoder(path: Path, model_dir: Path) -> bool:
    from vlsdk.tasks.runner import TASK_FILE

    if (Path(model_dir) / ENCODER_CONFIG).is_file():
        return True
    task_file = Path(model_dir) / TASK_FILE
    return task_file.is_file() and f'"{BEV_TASK}"' in task_file.read_text(encoding="utf-8")


def read_point_cloud(path: Path, model: Any, model_dir: Path) -> PredictInput:
    """A LiDAR sweep as the model's ``(1, C, H, W)`` BEV pseudo-image; ``meta`` keeps the points and grid."""
    encoder = load_bev_encoder(model_dir)
    points = read_points(path, tuple(encoder.point_fields))
    if encoder.out_channels != model.config.in_chans:
        raise ValueError(f"{model_dir}: the BEV encoder makes {encoder.out_channels} channels but the model takes "
                         f"{model.config.in_chans}")
    with torch.no_grad():
        bev = encoder([torch.from_numpy(points)])
    return PredictInput(path, bev, POINT_CLOUD_KIND, {"points": points, "grid": encoder.grid,
                                                      "point_fields": tuple(encoder.point_fields)})


def write_bev_boxes(prediction: HeadPrediction) -> dict[str, Any]:
    """Decode the boxes, draw them over the points (``<stem>.png``) and return them for ``predictions.json``.

    Returns:
        ``task``, ``frame`` (``"lidar"``), ``boxes`` (``(n, 7)`` ``x, y, z, l, w, h, yaw``, metres and
        radians), ``labels``, ``classes``, ``scores``, ``velocity`` (``(n, 2)`` or ``None``) and ``picture``.
    """
    from vlsdk_driving.drawing import render_bev
    from vlsdk_driving.sample import DETECTION_CLASSES, Boxes3D, DrivingSample

    threshold = prediction.options.get("score_threshold")
    boxes = prediction.head.decode(prediction.output(), score_threshold=threshold)[0]
    meta = prediction.input.meta
    sample = DrivingSample(prediction.input.path.name, meta["points"], Boxes3D(np.zeros((0, 7)), np.zeros(0)),
                           point_fields=meta["point_fields"], lidar_path=prediction.input.path, source="file")
    picture = render_bev(sample, boxes, prediction.out_dir / f"{prediction.stem}.png", meta["grid"],
                         title=f"{prediction.input.path.name}: {len(boxes)} boxes (score >= {threshold})")
    return {"task": prediction.task, "frame": "lidar", "boxes": boxes.boxes.tolist(), "labels": boxes.labels.tolist(),
            "classes": [DETECTION_CLASSES[i] for i in boxes.labels.tolist()],
            "scores": boxes.scores.tolist() if boxes.scores is not None else [],
            "velocity": boxes.velocity.tolist() if boxes.velocity is not None else None, "picture": str(picture)}


POINT_CLOUD_READER = InputReader(suffixes=(".pcd.bin", ".bin", ".npy"), read=read_point_cloud, applies=_has_encoder,
                                 description="LiDAR sweeps (.pcd.bin, KITTI .bin, (N, F) .npy) through the model's "
                                             "saved BEV encoder")
BEV_BOXES_WRITER = OutputWriter(task="driving.bev_detection", write=write_bev_boxes, inputs=(POINT_CLOUD_KIND,),
                                description="LiDAR-frame 3D boxes in JSON, drawn over the BEV point cloud")

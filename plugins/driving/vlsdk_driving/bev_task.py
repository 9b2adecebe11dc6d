"""``driving.bev``: LiDAR BEV 3D detection as a task of the runtime (:mod:`vlsdk.tasks`).

Training uses synthetic nuScenes-format scenes written by the registered synthesizer (``driving.scenes``,
into ``<out>/data/train``), or the samples of ``data`` with ``train_scenes=0``. Evaluation scores
held-out synthetic scenes (``<out>/data/test``) and the nuScenes-format folder ``data`` (read by the
registered adapter ``driving.nuscenes`` with the source settings ``version``, ``lidar_channel``,
``camera_channels``, ``category_map``) with the devkit's center-distance AP (registered metric
``driving.nuscenes_ap``) and, per folder, the devkit's ``DetectionEval`` on a submission JSON (mAP,
NDS). The primary metric ``car_ap_2m`` is the car AP at 2 m of the first evaluation set::

    vlsdk train examples/configs/driving_bev.yaml --quick data=../shared/data/nuscenes_mini
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vlsdk.tasks.components import build
from vlsdk.tasks.protocol import Task
from vlsdk.tasks.runner import model_device
from vlsdk.tasks.settings import RunSettings, help_field
from vlsdk_driving.sample import DETECTION_CLASSES

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel
    from vlsdk_driving.bev import BEVGrid, PillarEncoder

__all__ = ["BEVSettings", "BEVTask", "EvalSets", "TRAIN_KEYFRAMES", "TEST_KEYFRAMES"]

#: Keyframes per synthetic training scene and per held-out scene.
TRAIN_KEYFRAMES, TEST_KEYFRAMES = 4, 3
#: Held-out synthetic scenes are drawn from ``seed + TEST_SEED`` (never a training scene's seed).
TEST_SEED = 10_000


@dataclass
class BEVSettings(RunSettings):
    """Settings of :class:`BEVTask` (every :class:`RunSettings` field, and these)."""

    data: Path | None = help_field(None, "nuScenes-format dataroot evaluated beside the held-out synthetic scenes "
                                         "(trained on with train_scenes=0)")
    out: Path = help_field(Path("runs/driving_bev"), "output folder: model/, metrics.json, data/, nuscenes_eval/")
    epochs: int = help_field(40, "passes over the training samples (in global batches: batch_size x ranks)")
    batch_size: int = help_field(16, "samples per step and rank (and per forward pass in evaluation)")
    lr: float = help_field(2e-3, "peak AdamW learning rate")
    weight_decay: float = help_field(1e-2, "AdamW weight decay")
    val_data: Path | None = help_field(None, "evaluate on this dataroot instead of data (needed with train_scenes=0)")
    dataset: Any = help_field("driving.nuscenes", "the registered adapter reading data (name or {name, options})")
    version: str = help_field("v1.0-mini", "table version folder of data (v1.0-mini, v1.0-trainval, ...)")
    lidar_channel: str = help_field("LIDAR_TOP", "LiDAR channel of data")
    camera_channels: tuple[str, ...] | None = help_field(None, "camera channels of data (none: all; [] none)")
    category_map: str | None = help_field(None, "annotation categories -> detection classes of data: nuscenes "
                                                "(none), lyft, or a JSON file {name: class or null}")
    min_distance: float = help_field(1.0, "drop points of data closer than this to the sensor (m, the ego car)")
    on_error: Literal["raise", "skip"] = help_field("raise", "non-finite records of data: raise, or skip (counted)")
    synthesizer: Any = help_field("driving.scenes", "the registered synthesizer of the synthetic scenes")
    train_scenes: int = help_field(200, f"synthetic training scenes of {TRAIN_KEYFRAMES} keyframes (0: train on data)")
    test_scenes: int = help_field(20, f"held-out synthetic scenes of {TEST_KEYFRAMES} keyframes (0: none)")
    azimuth_steps: tuple[int, int] = help_field((600, 1100), "range of LiDAR azimuth steps of a synthetic scene")
    resolution: float = help_field(0.2, "BEV cell size in metres")
    half_range: float = help_field(51.2, "half extent of the square BEV grid in metres")
    z_bins: int = help_field(4, "height slices of the pillar encoder")
    experts: list[str] = help_field(["driving.lidar"], "registered experts inserted into every MoE layer")
    metric: Any = help_field("driving.nuscenes_ap", "the registered center-distance AP metric")
    devkit_eval: bool = help_field(True, "also score each nuScenes folder with the devkit's DetectionEval (mAP, NDS)")
    score_threshold: float | None = help_field(None, "boxes predicted and drawn from this score up (none: the head's)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_scenes < 0 or self.test_scenes < 0:
            raise ValueError(f"train_scenes and test_scenes must be >= 0, got {self.train_scenes}, {self.test_scenes}")
        if not self.resolution > 0 or not self.half_range > 2 * self.resolution:
            raise ValueError(f"resolution must be > 0 and half_range > 2 x resolution, got {self.resolution}, "
                             f"{self.half_range}")
        if not 0 < self.azimuth_steps[0] <= self.azimuth_steps[1]:
            raise ValueError(f"azimuth_steps must be (low, high) with 0 < low <= high, got {self.azimuth_steps}")
        if self.train_scenes == 0 and self.val_data is None:
            raise ValueError("train_scenes=0 trains on data; name val_data=DIR to evaluate on other scenes")


class EvalSets:
    """Named evaluation datasets (``synthetic``, ``data``); indexable as their concatenation.

    Args:
        parts: ``(name, dataset)`` pairs in evaluation order.
    """

    def __init__(self, parts: list[tuple[str, Any]]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(d) for _, d in self.parts)

    def __getitem__(self, index: int) -> Any:
        for _, data in self.parts:
            if index < len(data):
                return data[index]
            index -= len(data)
        raise IndexError("index out of range of the evaluation sets")


class BEVTask(Task):
    """LiDAR BEV detection (see the module docstring)."""

    name = "driving.bev"
    settings_type = BEVSettings
    primary_metric = "car_ap_2m"
    description = "LiDAR BEV 3D detection on synthetic nuScenes-format scenes and nuScenes-format data: devkit AP, NDS"
    quick = {"model": "tiny", "epochs": 8, "train_scenes": 10, "test_scenes": 3, "batch_size": 4, "resolution": 0.5,
             "half_range": 32.0, "azimuth_steps": (500, 900), "draw": 2, "progress": False}
    head = "bev"

    # -- parts built from the settings ------------------------------------------------------
    def grid(self, settings: BEVSettings) -> BEVGrid:
        """The square BEV grid of the settings."""
        from vlsdk_driving.bev import BEVGrid

        half = settings.half_range
        return BEVGrid((-half, half), (-half, half), (-5.0, 3.0), settings.resolution)

    def encoder(self, settings: BEVSettings) -> PillarEncoder:
        """The pillar encoder of the settings (no weights: rebuilt from the saved settings)."""
        from vlsdk_driving.detector import build_encoder

        return build_encoder(self.grid(settings), settings.z_bins)

    def _scenes(self, settings: BEVSettings, split: str) -> Any:
        """Synthetic scenes of ``split`` written under ``<out>/data/<split>`` (by rank 0) and read back."""
        from vlsdk.train.distributed import barrier, dist_info
        from vlsdk_driving.nuscenes_adapter import NuScenesDataset
        from vlsdk_driving.synth import SceneRandomization

        train = split == "train"
        rand = SceneRandomization(area=min(30.0, settings.half_range - 2), azimuth_steps=settings.azimuth_steps)
        synth = build("synthesizers", settings.synthesizer, "synthesizer",
                      num_scenes=settings.train_scenes if train else settings.test_scenes,
                      samples_per_scene=TRAIN_KEYFRAMES if train else TEST_KEYFRAMES,
                      camera_channel=None if train else "CAM_FRONT", randomization=rand)
        root = Path(settings.out) / "data" / split
        if dist_info()[0] == 0 or not train:
            synth.write(root, settings.seed + (0 if train else TEST_SEED))
        if train:
            barrier()  # the other ranks read the scenes rank 0 wrote
        return NuScenesDataset(root, synth.version, lidar_channel=synth.lidar_channel,
                               camera_channels=tuple(synth.cameras))

    def _folder(self, settings: BEVSettings, root: Path) -> Any:
        """The nuScenes-format folder ``root`` through the registered adapter and the source settings."""
        return build("datasets", settings.dataset, "dataset", dataroot=root, root=root, version=settings.version,
                     lidar_channel=settings.lidar_channel, camera_channels=settings.camera_channels,
                     category_map=settings.category_map, min_distance=settings.min_distance,
                     on_error=settings.on_error)

    # -- the task -------------------------------------------------------------------------------
    def datasets(self, settings: BEVSettings, split: str) -> Any:
        from vlsdk_driving.training import DetectorTrainSet

        if split == "train":
            return DetectorTrainSet(self._scenes(settings, "train") if settings.train_scenes
                                    else self._folder(settings, Path(settings.data)))
        parts = [("synthetic", self._scenes(settings, "test"))] if settings.test_scenes else []
        parts.append(("data", self._folder(settings, Path(settings.val_data or settings.data))))
        return EvalSets(parts)

    def build_model(self, settings: BEVSettings, data: Any) -> VLModel:
        from vlsdk_driving.detector import build_detector
        from vlsdk_driving.training import BEVDetectionLoss

        detector = build_detector(self.grid(settings), backbone=settings.model, z_bins=settings.z_bins,
                                  experts=settings.experts, num_classes=len(DETECTION_CLASSES))
        self._loss = BEVDetectionLoss(detector.encoder, self.head)
        return detector.model

    def collate(self, samples: list[Any]) -> Any:
        from vlsdk_driving.training import collate_detector_batch

        return collate_detector_batch(samples)

    def loss(self, model: VLModel, batch: Any) -> Any:
        return self._loss(model, batch)

    def train_options(self, settings: BEVSettings, steps: int) -> dict[str, Any]:
        """The detector's Trainer schedule (warm-up over 20 % of the steps, cosine to 1e-4 x lr, a log row
        every 5 %): what the runner should pass to :class:`~vlsdk.train.TrainConfig`."""
        from vlsdk_driving.training import trainer_options

        return trainer_options(steps)

    def _predict_parts(self, model: VLModel, data: EvalSets, settings: BEVSettings, limit: int | None = None):
        """Yield ``(name, dataset, samples, predictions)`` per evaluation set (``limit`` samples of each)."""
        from vlsdk_driving.detector import BEVDetector, predict

        detector = BEVDetector(self.encoder(settings), model)
        for name, dataset in data.parts:
            samples = [dataset[i] for i in range(len(dataset) if limit is None else min(limit, len(dataset)))]
            preds = predict(detector, samples, batch_size=settings.batch_size, device=model_device(model),
                            precision=settings.precision, score_threshold=settings.score_threshold)
            yield name, dataset, samples, preds

    def evaluate(self, model: VLModel, data: EvalSets, settings: BEVSettings) -> dict[str, Any]:
        from vlsdk_driving.detector import evaluate_detector
        from vlsdk_driving.nuscenes_adapter import NuScenesDataset
        from vlsdk_driving.nuscenes_eval import report_devkit_evaluation

        metrics: dict[str, Any] = {}
        for name, dataset, samples, preds in self._predict_parts(model, data, settings):
            where = "held-out synthetic scenes" if name == "synthetic" else str(getattr(dataset, "dataroot", name))
            result = evaluate_detector(preds, samples, self.grid(settings), build("metrics", settings.metric, "metric"))
            car = float(result["ap"].get("car", {}).get(2.0, 0.0))
            metrics.setdefault(self.primary_metric, car)
            metrics.update({f"{name}.car_ap_2m": car, f"{name}.map": float(result["mAP"]), name: result})
            metrics.setdefault("sets", {})[name] = where
            if settings.devkit_eval and isinstance(dataset, NuScenesDataset):
                devkit = report_devkit_evaluation(dataset, preds, Path(settings.out) / "nuscenes_eval" / name,
                                                  f"{where} (nuscenes-devkit DetectionEval)")
                metrics[f"{name}_devkit"] = devkit
                if "error" not in devkit:
                    metrics.update({f"{name}.devkit_map": devkit["mAP"], f"{name}.nds": devkit["NDS"]})
        return metrics

    def describe(self, metrics: dict[str, Any]) -> str | None:
        """The center-distance AP table of each evaluation set."""
        from vlsdk_driving.metrics import format_ap_table

        return "\n".join(format_ap_table(metrics[name], f"{where} (nuscenes-devkit center-distance AP)")
                         for name, where in metrics.get("sets", {}).items()) or None

    def predict(self, model: VLModel, data: EvalSets, settings: BEVSettings) -> list[dict[str, Any]]:
        rows = []
        for name, _, samples, preds in self._predict_parts(model, data, settings):
            rows += [{"set": name, "token": s.token, "boxes": p.boxes.round(3).tolist(),
                      "scores": p.scores.round(4).tolist(), "labels": p.names} for s, p in zip(samples, preds,
                                                                                               strict=True)]
        return rows

    def metadata(self, settings: BEVSettings, data: Any) -> dict[str, Any]:
        from vlsdk_driving.detector import channel_names

        return {"task": self.name, "class_names": {self.head: list(DETECTION_CLASSES)},
                "input": {"channels": channel_names(self.encoder(settings)), "scaling": "none",
                          "image_size": list(self.grid(settings).shape)}}

    def render(self, model: VLModel, data: EvalSets, settings: BEVSettings, path: Path) -> Path | None:
        from vlsdk_driving.drawing import render_bev_panels

        parts = [p for p in self._predict_parts(model, data, settings, limit=1) if p[2]][: settings.draw]
        if not parts:
            return None
        titles = [f"{'held-out synthetic scene' if n == 'synthetic' else str(getattr(d, 'dataroot', n))}: "
                  "ground truth (green), predictions (red)" for n, d, _, _ in parts]
        return render_bev_panels([s[0] for _, _, s, _ in parts], [p[0] for _, _, _, p in parts], path,
                                 self.grid(settings), titles)

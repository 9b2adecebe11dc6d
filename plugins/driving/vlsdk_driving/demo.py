"""The driving part of ``vlsdk demo``: LiDAR BEV detection on synthetic nuScenes-format scenes.

:func:`run_demo` synthesises training and held-out scenes (written in nuScenes format and read
back through the devkit, in a temporary folder), trains the :func:`~vlsdk_driving.detector.build_detector`
model (the ``driving.lidar`` expert in its MoE layers), scores it with the devkit's
center-distance AP and draws a held-out scene. By default only synthetic data is used, so every
user gets the same numbers for the same seed (no real nuScenes folder is read, even when one exists).

``vlsdk demo --data driving=<nuScenes folder>`` (``data=``) evaluates on the folder's keyframes
instead, read through :class:`~vlsdk_driving.nuscenes_adapter.NuScenesDataset`. Training stays
on synthetic scenes: the shared ``nuscenes_mini`` folder holds one real keyframe, too little to
train on, so the demo measures how a detector trained on synthetic scenes transfers to real LiDAR.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_demo"]

#: ``(train scenes, test scenes, samples per scene, epochs)`` of the two settings.
_SETTINGS = {True: (8, 2, 4, 6), False: (20, 4, 4, 10)}
#: Samples per training step.
_BATCH = 4


def _real_keyframes(data: Path) -> tuple[list[Any], str]:
    """The keyframes (LiDAR + boxes, no cameras) of a nuScenes folder and its table version."""
    from vlsdk_driving.nuscenes_adapter import NuScenesDataset

    versions = sorted(d.name for d in data.glob("v1.0-*") if (d / "sample.json").is_file())
    if not versions:
        raise ValueError(f"{data}: no nuScenes tables (a v1.0-*/sample.json folder such as v1.0-mini)")
    version = "v1.0-mini" if "v1.0-mini" in versions else versions[0]
    real = NuScenesDataset(data, version, camera_channels=())
    if not len(real):
        raise ValueError(f"{data}/{version}: the sample table lists no keyframes")
    return [real[i] for i in range(len(real))], version


def run_demo(out_dir: Path, *, quick: bool, device: str, seed: int, steps: int | None = None,
             data: Path | None = None):
    """Train and evaluate BEV detection on synthetic scenes; the ``vlsdk demo`` contract.

    Args:
        out_dir: where the BEV picture and the Trainer's files (``train/``: checkpoint, curves) go.
        quick: the test setting (fewer scenes and epochs; about 12 s on a 2-core CPU, 40 s without).
        device: ``"cpu"``, ``"cuda"``, ...
        seed: data, initialisation and shuffling seed.
        steps: training steps (``None``: 6 epochs of 32 samples quick, 10 of 80 full: 48 / 200
            steps); otherwise exactly ``steps`` batches of 4 drawn from the training scenes.
        data: a nuScenes folder (``v1.0-*`` tables, ``samples/LIDAR_TOP``) to evaluate on instead
            of the held-out synthetic scenes; training stays synthetic (see the module doc).

    Returns:
        a :class:`vlsdk.demo.DemoResult` with ``car_ap_2m`` and ``map`` (devkit center-distance
        AP on the held-out scenes or the real keyframes), the BEV PNG, the model, the held-out
        BEV pseudo-images and 16 training ones (for the cross-domain routing table).

    Raises:
        ValueError: ``steps < 1``, or a ``data`` folder without nuScenes tables.
    """
    from vlsdk.demo import DemoResult
    from vlsdk_driving.bev import BEVGrid
    from vlsdk_driving.detector import build_detector, evaluate_detector, predict
    from vlsdk_driving.drawing import render_bev
    from vlsdk_driving.training import train_detector
    from vlsdk_driving.synth import NuScenesSceneSynthesizer, SceneRandomization

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_scenes, test_scenes, per_scene, epochs = _SETTINGS[bool(quick)]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1 or None, got {steps!r}")
    real, version = _real_keyframes(Path(data)) if data is not None else (None, "")
    half = 32.0
    grid = BEVGrid((-half, half), (-half, half), (-5.0, 3.0), 0.5)
    rand = SceneRandomization(area=24.0, azimuth_steps=(500, 900))
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)  # the tensors are small: one thread is fastest on a shared 2-core CPU
    try:
        with tempfile.TemporaryDirectory(prefix="vlsdk-driving-demo-") as tmp:
            train_ds = NuScenesSceneSynthesizer(train_scenes, per_scene, camera_channel=None, randomization=rand)(
                seed, Path(tmp) / "train")
            test_ds = None if real is not None else NuScenesSceneSynthesizer(
                test_scenes, per_scene, camera_channel=None, randomization=rand)(seed + 10_000, Path(tmp) / "test")
            train = [train_ds[i] for i in range(len(train_ds))]
            test = real if test_ds is None else [test_ds[i] for i in range(len(test_ds))]
        t_data = time.perf_counter() - t0
        torch.manual_seed(seed)
        detector = build_detector(grid, backbone="tiny")
        # --steps: one pass over exactly steps batches, drawn in turn from the training samples
        schedule = (train, epochs) if steps is None else ([train[i % len(train)] for i in range(steps * _BATCH)], 1)
        trained = train_detector(detector, schedule[0], epochs=schedule[1], batch_size=_BATCH, lr=3e-3,
                                 device=device, seed=seed, progress=False, out_dir=out_dir / "train")
        preds = predict(detector, test, device=device)
        result = evaluate_detector(preds, test, grid)
        png = render_bev(test[0], preds[0], out_dir / "bev_detection.png", grid,
                         title=("held-out synthetic scene" if real is None else f"real nuScenes keyframe ({version})")
                         + ": ground truth (green), predictions (red)")
        with torch.no_grad():
            samples = detector.encoder([torch.from_numpy(s.points) for s in test]).cpu()
            train_samples = detector.encoder([torch.from_numpy(s.points) for s in train[:16]]).cpu()
    finally:
        torch.set_num_threads(threads)
    car = float(result["ap"].get("car", {}).get(2.0, 0.0))
    metrics = {"car_ap_2m": car, "map": float(result["mAP"])}
    seconds = time.perf_counter() - t0
    if real is not None:
        summary = (f"Real data from {data}: the same CenterPoint-style BEV detector (tiny backbone, driving.lidar "
                   f"expert), trained on synthetic scenes only ({trained.step} steps on {len(train)} LiDAR sweeps of "
                   f"{train_scenes} synthetic scenes; final loss {trained.train[-1]['loss']:.3f}), evaluated with the "
                   f"devkit's center-distance AP on the folder's {len(test)} real keyframe(s) ({version}, read "
                   f"through the nuScenes adapter; {sum(result['num_gt'].values())} boxes inside the "
                   f"{2 * half:.0f} m grid). The folder holds too few keyframes to train on, so this measures the "
                   f"synthetic-to-real transfer, not a detector trained on nuScenes. {seconds:.0f} s.")
        return DemoResult(domain="driving", title=f"LiDAR BEV 3D detection: synthetic training, real nuScenes "
                                                  f"evaluation ({Path(data).name})",
                          metrics=metrics, images=[png], model=detector.model.eval(), samples=samples,
                          expert="driving.lidar", summary=summary, train_samples=train_samples,
                          train_steps=trained.step)
    summary = (f"A CenterPoint-style BEV detector (tiny backbone with the driving.lidar expert in its MoE layers) "
               f"trained for {trained.step} steps on {len(train)} LiDAR sweeps of {train_scenes} "
               f"synthetic scenes, written in nuScenes format and read back through nuscenes-devkit, and evaluated "
               f"with the devkit's center-distance AP on {len(test)} sweeps of {test_scenes} held-out scenes "
               f"({sum(result['num_gt'].values())} boxes; mAP over the classes present). Input: a "
               f"{grid.shape[0]}x{grid.shape[1]} BEV pseudo-image at {grid.resolution} m with "
               f"{detector.encoder.out_channels} channels. Final training loss {trained.train[-1]['loss']:.3f}; "
               f"{seconds:.0f} s ({t_data:.0f} s synthesising).")
    return DemoResult(domain="driving", title="LiDAR BEV 3D detection on synthetic nuScenes-format scenes",
                      metrics=metrics, images=[png], model=detector.model.eval(), samples=samples,
                      expert="driving.lidar", summary=summary, train_samples=train_samples,
                      train_steps=trained.step)

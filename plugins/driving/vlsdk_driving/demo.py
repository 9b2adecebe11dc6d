"""The driving part of ``vlsdk demo``: LiDAR BEV detection on synthetic nuScenes-format scenes.

:func:`run_demo` synthesises training and held-out scenes (written in nuScenes format and read
back through the devkit, in a temporary folder), trains the :func:`~vlsdk_driving.pipeline.build_detector`
model (the ``driving.lidar`` expert in its MoE layers), scores it with the devkit's
center-distance AP and draws a held-out scene. Only synthetic data is used, so every user gets
the same numbers for the same seed (no real nuScenes folder is read, even when one exists).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

__all__ = ["run_demo"]

#: ``(train scenes, test scenes, samples per scene, epochs)`` of the two settings.
_SETTINGS = {True: (8, 2, 4, 6), False: (20, 4, 4, 10)}


def run_demo(out_dir: Path, *, quick: bool, device: str, seed: int):
    """Train and evaluate BEV detection on synthetic scenes; the ``vlsdk demo`` contract.

    Args:
        out_dir: where the BEV picture and the Trainer's files (``train/``: checkpoint, curves) go.
        quick: the test setting (fewer scenes and epochs; about 12 s on a 2-core CPU, 40 s without).
        device: ``"cpu"``, ``"cuda"``, ...
        seed: data, initialisation and shuffling seed.

    Returns:
        a :class:`vlsdk.demo.DemoResult` with ``car_ap_2m`` and ``map`` (devkit center-distance
        AP on the held-out scenes), the BEV PNG, the model, the held-out BEV pseudo-images and 16
        training ones (for the cross-domain routing table).
    """
    from vlsdk.demo import DemoResult
    from vlsdk_driving.bev import BEVGrid
    from vlsdk_driving.pipeline import build_detector, evaluate_detector, predict, render_bev, train_detector
    from vlsdk_driving.synth import NuScenesSceneSynthesizer, SceneRandomization

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_scenes, test_scenes, per_scene, epochs = _SETTINGS[bool(quick)]
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
            test_ds = NuScenesSceneSynthesizer(test_scenes, per_scene, camera_channel=None, randomization=rand)(
                seed + 10_000, Path(tmp) / "test")
            train = [train_ds[i] for i in range(len(train_ds))]
            test = [test_ds[i] for i in range(len(test_ds))]
        t_data = time.perf_counter() - t0
        torch.manual_seed(seed)
        detector = build_detector(grid, backbone="tiny")
        trained = train_detector(detector, train, epochs=epochs, batch_size=4, lr=3e-3, device=device, seed=seed,
                                 progress=False, out_dir=out_dir / "train")
        preds = predict(detector, test, device=device)
        result = evaluate_detector(preds, test, grid)
        png = render_bev(test[0], preds[0], out_dir / "bev_detection.png", grid,
                         title="held-out synthetic scene: ground truth (green), predictions (red)")
        with torch.no_grad():
            samples = detector.encoder([torch.from_numpy(s.points) for s in test]).cpu()
            train_samples = detector.encoder([torch.from_numpy(s.points) for s in train[:16]]).cpu()
    finally:
        torch.set_num_threads(threads)
    car = float(result["ap"].get("car", {}).get(2.0, 0.0))
    metrics = {"car_ap_2m": car, "map": float(result["mAP"])}
    seconds = time.perf_counter() - t0
    summary = (f"A CenterPoint-style BEV detector (tiny backbone with the driving.lidar expert in its MoE layers) "
               f"trained for {trained.step} steps ({epochs} epochs) on {len(train)} LiDAR sweeps of {train_scenes} "
               f"synthetic scenes, written in nuScenes format and read back through nuscenes-devkit, and evaluated "
               f"with the devkit's center-distance AP on {len(test)} sweeps of {test_scenes} held-out scenes "
               f"({sum(result['num_gt'].values())} boxes; mAP over the classes present). Input: a "
               f"{grid.shape[0]}x{grid.shape[1]} BEV pseudo-image at {grid.resolution} m with "
               f"{detector.encoder.out_channels} channels. Final training loss {trained.train[-1]['loss']:.3f}; "
               f"{seconds:.0f} s ({t_data:.0f} s synthesising).")
    return DemoResult(domain="driving", title="LiDAR BEV 3D detection on synthetic nuScenes-format scenes",
                      metrics=metrics, images=[png], model=detector.model.eval(), samples=samples,
                      expert="driving.lidar", summary=summary, train_samples=train_samples)

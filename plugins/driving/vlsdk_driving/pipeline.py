"""LiDAR BEV detection end to end: build, train, predict, evaluate, picture; and the demo command.

:func:`build_detector` makes a :class:`~vlsdk.VLModel` whose input is the :class:`PillarEncoder`
pseudo-image, with the ``driving.lidar`` expert in its MoE layers and a ``driving.bev_detection``
head; :func:`train_detector` and :func:`predict` run it over :class:`DrivingSample` lists;
:func:`evaluate_detector` scores it with the devkit's center-distance AP (training itself is the core
:class:`~vlsdk.train.Trainer`, set up in :mod:`vlsdk_driving.training`). :func:`run_demo` is the
``vlsdk driving-detect`` command and ``examples/driving_lidar_detection.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsdk_driving.bev import BEVGrid, PillarEncoder
from vlsdk_driving.metrics import NuScenesDetectionAP
from vlsdk_driving.nuscenes_adapter import POINT_FIELDS
from vlsdk_driving.nuscenes_source import add_source_arguments
from vlsdk_driving.sample import DETECTION_CLASSES, Boxes3D, DrivingSample
from vlsdk_driving.training import HEAD, augment, train_detector

__all__ = ["BEVDetector", "build_detector", "load_detector", "augment", "train_detector", "predict",
           "evaluate_detector", "camera_depth_batch", "train_camera_depth", "evaluate_camera_depth", "render_bev",
           "render_camera_depth", "add_demo_arguments", "run_demo"]


@dataclass
class BEVDetector:
    """A BEV encoder and a :class:`~vlsdk.VLModel` with a ``driving.bev_detection`` head named ``"bev"``.

    Attributes:
        encoder: points -> pseudo-image.
        model: the backbone with the LiDAR expert and the head.
    """

    encoder: PillarEncoder
    model: Any

    @property
    def head(self) -> Any:
        """The detection head."""
        return self.model.heads[HEAD]

    def save(self, directory: str | Path) -> Path:
        """``save_pretrained`` the model and write the encoder settings beside it (``bev_encoder.json``).

        Args:
            directory: the checkpoint folder.
        """
        directory = Path(directory)
        self.model.save_pretrained(directory)
        enc = self.encoder
        (directory / "bev_encoder.json").write_text(json.dumps({
            "grid": enc.grid.to_dict(), "features": list(enc.features), "z_bins": enc.z_bins,
            "point_fields": list(enc.point_fields), "intensity_scale": enc.intensity_scale,
            "max_count": enc.max_count}, indent=2))
        return directory


def build_detector(grid: BEVGrid, *, backbone: str = "tiny", z_bins: int = 4, lidar_expert: bool = True,
                   velocity: bool = False, num_classes: int = len(DETECTION_CLASSES),
                   point_fields: Sequence[str] = POINT_FIELDS, **head_options: Any) -> BEVDetector:
    """A fresh detector for ``grid``.

    Args:
        grid: the BEV grid (range and resolution).
        backbone: the named backbone config (``"tiny"`` for CPU, ``"small"``/``"base"`` for a GPU).
        z_bins: height slices of the encoder.
        lidar_expert: insert the registered ``driving.lidar`` expert into every MoE layer.
        velocity: regress velocities too.
        num_classes: detection classes.
        point_fields: the point columns of the samples.
        **head_options: more :class:`BEVDetectionHead` options.
    """
    import vlsdk

    encoder = PillarEncoder(grid, z_bins=z_bins, point_fields=point_fields,
                            features=("occupancy", "max_z", "mean_z", "min_z", "mean_intensity"))
    model = vlsdk.VLModel(backbone, in_chans=encoder.out_channels)
    if lidar_expert:
        model.add_expert("driving.lidar", init_bias=0.0)
    model.add_head(HEAD, task="driving.bev_detection", num_classes=num_classes, x_range=list(grid.x_range),
                   y_range=list(grid.y_range), resolution=grid.resolution, velocity=velocity, **head_options)
    return BEVDetector(encoder, model)


def load_detector(directory: str | Path, map_location: str = "cpu") -> BEVDetector:
    """A detector written by :meth:`BEVDetector.save`.

    Args:
        directory: the checkpoint folder.
        map_location: device for the weights.
    """
    import vlsdk

    directory = Path(directory)
    cfg = json.loads((directory / "bev_encoder.json").read_text())
    grid = BEVGrid(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.pop("grid").items()})
    encoder = PillarEncoder(grid, **cfg)
    return BEVDetector(encoder, vlsdk.VLModel.from_pretrained(directory, map_location=map_location).eval())


def _autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    if amp in (None, "none", "off"):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        raise ValueError(f"amp must be 'bf16', 'fp16' or None, got {amp!r}")
    return torch.autocast(device.type, dtype=dtype)


def _batches(n: int, size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, size):
        yield order[i:i + size]


@torch.no_grad()
def predict(detector: BEVDetector, samples: Sequence[DrivingSample], *, batch_size: int = 4, device: str = "cpu",
            amp: str | None = None, score_threshold: float | None = None) -> list[Boxes3D]:
    """Detected boxes (LiDAR frame, with scores) for each sample.

    Args:
        detector: the detector.
        samples: the samples.
        batch_size: samples per forward pass.
        device: the device.
        amp: autocast dtype name or ``None``.
        score_threshold: override of the head's threshold.
    """
    dev = torch.device(device)
    model = detector.model.to(dev).eval()
    max_stride = max(detector.head.strides)  # the backbone stages past the head's coarsest level are not run
    out: list[Boxes3D] = []
    for idx in _batches(len(samples), batch_size, None):
        bev = detector.encoder([torch.from_numpy(samples[i].points).to(dev) for i in idx])
        with _autocast(dev, amp):
            res = model(bev, heads=[HEAD], max_stride=max_stride)
        out += detector.head.decode(res[HEAD], score_threshold=score_threshold)
    return out


def evaluate_detector(predictions: Sequence[Boxes3D], samples: Sequence[DrivingSample],
                      grid: BEVGrid | None = None, **metric_options: Any) -> dict:
    """Center-distance AP (devkit algorithm) of predictions against the samples' boxes.

    Ground truth outside ``grid`` (the detector cannot see it) and without LiDAR points is left out.

    Args:
        predictions: one :class:`Boxes3D` per sample.
        samples: the samples.
        grid: the detector's grid; ``None`` keeps all boxes.
        **metric_options: :class:`NuScenesDetectionAP` options.
    """
    if len(predictions) != len(samples):
        raise ValueError(f"got {len(predictions)} predictions for {len(samples)} samples")
    metric = NuScenesDetectionAP(**metric_options)
    for pred, sample in zip(predictions, samples, strict=True):
        gt = sample.boxes
        npts = gt.points_inside(sample.points).sum(1) if len(gt) else np.zeros(0, int)
        if grid is not None and len(gt):
            inside = ((gt.centers[:, 0] >= grid.x_range[0]) & (gt.centers[:, 0] < grid.x_range[1])
                      & (gt.centers[:, 1] >= grid.y_range[0]) & (gt.centers[:, 1] < grid.y_range[1]))
            npts = np.where(inside, npts, 0)
        metric.update(pred, gt, sample.token, gt_num_points=npts)
    return metric.compute()


def camera_depth_batch(samples: Sequence[DrivingSample], channel: str,
                       size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resized camera images and their sparse LiDAR depth targets.

    Args:
        samples: samples that have the camera ``channel``.
        channel: the camera channel.
        size: ``(H, W)`` of images and targets.

    Returns:
        ``(images (B, 3, H, W) in [0, 1], targets (B, 1, H, W), 0 = no measurement)``.
    """
    import torch.nn.functional as F

    from vlsdk_driving.depth import sparse_depth_map

    images, targets = [], []
    for s in samples:
        if channel not in s.cameras:
            raise ValueError(f"sample {s.token} has no camera {channel!r}; cameras: {sorted(s.cameras)}")
        cam = s.cameras[channel]
        img = torch.from_numpy(cam.load_image()).permute(2, 0, 1)[None].float() / 255
        images.append(F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True))
        targets.append(sparse_depth_map(s.points, cam, size)[None, None])
    return torch.cat(images), torch.cat(targets)


def train_camera_depth(samples: Sequence[DrivingSample], channel: str, *, size: tuple[int, int] = (96, 160),
                       backbone: str = "tiny", steps: int = 50, batch_size: int = 4, lr: float = 2e-3,
                       max_depth: float = 80.0, device: str = "cpu", amp: str | None = None, seed: int = 0,
                       progress: bool = True, max_seconds: float | None = None) -> Any:
    """Train a :class:`~vlsdk.VLModel` with the core ``depth`` head on sparse LiDAR depth targets.

    Args:
        samples: training samples with the camera ``channel``.
        channel: the camera channel.
        size: ``(H, W)`` the images are resized to.
        backbone: the named backbone config.
        steps: optimisation steps.
        batch_size: images per step.
        lr: AdamW learning rate.
        max_depth: the depth head's upper bound, metres.
        device: the device.
        amp: autocast dtype name or ``None``.
        seed: the sampling seed.
        progress: show a tqdm progress bar.
        max_seconds: stop early after this much wall time.

    Returns:
        the trained model (head ``"depth"``), in eval mode.
    """
    from tqdm.auto import tqdm

    import vlsdk

    if steps < 1 or not samples:
        raise ValueError(f"expected steps >= 1 and some samples, got {steps} steps, {len(samples)} samples")
    dev = torch.device(device)
    images, targets = camera_depth_batch(samples, channel, size)
    model = vlsdk.VLModel(backbone, in_chans=3)
    model.add_head("depth", task="depth", max_depth=max_depth)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc="depth", disable=not progress, unit="step"):
        idx = torch.from_numpy(rng.choice(len(images), min(batch_size, len(images)), replace=False))
        with _autocast(dev, amp):
            out = model(images[idx].to(dev), heads=["depth"])["depth"]
        loss = model.heads["depth"].loss(out, targets[idx].to(dev))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return model.eval()


@torch.no_grad()
def evaluate_camera_depth(model: Any, samples: Sequence[DrivingSample], channel: str,
                          size: tuple[int, int] = (96, 160), device: str = "cpu") -> dict[str, float]:
    """AbsRel and RMSE of a depth model against the samples' projected LiDAR (``driving.depth``).

    Args:
        model: a model with a ``"depth"`` head.
        samples: samples with the camera ``channel``.
        channel: the camera channel.
        size: ``(H, W)`` of images and targets.
        device: the device.
    """
    from vlsdk_driving.depth import DepthMetrics

    images, targets = camera_depth_batch(samples, channel, size)
    metric = DepthMetrics()
    for i in range(0, len(images), 8):
        depth = model(images[i:i + 8].to(device), heads=["depth"])["depth"].depth.float().cpu()
        metric.update(depth, targets[i:i + 8])
    return metric.compute()


def _box_outline(boxes: Boxes3D) -> np.ndarray:
    corners = boxes.corners()[:, :4, :2]
    return np.concatenate([corners, corners[:, :1]], 1)


def render_bev(sample: DrivingSample, predictions: Boxes3D | None, path: str | Path,
               grid: BEVGrid | None = None, title: str = "") -> Path:
    """Write a BEV PNG: LiDAR points (by height), ground truth (green) and predictions (red, by score).

    Args:
        sample: the sample.
        predictions: predicted boxes or ``None``.
        path: the PNG to write.
        grid: the extent to show (default: the points' extent).
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
    pts = sample.points
    ax.scatter(pts[:, 0], pts[:, 1], s=0.3, c=pts[:, 2], cmap="viridis", vmin=-3, vmax=2, linewidths=0)
    for outline in _box_outline(sample.boxes):
        ax.plot(outline[:, 0], outline[:, 1], color="lime", lw=1.2)
    if predictions is not None and len(predictions):
        for outline, score in zip(_box_outline(predictions), predictions.scores, strict=True):
            ax.plot(outline[:, 0], outline[:, 1], color="red", lw=1.0, alpha=float(np.clip(score, 0.3, 1)))
    if grid is not None:
        ax.set_xlim(*grid.x_range)
        ax.set_ylim(*grid.y_range)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title or f"{sample.source} {sample.token[:12]}: ground truth (green), predictions (red)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def render_camera_depth(sample: DrivingSample, channel: str, path: str | Path) -> Path:
    """Write the camera image with the projected LiDAR points coloured by depth.

    Args:
        sample: the sample.
        channel: the camera channel.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlsdk_driving.depth import project_points

    if channel not in sample.cameras:
        raise ValueError(f"sample {sample.token} has no camera {channel!r}; cameras: {sorted(sample.cameras)}")
    cam = sample.cameras[channel]
    uv, depth, visible = project_points(sample.points, cam)
    w, h = cam.image_size
    fig, ax = plt.subplots(figsize=(10, 10 * h / w), dpi=100)
    ax.imshow(cam.load_image())
    sc = ax.scatter(uv[visible, 0], uv[visible, 1], c=depth[visible], s=2, cmap="turbo", vmin=0, vmax=60,
                    linewidths=0)
    fig.colorbar(sc, ax=ax, fraction=0.03, label="LiDAR depth (m)")
    ax.set_axis_off()
    ax.set_title(f"{channel}: {int(visible.sum())} projected LiDAR points")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


# -- the demo -----------------------------------------------------------------------------
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser``.

    Args:
        parser: the (sub)parser.
    """
    parser.add_argument("--quick", action="store_true", help="small CPU run for CI (< 60 s)")
    parser.add_argument("--out", type=Path, default=Path("runs/driving_lidar_detection"), help="output folder")
    parser.add_argument("--nuscenes", type=Path, default=None,
                        help="real nuScenes dataroot to evaluate on (default: ../shared/data/nuscenes_mini if present)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 8 quick, 40 full)")
    parser.add_argument("--train-scenes", type=int, default=None, help="synthetic training scenes")
    parser.add_argument("--test-scenes", type=int, default=None, help="held-out synthetic scenes")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--backbone", default=None, help="backbone config (default: tiny quick, small full)")
    parser.add_argument("--resolution", type=float, default=None, help="BEV cell size in metres")
    parser.add_argument("--range", dest="half_range", type=float, default=None, help="half extent of the BEV grid (m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-seconds", type=float, default=None, help="stop training after this long")
    parser.add_argument("--depth-steps", type=int, default=None,
                        help="camera-depth training steps (default: 0 = skipped with --quick, 2000 full)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 with --quick on a CPU, which is fastest on shared "
                             "2-core runners, else torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_source_arguments(parser)  # --version, --lidar-channel, --camera-channels, --category-map of --nuscenes


def _default_nuscenes() -> Path | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data" / "nuscenes_mini"
        if (cand / "v1.0-mini").is_dir():
            return cand
    cand = Path.cwd().parent / "shared" / "data" / "nuscenes_mini"
    return cand if (cand / "v1.0-mini").is_dir() else None


def run_demo(args: argparse.Namespace) -> int:
    """Train BEV detection on synthetic scenes, evaluate on held-out ones and the real keyframe.

    Prints the AP tables, saves the model to ``<out>/model`` and writes ``<out>/bev_synthetic.png``,
    ``<out>/bev_nuscenes.png`` and ``<out>/camera_depth.png``; then trains the core depth head on
    synthetic camera images with projected-LiDAR targets and prints AbsRel/RMSE on held-out
    synthetic and real images (``<out>/depth_model``). The metrics go to ``<out>/metrics.json``.

    Args:
        args: parsed :func:`add_demo_arguments` options.
    """
    from vlsdk.train.distributed import barrier, init_from_env
    from vlsdk_driving.metrics import format_ap_table
    from vlsdk_driving.nuscenes_adapter import NuScenesDataset
    from vlsdk_driving.nuscenes_eval import report_devkit_evaluation
    from vlsdk_driving.nuscenes_source import NuScenesSource
    from vlsdk_driving.synth import NuScenesSceneSynthesizer, SceneRandomization

    t0 = time.perf_counter()
    quick = args.quick
    epochs = args.epochs or (8 if quick else 40)
    train_scenes = args.train_scenes or (10 if quick else 200)
    test_scenes = args.test_scenes or (3 if quick else 20)
    batch_size = args.batch_size or (4 if quick else 16)
    backbone = args.backbone or ("tiny" if quick else "small")
    res = args.resolution or (0.5 if quick else 0.2)
    half = args.half_range or (32.0 if quick else 51.2)
    grid = BEVGrid((-half, half), (-half, half), (-5.0, 3.0), res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    threads = args.threads or (1 if quick and torch.device(args.device).type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    rand = SceneRandomization(area=min(30.0, half - 2), azimuth_steps=(500, 900) if quick else (600, 1100))
    rank, world = init_from_env(args.device)  # joins torchrun's process group (a no-op in one process)
    lead = rank == 0
    if lead:
        print(f"[driving] grid {grid.shape} at {res} m, backbone {backbone!r}, device {args.device}, "
              f"{train_scenes} train / {test_scenes} test scenes, {epochs} epochs"
              + (f", {world} ranks" if world > 1 else ""))
        NuScenesSceneSynthesizer(train_scenes, 4, camera_channel=None, randomization=rand).write(
            out / "data" / "train", args.seed)
        test_ds = NuScenesSceneSynthesizer(test_scenes, 3, randomization=rand)(
            args.seed + 10_000, out / "data" / "test")
        test = [test_ds[i] for i in range(len(test_ds))]
    barrier()  # the other ranks read the training scenes rank 0 wrote
    train_ds = NuScenesDataset(out / "data" / "train", camera_channels=())
    train = [train_ds[i] for i in range(len(train_ds))]
    if lead:
        print(f"[driving] wrote and loaded {len(train)} + {len(test)} synthetic samples through nuscenes-devkit "
              f"({time.perf_counter() - t0:.1f} s)")
    detector = build_detector(grid, backbone=backbone)
    budget = args.max_train_seconds if args.max_train_seconds is not None else (25.0 if quick else None)
    trained = train_detector(detector, train, epochs=epochs, batch_size=batch_size, lr=args.lr,
                             device=args.device, amp=None if args.amp == "none" else args.amp, seed=args.seed,
                             progress=not args.no_progress and lead, max_seconds=budget, out_dir=out / "train")
    if not lead:
        return 0  # rank 0 evaluates, draws and saves
    final_loss = trained.train[-1]["loss"]
    stopped = " (time budget reached)" if trained.out_of_time else ""
    print(f"[driving] {trained.step} steps{stopped}, final loss {final_loss:.3f}; training curves in "
          f"{out / 'train'} ({time.perf_counter() - t0:.1f} s)")
    amp = None if args.amp == "none" else args.amp
    preds = predict(detector, test, device=args.device, amp=amp, batch_size=batch_size)
    synth_result = evaluate_detector(preds, test, grid)
    print(format_ap_table(synth_result, "held-out synthetic scenes (nuscenes-devkit center-distance AP, "
                                        f"{time.perf_counter() - t0:.1f} s)"))
    metrics: dict[str, Any] = {"synthetic": synth_result, "steps": trained.step, "final_loss": final_loss,
                               "out_of_time": trained.out_of_time}
    metrics["synthetic_devkit"] = report_devkit_evaluation(  # submission JSON + DetectionEval: mAP, NDS, TP errors
        test_ds, preds, out / "nuscenes_eval" / "synthetic", "held-out synthetic scenes (nuscenes-devkit DetectionEval)")
    render_bev(test[0], preds[0], out / "bev_synthetic.png", grid,
               title="held-out synthetic scene: ground truth (green), predictions (red)")
    real_root = args.nuscenes or _default_nuscenes()
    if real_root is not None:
        real_ds = NuScenesSource.from_args(args).open(real_root, min_distance=1.0)
        real = [real_ds[i] for i in range(len(real_ds))]
        real_preds = predict(detector, real, device=args.device, amp=amp)
        real_result = evaluate_detector(real_preds, real, grid)
        print(format_ap_table(real_result, f"real nuScenes keyframe(s) in {real_root} "
                                           f"({time.perf_counter() - t0:.1f} s)"))
        metrics["nuscenes"] = real_result
        metrics["nuscenes_devkit"] = report_devkit_evaluation(
            real_ds, real_preds, out / "nuscenes_eval" / "nuscenes", f"{real_root} (nuscenes-devkit DetectionEval)")
        render_bev(real[0], real_preds[0], out / "bev_nuscenes.png", grid,
                   title=f"real nuScenes {real[0].token[:12]}: ground truth (green), predictions (red)")
        cam = "CAM_FRONT" if "CAM_FRONT" in real[0].cameras else next(iter(real[0].cameras), None)
        if cam is not None:
            render_camera_depth(real[0], cam, out / "camera_depth.png")
    else:
        real = []
        print("[driving] no real nuScenes data found; pass --nuscenes DATAROOT to evaluate on it")
        render_camera_depth(test[0], "CAM_FRONT", out / "camera_depth.png")
    depth_steps = (0 if quick else 2000) if args.depth_steps is None else args.depth_steps
    if depth_steps > 0:  # camera depth: the core depth head supervised by projected LiDAR (sparse targets)
        depth_ds = NuScenesSceneSynthesizer(3 if quick else 50, 4, randomization=rand)(
            args.seed + 20_000, out / "data" / "depth")
        depth_model = train_camera_depth([depth_ds[i] for i in range(len(depth_ds))], "CAM_FRONT",
                                         steps=depth_steps, device=args.device, amp=amp, seed=args.seed,
                                         progress=not args.no_progress, max_seconds=6.0 if quick else None)
        depth_result = {"synthetic": evaluate_camera_depth(depth_model, test, "CAM_FRONT", device=args.device)}
        real_cams = [s for s in real if "CAM_FRONT" in s.cameras]
        if real_cams:
            depth_result["nuscenes"] = evaluate_camera_depth(depth_model, real_cams, "CAM_FRONT", device=args.device)
        for name, r in depth_result.items():
            print(f"[driving] camera depth on {name} CAM_FRONT: AbsRel {r['abs_rel']:.3f}, RMSE {r['rmse']:.2f} m "
                  f"over {r['pixels']} LiDAR pixels ({time.perf_counter() - t0:.1f} s)")
        metrics["depth"] = depth_result
        depth_model.save_pretrained(out / "depth_model")
    detector.save(out / "model")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    car = synth_result["ap"].get("car", {}).get(2.0)
    print(f"[driving] car AP@2m on held-out synthetic scenes: {car if car is None else round(car, 3)}; "
          f"model in {out / 'model'}; pictures in {out} ({time.perf_counter() - t0:.1f} s)")
    return 0

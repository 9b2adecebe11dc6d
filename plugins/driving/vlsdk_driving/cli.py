"""``vlsdk driving-detect``: the command of the earlier release, now the ``driving.bev`` task (and ``driving.depth``).

Its flags are mapped onto the tasks' settings and run by the task runner
(:func:`vlsdk.tasks.runner.train`): ``--quick`` takes the task's quick settings, ``--nuscenes`` is
``data``, ``--amp`` is ``precision``, ``--backbone`` is ``model``, ``--range`` is ``half_range``,
``--max-train-seconds`` is ``max_seconds`` (25 s with ``--quick``), ``--threads`` sets torch's CPU
threads (1 with ``--quick`` on a CPU), and ``--depth-steps N`` then trains ``driving.depth`` for N
steps into ``<out>/depth``. Prefer ``vlsdk train examples/configs/driving_bev.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlsdk_driving.nuscenes_source import NuScenesSource, add_source_arguments

__all__ = ["add_demo_arguments", "bev_settings", "depth_settings", "run_demo"]


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command's options to ``parser``.

    Args:
        parser: the (sub)parser.
    """
    parser.add_argument("--quick", action="store_true", help="small CPU run for CI (the task's quick settings)")
    parser.add_argument("--out", type=Path, default=Path("runs/driving_lidar_detection"), help="output folder")
    parser.add_argument("--nuscenes", type=Path, default=None,
                        help="nuScenes-format dataroot to evaluate on (required; e.g. ../shared/data/nuscenes_mini)")
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
    parser.add_argument("--max-train-seconds", type=float, default=None,
                        help="stop training after this long (default: 25 s with --quick, else none)")
    parser.add_argument("--depth-steps", type=int, default=None,
                        help="camera-depth (driving.depth) training steps (default: 0 = skipped with --quick, 2000 full)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 with --quick on a CPU, which is fastest on shared "
                             "2-core runners, else torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_source_arguments(parser)  # --version, --lidar-channel, --camera-channels, --category-map of --nuscenes


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def bev_settings(args: argparse.Namespace) -> Any:
    """The ``driving.bev`` settings of the parsed flags (the task's quick settings under ``--quick``).

    Raises:
        ValueError: no ``--nuscenes`` folder, or a flag value the settings reject.
    """
    from vlsdk.settings import settings_from
    from vlsdk_driving.bev_task import BEVTask

    if args.nuscenes is None:
        raise ValueError("no nuScenes-format folder to evaluate on: pass --nuscenes DATAROOT "
                         "(e.g. --nuscenes ../shared/data/nuscenes_mini)")
    task = BEVTask()
    source = NuScenesSource.from_args(args)
    values = {**(task.quick if args.quick else {}), **_given({
        "data": args.nuscenes, "out": args.out, "device": args.device, "precision": "off" if args.amp == "none"
        else args.amp, "epochs": args.epochs, "train_scenes": args.train_scenes, "test_scenes": args.test_scenes,
        "batch_size": args.batch_size, "lr": args.lr, "model": args.backbone, "resolution": args.resolution,
        "half_range": args.half_range, "seed": args.seed, "version": source.version,
        "lidar_channel": source.lidar_channel, "category_map": source.category_map,
        "max_seconds": args.max_train_seconds if args.max_train_seconds is not None else (25.0 if args.quick else None),
    }), "camera_channels": source.camera_channels, "progress": not args.no_progress}
    return settings_from(task.settings_type, values, "vlsdk driving-detect")


def depth_settings(args: argparse.Namespace, steps: int) -> Any:
    """The ``driving.depth`` settings of ``--depth-steps`` and the shared flags (into ``<out>/depth``)."""
    from vlsdk.settings import settings_from
    from vlsdk_driving.depth_task import DepthTask

    task, source = DepthTask(), NuScenesSource.from_args(args)
    values = {**(task.quick if args.quick else {}), **_given({
        "data": args.nuscenes, "out": Path(args.out) / "depth", "device": args.device, "seed": args.seed,
        "precision": "off" if args.amp == "none" else args.amp, "test_scenes": args.test_scenes,
        "version": source.version, "lidar_channel": source.lidar_channel}),
        "max_steps": steps, "progress": not args.no_progress}
    return settings_from(task.settings_type, values, "vlsdk driving-detect --depth-steps")


def run_demo(args: argparse.Namespace) -> int:
    """Train ``driving.bev`` with the flags' settings (then ``driving.depth`` with ``--depth-steps``).

    Prints the AP tables and the devkit summaries, writes ``<out>/model``, ``<out>/metrics.json``,
    ``<out>/predictions.png`` and ``<out>/report/`` (and ``<out>/depth/...``).

    Args:
        args: parsed :func:`add_demo_arguments` options.

    Returns:
        0, or 2 with the error printed for bad flags or data.
    """
    import sys

    import torch

    from vlsdk.demo import QUICK_NOTE
    from vlsdk.tasks.runner import train

    if getattr(args, "quick", False):
        print(f"[driving-detect] --quick: {QUICK_NOTE}", flush=True)
    from vlsdk_driving.bev_task import BEVTask
    from vlsdk_driving.depth_task import DepthTask

    try:
        settings = bev_settings(args)
        depth_steps = (0 if args.quick else 2000) if args.depth_steps is None else args.depth_steps
        depth = depth_settings(args, depth_steps) if depth_steps > 0 else None
    except ValueError as exc:
        print(f"vlsdk driving-detect: error: {exc}", file=sys.stderr)
        return 2
    threads = args.threads or (1 if args.quick and torch.device(args.device).type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    try:
        result = train(BEVTask(), settings)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vlsdk driving-detect: error: {exc}", file=sys.stderr)
        return 2
    if result.model_dir is not None:  # rank 0 (the others train only)
        print(f"[driving] {result.steps} steps; car AP@2m on "
              f"{'held-out synthetic scenes' if settings.test_scenes else settings.data}: "
              f"{result.metrics['car_ap_2m']:.3f}; model in {result.model_dir}; "
              f"metrics in {settings.out / 'metrics.json'} ({result.seconds:.1f} s)")
    if depth is not None:  # every rank trains it, as the BEV stage
        done = train(DepthTask(), depth)
        if done.model_dir is None:
            return 0
        print(f"[driving] camera depth ({done.steps} steps): AbsRel {done.metrics['abs_rel']:.3f}, "
              f"delta<1.25 {done.metrics['delta1']:.3f}, RMSE {done.metrics['rmse']:.2f} m on "
              f"{done.metrics['pixels']} LiDAR pixels; model in {done.model_dir}")
    return 0

"""LiDAR 3D detection with vlsdk: train on synthetic nuScenes-format scenes, evaluate on held-out ones
and on the real nuScenes keyframe in ../shared/data/nuscenes_mini.

    python examples/driving_lidar_detection.py --quick            # CPU, < 60 s (CI); --depth-steps 30 adds camera depth
    python examples/driving_lidar_detection.py --device cuda --amp bf16 --epochs 40   # full run on a GPU

The same is ``vlsdk driving-detect --nuscenes DATAROOT [options]`` and, with the task's own settings,
``vlsdk train examples/configs/driving_bev.yaml data=DATAROOT``: the ``driving.bev`` task run by the
task runner. Prints the AP tables (nuscenes-devkit center-distance matching) and the devkit's mAP/NDS,
saves the model and writes a BEV picture of the predictions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlsdk_driving.cli import add_demo_arguments, run_demo

#: The shared real keyframe this example evaluates on unless --nuscenes names another folder.
SHARED_NUSCENES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuscenes_mini"


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the ``driving.bev`` task.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(parser)
    parser.set_defaults(nuscenes=SHARED_NUSCENES)
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

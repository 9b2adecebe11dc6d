"""LiDAR 3D detection with vlsdk: train on synthetic nuScenes-format scenes, evaluate on held-out ones
and on the real nuScenes keyframe in ../shared/data/nuscenes_mini.

    python examples/driving_lidar_detection.py --quick            # CPU, < 60 s (CI); --depth-steps 30 adds camera depth
    python examples/driving_lidar_detection.py --device cuda --amp bf16 --epochs 40   # full run on a GPU

The same is ``vlsdk driving-detect [options]``. Prints the AP tables (nuscenes-devkit center-distance
matching), saves the model and writes a BEV picture and a camera image with projected LiDAR depth.
"""

from __future__ import annotations

import argparse
import sys

from vlsdk_driving.pipeline import add_demo_arguments, run_demo


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the demo.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(parser)
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

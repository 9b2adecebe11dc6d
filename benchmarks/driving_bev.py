"""BEV encoding throughput on the real nuScenes sweep (34,688 points): sweeps per second.

Run from the repository root::

    python benchmarks/driving_bev.py                  # CPU, default grid (+-51.2 m, 0.2 m: 512 x 512)
    python benchmarks/driving_bev.py --device cuda    # GPU (synchronised timing)
    python benchmarks/driving_bev.py --device cuda --batch 16   # + 16 sweeps per call, side by side
    python benchmarks/driving_bev.py --forward edge --range 32 --resolution 0.5
        # + the detector's forward on the pseudo-image: full pyramid against max_stride, side by side

Target (issue 6): >= 20 sweeps/s on the 2-core CPU, >= 1000 sweeps/s on an H100. The sweep is
read through the nuScenes adapter (nuscenes-devkit) from ../shared/data/nuscenes_mini; the timed
loop encodes the same sweep, already on the device, ``--repeats`` times (batch of one) in
``--blocks`` timed blocks and reports the median block.

``--forward CONFIG`` also times the detector (``build_detector``: backbone ``CONFIG``, random
weights, the ``driving.bev_detection`` head) on that pseudo-image, once computing the encoder's
whole pyramid and once with ``max_stride`` = the head's coarsest level (the later stages skipped),
in alternating blocks; it reports both, their ratio and whether the head outputs are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from vlsdk_driving.bev import BEVGrid, PillarEncoder
from vlsdk_driving.nuscenes_adapter import NuScenesDataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuscenes_mini"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints and returns the figures (``sweeps_per_s`` ...)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="nuScenes dataroot (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=200, help="sweeps encoded in all")
    parser.add_argument("--blocks", type=int, default=10, help="timed blocks (the median block is reported)")
    parser.add_argument("--resolution", type=float, default=0.2, help="cell size in metres")
    parser.add_argument("--range", type=float, default=51.2, help="half extent of the square grid in metres")
    parser.add_argument("--z-bins", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=1,
                        help="sweeps per encoder call, as a training batch passes them; >1 also times batch 1 "
                             "side by side")
    parser.add_argument("--forward", metavar="CONFIG", default=None,
                        help="also time the detector's forward (backbone CONFIG, e.g. tiny or edge): full pyramid "
                             "against max_stride = the head's coarsest level, side by side")
    parser.add_argument("--forward-iters", type=int, default=3, help="forward calls per timed block")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sample = NuScenesDataset(args.data, camera_channels=())[0]
    points = torch.from_numpy(sample.points).to(args.device)
    grid = BEVGrid((-args.range, args.range), (-args.range, args.range), (-5.0, 3.0), args.resolution)
    enc = PillarEncoder(grid, z_bins=args.z_bins, point_fields=sample.point_fields)
    sync = torch.cuda.synchronize if points.is_cuda else (lambda: None)
    sizes = sorted({1, args.batch})
    calls = {b: [points] * b for b in sizes}
    for b in sizes:
        for _ in range(3):
            out = enc(calls[b])
    sync()
    blocks: dict[int, list[float]] = {b: [] for b in sizes}  # median of timed blocks: robust to other work
    per_block = max(1, args.repeats // args.blocks)
    for _ in range(args.blocks):  # interleave the batch sizes so drift hits both alike
        for b in sizes:
            n_calls = max(1, per_block // b)
            start = time.perf_counter()
            for _ in range(n_calls):
                out = enc(calls[b])
            sync()
            blocks[b].append((time.perf_counter() - start) / (n_calls * b))  # seconds per sweep
    median = statistics.median(blocks[1])
    results = {
        "benchmark": "driving_bev", "device": str(points.device), "threads": torch.get_num_threads(),
        "points": int(points.shape[0]), "grid": list(grid.shape), "channels": int(out.shape[1]),
        "sweeps_per_s": round(1 / median, 1), "ms_per_sweep": round(1000 * median, 3),
        "best_sweeps_per_s": round(1 / min(blocks[1]), 1), "blocks": args.blocks, "sweeps_per_block": per_block,
    }
    if args.batch > 1:
        batched = statistics.median(blocks[args.batch])
        results.update({"batch": args.batch, "batched_sweeps_per_s": round(1 / batched, 1),
                        "batched_over_single": round(median / batched, 2)})
    if args.forward:
        results.update(time_forward(args.forward, grid, sample.point_fields, enc([points]), args.blocks,
                                    args.forward_iters, sync))
    print(json.dumps(results))
    return results


def time_forward(config: str, grid: BEVGrid, point_fields: tuple[str, ...], bev: torch.Tensor, blocks: int,
                 iters: int, sync: Any) -> dict[str, Any]:
    """Median ms of the detector's forward on ``bev``: every stage against ``max_stride``, and their ratio."""
    from vlsdk_driving.detector import build_detector

    torch.manual_seed(0)
    detector = build_detector(grid, backbone=config, point_fields=point_fields)
    model = detector.model.to(bev.device).eval()
    max_stride = max(detector.head.strides)
    variants = {"full": None, "max_stride": max_stride}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        outs = {k: model(bev, heads=["bev"], max_stride=v)["bev"] for k, v in variants.items()}  # + warm-up
        identical = all(torch.equal(a, getattr(outs["max_stride"], name)) for name, a in vars(outs["full"]).items()
                        if a is not None)
        for _ in range(blocks):  # alternate, so drift hits both alike
            for k, v in variants.items():
                start = time.perf_counter()
                for _ in range(iters):
                    model(bev, heads=["bev"], max_stride=v)
                sync()
                times[k].append((time.perf_counter() - start) / iters)
    full, pruned = (statistics.median(times[k]) for k in variants)
    return {"forward_config": config, "encoder_strides": list(model.encoder.strides),
            "head_strides": sorted(detector.head.strides), "forward_full_ms": round(1000 * full, 2),
            "forward_max_stride_ms": round(1000 * pruned, 2), "forward_speedup": round(full / pruned, 2),
            "forward_bit_identical": identical}


if __name__ == "__main__":
    main()

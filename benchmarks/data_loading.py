"""Input-pipeline samples/s per CPU worker, per stage, variants side by side in one run.

One process, no GPU: what a single DataLoader worker does for each training sample, timed stage
by stage, with the variants interleaved repeat by repeat (same indices, same augmentation seed)
and the median of the repeats reported:

- ``decode``: the dataset's item before the transform (JPEG decode or RAM cache; BraTS: a slice view
  of the volumes, which the dataset loads into RAM when it is built);
- ``transform``: the training augmentations (``industrial.default`` at 640 px; the medical MONAI
  pipeline of ``lesion_train_set``);
- ``collate``: the batch's collate function, per sample;
- ``ipc``: what handing the batch to the trainer costs the worker: the batch tensors copied into
  shared memory (``share_memory_``) and everything else pickled and unpickled.

Industrial variants: ``jpeg+float`` (before: decode every JPEG pair, ``samples.collate`` to float
NCHW with the images pickled again in the sample list, ``A.GaussNoise``), ``uint8+GaussNoise``
(:class:`DeepPCBDataset` ``cache="uint8"``, :func:`collate_uint8`: uint8 NHWC, float on the GPU;
still ``A.GaussNoise``), ``uint8-cache`` and ``packed-cache`` (the same with the default
:class:`~vlsdk_industrial.noise.Int16GaussNoise`; ``packed``: bit-packed cache).

    python benchmarks/data_loading.py                         # both domains, 8 repeats of 32
    python benchmarks/data_loading.py --domain industrial --repeats 5 --batch-size 16
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("decode", "transform", "collate", "ipc")


@dataclass
class Variant:
    """One input pipeline: ``item(i)`` before the transform, ``transform``, ``collate``."""

    name: str
    item: Callable[[int], Any]
    transform: Callable[[Any], Any]
    collate: Callable[[list[Any]], Any]


def _ipc(batch: Any) -> None:
    """A worker's cost of sending ``batch``: tensors into shared memory, the rest pickled (and loaded)."""
    import torch

    tensors: list[torch.Tensor] = []

    def strip(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            tensors.append(x)
            return None
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [strip(v) for v in x]
        return x

    rest = strip(batch)
    for t in tensors:
        t.share_memory_()
    pickle.loads(pickle.dumps(rest, protocol=pickle.HIGHEST_PROTOCOL))


def time_batch(variant: Variant, indices: Sequence[int]) -> dict[str, float]:
    """Seconds per sample of each stage for one batch of ``indices``."""
    clock = time.perf_counter
    decode = transform = 0.0
    out = []
    for i in indices:
        t0 = clock()
        raw = variant.item(i)
        t1 = clock()
        out.append(variant.transform(raw))
        t2 = clock()
        decode, transform = decode + t1 - t0, transform + t2 - t1
    t0 = clock()
    batch = variant.collate(out)
    t1 = clock()
    _ipc(batch)
    t2 = clock()
    n = len(indices)
    return {"decode": decode / n, "transform": transform / n, "collate": (t1 - t0) / n, "ipc": (t2 - t1) / n}


def run(variants: Sequence[Variant], size: int, *, repeats: int, batch_size: int, seed: int) -> dict[str, dict]:
    """Interleave ``variants`` over ``repeats`` batches; median seconds per sample per stage."""
    import numpy as np

    rng = np.random.default_rng(seed)
    times: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    for v in variants:  # warm-up: imports, first-call allocations
        time_batch(v, rng.integers(0, size, 2).tolist())
    for r in range(repeats):
        indices = rng.integers(0, size, batch_size).tolist()
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            times[v.name].append(time_batch(v, indices))
    result = {}
    for name, rows in times.items():
        med = {s: statistics.median(row[s] for row in rows) for s in STAGES}
        med["total"] = statistics.median(sum(row[s] for s in STAGES) for row in rows)
        result[name] = med
    return result


def report(domain: str, result: dict[str, dict]) -> None:
    """Print per-stage milliseconds per sample, samples/s per worker and the ratio to the first variant."""
    first = next(iter(result.values()))["total"]
    print(f"\n{domain}: ms per sample (median), samples/s per worker, speed-up vs the first row")
    print(f"{'variant':<17}" + "".join(f"{s:>11}" for s in (*STAGES, "total")) + f"{'samples/s':>11}{'ratio':>8}")
    for name, med in result.items():
        print(f"{name:<17}" + "".join(f"{1e3 * med[s]:>11.2f}" for s in (*STAGES, "total"))
              + f"{1 / med['total']:>11.1f}{first / med['total']:>8.2f}")


def industrial_variants(data: Path, pairs: int | None, seed: int) -> tuple[list[Variant], int]:
    """Before (JPEG + float collate, then the uint8 cache with ``A.GaussNoise``) and the default cached
    pipelines with :class:`~vlsdk_industrial.noise.Int16GaussNoise`, each with its own seeded transform."""
    from vlsdk_industrial.deeppcb import DeepPCBDataset
    from vlsdk.data.collate import collate_uint8
    from vlsdk_industrial.samples import collate
    from vlsdk_industrial.transforms import build_transforms

    variants = []
    datasets: dict[str, Any] = {}
    for name, cache, coll, int16_noise in (("jpeg+float", "none", collate, False),
                                           ("uint8+GaussNoise", "uint8", collate_uint8, False),
                                           ("uint8-cache", "uint8", collate_uint8, True),
                                           ("packed-cache", "packed", collate_uint8, True)):
        if cache not in datasets:
            t0 = time.perf_counter()
            datasets[cache] = ds = DeepPCBDataset(data, "trainval", template=True, max_samples=pairs, cache=cache)
            built = time.perf_counter() - t0
            print(f"cache={cache}: {len(ds)} pairs, cache {ds.cache_bytes / 2**20:.0f} MiB, built in {built:.1f} s")
        ds = datasets[cache]
        tf = build_transforms(train=True, size=640, seed=seed, int16_noise=int16_noise)
        variants.append(Variant(name, ds.__getitem__, tf, coll))
    return variants, len(ds)


def medical_variants(data: Path, seed: int) -> tuple[list[Variant], int]:
    """The lesion training set of ``lesion_train_set`` (full config) and its MONAI transforms."""
    from vlsdk_medical.dataset import collate_samples
    from vlsdk_medical.lesion_settings import LesionSettings
    from vlsdk_medical.task import lesion_train_set

    train_set = lesion_train_set(LesionSettings(data=data, seed=seed))
    n = len(train_set.index)
    print(f"monai: {n} slices of {len(train_set.cases)} patients in RAM")
    # decode = the raw slice (views of the volumes in RAM); transform = the dataset's item, which
    # takes that view again (microseconds) and runs its seeded MONAI pipeline
    return [Variant("monai", lambda i: (i, train_set.raw(i)), lambda pair: train_set[pair[0]], collate_samples)], n


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", choices=("industrial", "medical", "all"), default="all")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    p.add_argument("--pairs", type=int, default=None, help="DeepPCB trainval pairs to load (default all 1,000)")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import cv2
    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker
    cv2.setNumThreads(0)
    print(f"one worker: torch threads {torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}, "
          f"{os.cpu_count()} CPUs visible")
    results = {}
    if args.domain in ("industrial", "all"):
        variants, n = industrial_variants(args.data / "deeppcb", args.pairs, args.seed)
        results["industrial"] = run(variants, n, repeats=args.repeats, batch_size=args.batch_size, seed=args.seed)
        report("industrial (DeepPCB + template, industrial.default at 640 px)", results["industrial"])
    if args.domain in ("medical", "all"):
        variants, n = medical_variants(args.data / "brats_lesion_mri", args.seed)
        results["medical"] = run(variants, n, repeats=args.repeats, batch_size=args.batch_size, seed=args.seed)
        report("medical (BraTS lesion slices, lesion_train_set MONAI transforms)", results["medical"])
    return results


if __name__ == "__main__":
    main()

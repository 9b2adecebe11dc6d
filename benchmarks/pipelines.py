"""End-to-end latency and throughput of each domain pipeline's inference model, per backend.

For the three domain pipelines, the inference model is built with the plugin's own builder and
timed, interleaved and side by side in one run, on three backends: PyTorch eager,
``torch.compile`` (after warm-up) and onnxruntime CPU (exported with
:func:`vlsdk.export.to_onnx`, run through :class:`vlsdk.export.OnnxModel`). Batch 1 gives the
latency (ms), ``--batch`` the throughput (items/s).

Pipelines and what the timed region holds (inputs already on the device; untimed: building the
inputs, export, compilation):

- ``medical``: lesion segmentation, ``VLModel(config, in_chans=1|2)`` + ``lesion`` segmentation
  head (1 class: whole tumour) + ``medical.lesion`` expert, as
  ``vlsdk_medical.task.LesionTask.build_model`` builds it. Timed: one ``--medical-size``
  window of FLAIR (+ T1c) per item through ``vlsdk_medical.inference.model_predictor``
  (forward + sigmoid) and the threshold to a label map. Not timed: the sliding-window tiling of
  full slices and the per-volume brain mask / largest-component post-processing (they depend on
  the volume, not on the model).
- ``industrial``: PCB defect detection, ``vlsdk_industrial.task.build_detector`` (``pcb``
  detection head + ``industrial.pcb_defect`` expert), 2-channel boards (board + template) of
  ``--industrial-size`` px. Timed: ``uint8 (B, H, W, 2)`` boards -> float (``images_to_float``),
  forward, ``head.decode`` (score threshold, top-k, class-wise NMS), as the pipeline's
  ``evaluate`` does.
- ``driving``: LiDAR BEV detection, ``vlsdk_driving.detector.build_detector`` (``PillarEncoder`` +
  ``driving.lidar`` expert + ``driving.bev_detection`` head). Timed: the point cloud -> BEV
  pseudo-image encoding (the ``PillarEncoder``, always eager PyTorch: its ``unique`` /
  ``scatter_reduce`` have data-dependent shapes), forward, ``head.decode`` (heatmap peaks, boxes,
  circle NMS). The sweep is the real nuScenes-mini LiDAR sweep when ``--data`` holds it, else one
  synthetic sweep (``vlsdk_driving.synth``); each item of a batch is that sweep.

The weights are random (seeded): decoding costs depend on how many candidates pass the score
threshold, so they are those of an untrained model. ``--dtype bfloat16``/``float16`` runs the
PyTorch backends under autocast, as the pipelines' ``amp`` option does; onnxruntime rows are
float32 and CPU only (left out with ``--device cuda``). Each case is warmed up, then the backends
of one pipeline and batch take turns over ``--repeats`` timed blocks of the same number of calls
(the median block counts), so load drift on a shared machine hits them alike. Before timing, the
batch's head outputs of ``torch.compile`` and onnxruntime are compared with eager
(``parity_max_abs``; onnxruntime runs the dense all-experts MoE path, eager the sparse one).

Run time is mostly ``torch.compile``: one compilation per pipeline and batch size (6 by
default), each about 1-2 min on 2 shared CPU cores with a cold inductor cache (the default run
took ~10 min there, ~35 s of it timing); later runs reuse inductor's on-disk cache.
``--backends eager onnx`` leaves compilation out.

    python benchmarks/pipelines.py                                  # CPU, edge config, small sizes
    python benchmarks/pipelines.py --only industrial --industrial-size 640 --batch 8
    python benchmarks/pipelines.py --device cuda --dtype bfloat16 --config small --batch 64 \\
        --industrial-size 640 --grid-range 51.2 --grid-resolution 0.2 --out runs/pipelines_h100
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PIPELINES = ("medical", "industrial", "driving")
BACKENDS = ("eager", "compile", "onnx")
NUSCENES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuscenes_mini"


@dataclass
class Pipeline:
    """One domain's inference path, split where the backends differ.

    Attributes:
        name: ``medical`` / ``industrial`` / ``driving``.
        model: the eager ``VLModel`` (eval mode, on the device).
        head: the head's name in the model.
        image_size: ``(H, W)`` of the model's input (the ONNX graph's fixed size).
        inputs: ``batch -> raw inputs`` on the device (untimed).
        encode: raw inputs -> model images (timed, PyTorch eager for every backend).
        forward: ``(model or OnnxModel or compiled, images) -> head output`` (timed).
        decode: head output -> the pipeline's prediction (timed).
        timed: what the timed region holds, in words.
        item: what one item of a batch is.
    """

    name: str
    model: Any
    head: str
    image_size: tuple[int, int]
    inputs: Callable[[int], Any]
    encode: Callable[[Any], torch.Tensor]
    forward: Callable[[Any, torch.Tensor], Any]
    decode: Callable[[Any], Any]
    timed: str
    item: str


def _tensors(output: Any) -> dict[str, torch.Tensor]:
    """The tensors of a head output (tensor, dataclass or dict), by field name."""
    if isinstance(output, torch.Tensor):
        return {"": output}
    items = vars(output).items() if dataclasses.is_dataclass(output) else dict(output).items()
    return {k: v for k, v in items if isinstance(v, torch.Tensor)}


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference over the tensors two head outputs share (``inf`` on a shape mismatch)."""
    ta, tb = _tensors(a), _tensors(b)
    worst = 0.0
    for key in ta.keys() & tb.keys():
        x, y = ta[key].detach().float().cpu(), tb[key].detach().float().cpu()
        if x.shape != y.shape:
            return float("inf")
        worst = max(worst, float((x - y).abs().max()) if x.numel() else 0.0)
    return worst


def medical(args: argparse.Namespace, device: torch.device) -> Pipeline:
    """Lesion segmentation: the model ``LesionTask.build_model`` builds, on synthetic MRI windows."""
    import vlsdk
    from vlsdk_medical.inference import model_predictor
    from vlsdk_medical.synth import LesionSynthesizer

    # vlsdk_medical builds the model inline (LesionTask.build_model, demo); these are its three lines
    model = vlsdk.VLModel(args.config, in_chans=args.medical_channels)
    model.add_head("lesion", task="segmentation", num_classes=1)
    if model.moe_layers:
        model.add_expert("medical.lesion", init_bias=0.0)
    size = args.medical_size
    synth = LesionSynthesizer((size, size), channels=args.medical_channels)
    pool = torch.stack([synth(seed)["image"] for seed in range(4)]).to(device)

    def inputs(batch: int) -> torch.Tensor:
        return pool[torch.arange(batch) % len(pool)].contiguous()

    def forward(m: Any, images: torch.Tensor) -> torch.Tensor:
        return model_predictor(m, "lesion")(images)  # forward + sigmoid (the pipeline's predictor)

    def decode(probs: torch.Tensor) -> torch.Tensor:
        return (probs[:, 0] > 0.5).long()  # LesionSettings.threshold

    return Pipeline("medical", model, "lesion", (size, size), inputs, lambda x: x, forward, decode,
                    timed="model_predictor (forward + sigmoid) + threshold; no sliding window, no LCC",
                    item=f"{args.medical_channels}x{size}x{size} window")


def industrial(args: argparse.Namespace, device: torch.device) -> Pipeline:
    """PCB defect detection: ``build_detector`` on synthetic 2-channel boards, decoded as ``evaluate`` does."""
    from vlsdk.data.collate import collate_uint8, images_to_float
    from vlsdk.tasks.detection import float_output
    from vlsdk_industrial.task import HEAD, build_detector
    from vlsdk_industrial.synth import BoardSynthesizer

    model = build_detector(args.config, in_chans=2)
    size = args.industrial_size
    synth = BoardSynthesizer(size, template=True)
    boards, _, _ = collate_uint8([synth(seed) for seed in range(4)])  # uint8 (4, H, W, 2)
    boards = boards.to(device)
    head = model.heads[HEAD]

    def inputs(batch: int) -> torch.Tensor:
        return boards[torch.arange(batch, device=device) % len(boards)].contiguous()

    def forward(m: Any, images: torch.Tensor) -> Any:
        return m(images, heads=[HEAD])[HEAD]

    def decode(out: Any) -> Any:
        return head.decode(float_output(out))

    return Pipeline("industrial", model, HEAD, (size, size), inputs, images_to_float, forward, decode,
                    timed="uint8 boards -> float, forward, head.decode (threshold, top-k, NMS)",
                    item=f"2x{size}x{size} board")


def _sweep(args: argparse.Namespace) -> tuple[np.ndarray, tuple[str, ...], str]:
    """One LiDAR sweep: the real nuScenes-mini one if ``--data`` has it, else a synthetic one."""
    from vlsdk_driving.nuscenes_adapter import NuScenesDataset

    if args.data and (Path(args.data) / "v1.0-mini").is_dir():
        sample = NuScenesDataset(args.data, camera_channels=())[0]
        return sample.points, tuple(sample.point_fields), "nuScenes-mini"
    from vlsdk_driving.synth import NuScenesSceneSynthesizer

    with tempfile.TemporaryDirectory(prefix="vlsdk_pipelines_") as root:
        sample = NuScenesSceneSynthesizer(1, 1, camera_channel=None)(seed=0, root=root)[0]
        return sample.points, tuple(sample.point_fields), "synthetic"


def driving(args: argparse.Namespace, device: torch.device) -> Pipeline:
    """LiDAR BEV detection: ``build_detector`` (encoder, backbone, head) on one sweep per item."""
    from vlsdk_driving.bev import BEVGrid
    from vlsdk_driving.heads import BEVDetectionOutput
    from vlsdk_driving.detector import build_detector

    points, fields, source = _sweep(args)
    half = args.grid_range
    grid = BEVGrid((-half, half), (-half, half), (-5.0, 3.0), args.grid_resolution)
    detector = build_detector(grid, backbone=args.config, point_fields=fields)
    cloud = torch.from_numpy(points).to(device)
    head = detector.head

    def forward(m: Any, bev: torch.Tensor) -> Any:
        out = m(bev, heads=["bev"])["bev"]
        return BEVDetectionOutput(**out) if isinstance(out, dict) else out  # OnnxModel: field -> tensor

    return Pipeline("driving", detector.model, "bev", grid.shape, lambda batch: [cloud] * batch,
                    detector.encoder, forward, head.decode,
                    timed="points -> BEV (PillarEncoder, eager), forward, head.decode (peaks, circle NMS)",
                    item=f"{source} sweep of {len(points)} points -> {grid.shape[0]}x{grid.shape[1]} grid")


BUILDERS: dict[str, Callable[[argparse.Namespace, torch.device], Pipeline]] = {
    "medical": medical, "industrial": industrial, "driving": driving}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def time_backends(pipe: Pipeline, runners: dict[str, Any], raw: Any, args: argparse.Namespace,
                  device: torch.device) -> dict[str, dict[str, float]]:
    """Seconds per call of each runner (median block), the runners taking turns block by block."""

    def call(runner: Any, autocast: bool) -> Any:
        images = pipe.encode(raw)
        with _autocast(device, args.dtype) if autocast else contextlib.nullcontext():
            out = pipe.forward(runner, images)
        return pipe.decode(out)

    autocast = {name: name != "onnx" for name in runners}
    first = {}
    for name, runner in runners.items():  # warm-up (compile's first calls compile)
        for _ in range(args.warmup):
            call(runner, autocast[name])
        _sync(device)
        t0 = time.perf_counter()
        call(runner, autocast[name])
        _sync(device)
        first[name] = time.perf_counter() - t0
    # the same number of calls per block for every backend, about --block-seconds for the slowest
    iters = args.iters or max(1, round(args.block_seconds / max(first.values())))
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(iters):
                call(runner, autocast[name])
            _sync(device)
            wall[name].append((time.perf_counter() - t0) / iters)
            cpu[name].append((time.process_time() - c0) / iters)
    return {name: {"seconds": statistics.median(wall[name]), "cpu_seconds": statistics.median(cpu[name]),
                   "iters": iters} for name in runners}


def run_pipeline(pipe: Pipeline, args: argparse.Namespace, device: torch.device, folder: Path) -> dict[str, Any]:
    """Export, compile, check parity and time one pipeline at batch 1 and ``--batch``."""
    from vlsdk.export import OnnxModel, to_onnx

    model = pipe.model.to(device).eval()
    backends = [b for b in args.backends if b != "onnx" or device.type == "cpu"]
    result: dict[str, Any] = {"timed": pipe.timed, "item": pipe.item, "image_size": list(pipe.image_size),
                              "in_chans": model.config.in_chans, "cases": [], "parity_max_abs": {},
                              "seconds": {}}
    onnx_model = None
    if "onnx" in backends:
        t0 = time.perf_counter()
        path = to_onnx(model.cpu(), folder / f"{pipe.name}.onnx", image_size=pipe.image_size)
        model.to(device)
        onnx_model = OnnxModel(path, threads=torch.get_num_threads())
        result["seconds"]["export"] = time.perf_counter() - t0
        result["onnx_mib"] = path.stat().st_size / 2**20
    with torch.inference_mode():
        for batch in sorted({1, args.batch}):
            raw = pipe.inputs(batch)
            runners: dict[str, Any] = {"eager": model}
            if "compile" in backends:
                torch._dynamo.reset()
                runners["compile"] = torch.compile(model, dynamic=False, mode=args.compile_mode)
            if onnx_model is not None:
                runners["onnx"] = onnx_model
            if batch == args.batch:  # parity of the head outputs on the large batch, before timing
                images = pipe.encode(raw)
                with _autocast(device, args.dtype):
                    ref = pipe.forward(model, images)
                t0 = time.perf_counter()
                for name, runner in runners.items():
                    if name == "eager":
                        continue
                    with _autocast(device, args.dtype) if name != "onnx" else contextlib.nullcontext():
                        out = pipe.forward(runner, images)
                    if name == "compile":
                        result["seconds"]["compile_first_call"] = time.perf_counter() - t0
                    result["parity_max_abs"][name] = max_abs_diff(ref, out)
            timings = time_backends(pipe, {b: runners[b] for b in backends if b in runners}, raw, args, device)
            for name, t in timings.items():
                result["cases"].append({
                    "backend": name, "batch": batch, "ms_per_batch": 1e3 * t["seconds"],
                    "ms_per_item": 1e3 * t["seconds"] / batch, "items_per_s": batch / t["seconds"],
                    "cpu_ms_per_batch": 1e3 * t["cpu_seconds"], "iters": t["iters"]})
    for batch in sorted({1, args.batch}):
        eager = next(c for c in result["cases"] if c["backend"] == "eager" and c["batch"] == batch)
        for c in result["cases"]:
            if c["batch"] == batch:
                c["speedup_over_eager"] = c["items_per_s"] / eager["items_per_s"]
    return result


def format_table(results: dict[str, Any], batch: int) -> str:
    """One line per pipeline and backend: batch-1 latency, batch-``batch`` throughput, speed-ups, parity."""
    head = (f"{'pipeline':10s} {'backend':8s} {'b1 ms':>9s} {'x eager':>7s} {f'b{batch} ms':>10s} "
            f"{f'b{batch} items/s':>13s} {'x eager':>7s} {'parity':>8s}  item; timed region")
    lines = [head]
    for name, r in results["pipelines"].items():
        for backend in BACKENDS:
            one = [c for c in r["cases"] if c["backend"] == backend and c["batch"] == 1]
            big = [c for c in r["cases"] if c["backend"] == backend and c["batch"] == batch]
            if not one:
                continue
            one, big = one[0], (big or one)[0]
            parity = r["parity_max_abs"].get(backend)
            par = "-" if parity is None else f"{parity:.1e}"
            lines.append(f"{name:10s} {backend:8s} {one['ms_per_batch']:9.2f} {one['speedup_over_eager']:6.2f}x "
                         f"{big['ms_per_batch']:10.1f} {big['items_per_s']:13.1f} {big['speedup_over_eager']:6.2f}x "
                         f"{par:>8s}  " + (f"{r['item']}; {r['timed']}" if backend == "eager" else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; prints the table, writes ``<out>/pipelines.json`` and returns the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=PIPELINES, default=list(PIPELINES), help="pipelines to time")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                   help="backends to time (eager is always timed: the speed-ups are relative to it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="autocast dtype of the PyTorch backends (onnxruntime stays float32)")
    p.add_argument("--config", default="edge", help="backbone config of every pipeline (tiny, edge, small, base)")
    p.add_argument("--batch", type=int, default=8, help="the large batch (throughput); batch 1 is always timed")
    p.add_argument("--medical-size", type=int, default=128, help="window side (the pipeline's roi_size)")
    p.add_argument("--medical-channels", type=int, default=2, choices=[1, 2], help="FLAIR (+ T1c)")
    p.add_argument("--industrial-size", type=int, default=320, help="board side (DeepPCB: 640)")
    p.add_argument("--grid-range", type=float, default=32.0, help="half extent of the BEV grid, metres")
    p.add_argument("--grid-resolution", type=float, default=0.5, help="BEV cell size, metres")
    p.add_argument("--data", default=str(NUSCENES),
                   help="nuScenes dataroot of the real sweep (default: %(default)s); '' or a folder without "
                        "v1.0-mini: one synthetic sweep")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and onnxruntime CPU threads (default: torch's, i.e. OMP_NUM_THREADS)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: inductor's default)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per backend first")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per backend (the median counts)")
    p.add_argument("--iters", type=int, default=None, help="calls per block (default: ~--block-seconds)")
    p.add_argument("--block-seconds", type=float, default=0.3, help="target length of a block of the slowest backend")
    p.add_argument("--out", type=Path, default=Path("runs/pipelines"))
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch and --repeats must be >= 1, --warmup >= 0")
    if args.industrial_size % 32 or args.industrial_size < 64:
        p.error(f"--industrial-size must be a multiple of 32 and >= 64, got {args.industrial_size}")
    args.backends = ["eager", *(b for b in args.backends if b != "eager")]
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    load = [math.nan]
    with contextlib.suppress(OSError, AttributeError):
        import os

        load = [os.getloadavg()[0]]
    results: dict[str, Any] = {
        "setting": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": load[0],
        "pipelines": {}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlsdk_pipelines_onnx_") as tmp:
        for name in args.only:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            pipe = BUILDERS[name](args, device)
            r = run_pipeline(pipe, args, device, Path(tmp))
            r["seconds"]["total"] = time.perf_counter() - t0
            results["pipelines"][name] = r
            print(f"{name}: {pipe.item}; {r['seconds']['total']:.0f} s", flush=True)
    with contextlib.suppress(OSError, AttributeError):
        import os

        results["load_average_end"] = os.getloadavg()[0]
    results["total_seconds"] = time.perf_counter() - t_start
    print(f"\npipelines: {args.config} config, {results['device']}, torch {torch.__version__}, {args.dtype}, "
          f"{results['threads']} threads, load {results['load_average']:.1f}-"
          f"{results.get('load_average_end', math.nan):.1f}; median of {args.repeats} interleaved blocks")
    print(format_table(results, args.batch))
    path = args.out / "pipelines.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()

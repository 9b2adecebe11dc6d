"""Encoder throughput of every named config beside plain ViT-B/16 and ViT-L/16, measured in one run.

Forward only (inference), weights and inputs in ``--dtype``, one batch shape per image size. Each
case is warmed up, then timed over ``--repeats`` blocks of ``--iters`` forwards (the median block
counts); on CUDA, timings are synchronised and peak memory is read per case. ``--compile`` adds a
``torch.compile``-d twin of each case. ``--scaling CONFIG`` also times that config over image and
batch sizes and draws ``scaling.png`` (time and memory against batch size, a line per image size).
On the CPU, where PyTorch keeps no peak statistics, each scaling case runs in a fresh process and its
peak memory is that process's peak resident set above the one it had before building the model
(weights, activations and allocator caches, as a user's process sees them; Linux, ``/proc``).
``--compile-mode`` picks one or more ``torch.compile`` modes (``reduce-overhead`` = CUDA graphs),
each timed as its own case beside eager; ``--fullgraph`` makes any graph break an error, and
``--freeze`` turns on inductor freezing (weights as constants: the MoE's stacked expert weights
are folded once instead of re-stacked per call). ``--channels-last`` puts the model and the input in
``torch.channels_last`` (the CNN stem's convolutions run NHWC on GPU tensor cores). ``--train``
also times an eager training step per model (forward, backward of the outputs' mean, AdamW;
float32 weights, autocast in ``--dtype``) and prints its samples/s against the references.
``timm_vit_b16`` is timm's ``vit_base_patch16_224`` (random weights), where timm is installed.

Host work per forward (aten ops, host syncs): ``benchmarks/host_work.py``.

    python benchmarks/throughput.py                                            # CPU, small shapes
    OMP_NUM_THREADS=1 python benchmarks/throughput.py --models base --scaling base --scaling-sizes 224 384 512 \\
        --scaling-batches 1 4 16                   # CPU scaling: time and peak memory, a process per case
    python benchmarks/throughput.py --device cuda --dtype bfloat16 --size 224 --size 512 --compile \\
        --scaling base --out runs/throughput
    python benchmarks/throughput.py --device cuda --dtype bfloat16 --models base vit_b16 --compile \\
        --compile-mode default reduce-overhead max-autotune --fullgraph --freeze
    python benchmarks/throughput.py --device cuda --dtype bfloat16 --models base --size 224 --channels-last
    python benchmarks/throughput.py --device cuda --dtype bfloat16 --models base base@depths=2,10 vit_b16 \\
        --compile --profile                        # config ablations, GPU kernel time by kind
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder_flops import PlainViT  # noqa: E402

from vlsdk.inspect.kernels import kernel_breakdown  # noqa: E402
from vlsdk.models.config import get_config  # noqa: E402
from vlsdk.models.encoder import HybridEncoder  # noqa: E402

def _timm_vit_b16() -> nn.Module:
    """timm's ``vit_base_patch16_224`` (random weights, no classifier): the peer users compare with (needs timm)."""
    import timm  # not a vlsdk dependency: only this reference needs it

    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)


REFERENCES: dict[str, Callable[[], nn.Module]] = {
    "vit_b16": lambda: PlainViT(768, 12, 12),
    "vit_l16": lambda: PlainViT(1024, 24, 16),
    "timm_vit_b16": _timm_vit_b16,
}


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _suffix(mode: str | None) -> str:
    """Case-name suffix of a compile mode: ``""`` (eager), ``" +compile"``, ``" +compile:reduce-overhead"``."""
    return "" if mode is None else " +compile" + ("" if mode == "default" else f":{mode}")


def build(name: str) -> nn.Module:
    """A named vlsdk config (``base``, ``small-patch`` for the plain-stem variant) or a reference ViT.

    ``@field=value`` overrides config fields for ablations (:func:`vlsdk.models.config.get_config`):
    ``base@depths=4,8@patch_size=2``, ``base@top_k=2``, ``base@stem_entry=resnet``. A ``+aten`` suffix
    keeps the MoE layers off their Triton inference kernels (``DynamicMoE.fused = False``), e.g. ``base+aten``.
    """
    if name in REFERENCES:
        return REFERENCES[name]()
    name, aten, _ = name.partition("+aten")
    name, at, overrides = name.partition("@")
    config, _, variant = name.partition("-")
    cfg = get_config(config + at + overrides)
    if variant:
        cfg = cfg.replace(stem=variant)
    model = HybridEncoder(cfg)
    for layer in model.moe_layers if aten else ():
        layer.fused = False
    return model


def profile_case(model: nn.Module, x: torch.Tensor, iters: int = 5) -> dict[str, float]:
    """GPU kernel time of one forward by kind (:func:`vlsdk.inspect.kernels.kernel_breakdown`), printed."""
    with torch.inference_mode():
        report = kernel_breakdown(lambda: model(x), iters=iters, device=x.device)
    print("  " + str(report).replace("\n", "\n  "))
    return report.by_kind | {"kernel_ms": report.total_ms}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, iters: int, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` blocks of ``iters`` calls, after ``warmup`` calls."""
    return time_call_host(fn, device, iters, repeats, warmup)[0]


def time_call_host(fn: Callable[[], object], device: torch.device, iters: int, repeats: int,
                   warmup: int = 3) -> tuple[float, float]:
    """:func:`time_call`, and the median host CPU seconds (this thread's) spent issuing one call.

    On a GPU the host CPU time is the host work of an eager call (dispatch, launches, Python); it
    is steadier than wall time on a shared host, since time the thread waits for a core is not in it.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    blocks, host = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(iters):
            fn()
        c1 = time.thread_time()
        _sync(device)
        blocks.append((time.perf_counter() - t0) / iters)
        host.append((c1 - c0) / iters)
    return statistics.median(blocks), statistics.median(host)


def time_forward(model: nn.Module, x: torch.Tensor, iters: int, repeats: int, warmup: int = 3) -> float:
    """Median seconds per forward over ``repeats`` blocks of ``iters`` forwards."""
    return time_forward_host(model, x, iters, repeats, warmup)[0]


def time_forward_host(model: nn.Module, x: torch.Tensor, iters: int, repeats: int,
                      warmup: int = 3) -> tuple[float, float]:
    """Median seconds per forward and host CPU seconds per forward (:func:`time_call_host`)."""
    with torch.inference_mode():
        return time_call_host(lambda: model(x), x.device, iters, repeats, warmup)


def measure(name: str, size: int, batch: int, args: argparse.Namespace,
            compiled: str | None = None) -> dict[str, float]:
    """Images/s and peak memory of one case; ``compiled`` is a ``torch.compile`` mode (``None``: eager)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build(name).to(device, dtype, memory_format=memory_format).eval()
    if compiled is not None:
        torch._dynamo.reset()
        model = torch.compile(model, mode=compiled, fullgraph=args.fullgraph)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds, host = time_forward_host(model, x, args.iters, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    result = {"images_per_s": batch / seconds, "ms_per_batch": seconds * 1e3, "host_cpu_ms": host * 1e3,
              "peak_mib": peak}
    if getattr(args, "profile", False) and device.type == "cuda":
        result["kernels_ms"] = profile_case(model, x)
    return result


def _floats(value: object) -> list[torch.Tensor]:
    """The floating tensors of a model's output (a tensor, list, tuple, dict or dataclass of them)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    elif hasattr(value, "__dataclass_fields__"):
        value = [getattr(value, f) for f in value.__dataclass_fields__]
    return [t for v in value for t in _floats(v)] if isinstance(value, (list, tuple)) else []


def measure_train(name: str, size: int, batch: int, args: argparse.Namespace,
                  optimizer_impl: str = "foreach") -> dict[str, float]:
    """Samples/s of an eager training step: forward, backward of the mean of every output, AdamW step.

    Float32 weights and optimiser state; ``--dtype`` other than float32 runs the forward under
    ``torch.autocast`` in that dtype, as mixed-precision training does.
    """
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = build(name).to(device).train()
    fused = optimizer_impl == "fused"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    x = torch.randn(batch, 3, size, size, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = sum(t.float().mean() for t in _floats(model(x)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_call(step, device, args.iters, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    result = {"images_per_s": batch / seconds, "ms_per_batch": seconds * 1e3, "peak_mib": peak}
    if getattr(args, "profile", False) and device.type == "cuda":
        report = kernel_breakdown(step, iters=3, top=30, device=device)
        print("  " + str(report).replace("\n", "\n  "))
        result["kernels_ms"] = report.by_kind | {"kernel_ms": report.total_ms}
    return result


def _mib(peak: float) -> str:
    """Peak memory for the log (NaN, printed as ``-``, where it is not read: the CPU outside ``--scaling``)."""
    return "       - MiB" if math.isnan(peak) else f"{peak:8.0f} MiB"


def _rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from ``/proc/self/status``, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**10
    raise RuntimeError(f"/proc/self/status has no {field}")


def _measure_fresh(name: str, size: int, batch: int, args: argparse.Namespace) -> dict[str, float]:
    """Run in a fresh process: :func:`measure`, with ``peak_mib`` the peak resident set above the start."""
    torch.set_num_threads(args.threads)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident set
        before = _rss_mib("VmRSS")
    except OSError:  # not Linux: no per-process peak reset, so no memory figure
        return measure(name, size, batch, args)
    result = measure(name, size, batch, args)
    return result | {"peak_mib": _rss_mib("VmHWM") - before}


def measure_in_process(name: str, size: int, batch: int, args: argparse.Namespace) -> dict[str, float]:
    """:func:`measure` in a fresh (spawned) process, so that its peak memory is its own; for the CPU."""
    import concurrent.futures
    import multiprocessing

    args = argparse.Namespace(**vars(args), threads=torch.get_num_threads())
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measure_fresh, name, size, batch, args).result()


def scaling(config: str, args: argparse.Namespace, out: Path) -> list[dict[str, float]]:
    """Time and memory of ``config`` over image sizes and batch sizes; writes ``scaling.png``."""
    rows = []
    for size in args.scaling_sizes:
        for batch in args.scaling_batches:
            try:
                r = measure(config, size, batch, args) if args.device.startswith("cuda") else \
                    measure_in_process(config, size, batch, args)
            except torch.OutOfMemoryError:
                break
            rows.append({"size": size, "batch": batch, **r})
            print(f"scaling {config:8s} {size:5d}px batch {batch:4d}: {r['ms_per_batch']:9.2f} ms "
                  f"{r['images_per_s']:9.1f} img/s peak {_mib(r['peak_mib'])}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no scaling.png (pip install 'vlsdk[plot]')")
        return rows
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for size in args.scaling_sizes:
        sel = [r for r in rows if r["size"] == size]
        b = [r["batch"] for r in sel]
        axes[0].plot(b, [r["ms_per_batch"] for r in sel], marker="o", label=f"{size}px")
        axes[1].plot(b, [r["peak_mib"] for r in sel], marker="o", label=f"{size}px")
    for ax, label in zip(axes, ("ms per batch", "peak memory (MiB)"), strict=True):
        ax.set_xscale("log", base=2)
        if any(line.get_ydata().size and (line.get_ydata() > 0).all() for line in ax.get_lines()):
            ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{config} encoder, {args.dtype}, {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    print(f"wrote {out / 'scaling.png'}")
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--size", type=int, action="append", help="image size (repeatable); default 224")
    p.add_argument("--batch", type=int, default=None, help="batch at 224 px (default 128 on CUDA, 4 on CPU); "
                   "scaled by (224/size)^2 for larger sizes")
    p.add_argument("--models", nargs="+", default=["edge", "small", "base", "vit_b16", "vit_l16"])
    p.add_argument("--compile", action="store_true", help="also time torch.compile-d models")
    p.add_argument("--compile-mode", nargs="+", default=["default"], choices=COMPILE_MODES,
                   help="torch.compile modes to time with --compile, one case each (reduce-overhead = CUDA graphs)")
    p.add_argument("--fullgraph", action="store_true", help="compile with fullgraph=True (graph breaks fail the case)")
    p.add_argument("--freeze", action="store_true", help="inductor freezing: parameters folded as constants")
    p.add_argument("--channels-last", action="store_true",
                   help="model and input in torch.channels_last (NHWC convolutions in the CNN stem)")
    p.add_argument("--profile", action="store_true",
                   help="CUDA: print each case's GPU kernel time by kind (conv, gemm, attention, ...) and top kernels")
    p.add_argument("--iters", type=int, default=None, help="forwards per timed block (default 10 CUDA, 1 CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks (median counts)")
    p.add_argument("--train", action="store_true",
                   help="also time an eager training step (forward, backward, AdamW; autocast in --dtype)")
    p.add_argument("--optimizer", nargs="+", default=["foreach"], choices=["foreach", "fused"],
                   help="AdamW implementation(s) of the --train step (fused: one kernel per group); several: "
                        "each model is timed with each, side by side")
    p.add_argument("--scaling", default=None, metavar="CONFIG", help="also sweep image and batch size for CONFIG")
    p.add_argument("--scaling-sizes", type=int, nargs="+", default=[224, 384, 512, 768])
    p.add_argument("--scaling-batches", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--out", type=Path, default=Path("runs/throughput"))
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.iters = args.iters or (10 if cuda else 1)
    base_batch = args.batch or (128 if cuda else 4)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.freeze:
        torch._inductor.config.freezing = True
    args.out.mkdir(parents=True, exist_ok=True)
    modes: list[str | None] = [None, *(args.compile_mode if args.compile else [])]
    suffixes = [_suffix(m) for m in modes]
    results: dict = {"setting": vars(args) | {"out": str(args.out)}, "cases": []}
    for size in args.size or [224]:
        batch = max(1, round(base_batch * (224 / size) ** 2))
        by_name: dict[str, dict[str, float]] = {}
        for name in args.models:
            for compiled in modes:
                key = name + _suffix(compiled)
                try:
                    r = measure(name, size, batch, args, compiled)
                except Exception as err:  # report the case and go on with the others
                    print(f"{key:38s} {size:5d}px batch {batch:4d}: failed: {type(err).__name__}: {err}"[:300])
                    continue
                by_name[key] = r
                results["cases"].append({"model": key, "size": size, "batch": batch, **r})
                print(f"{key:38s} {size:5d}px batch {batch:4d}: {r['images_per_s']:9.1f} img/s "
                      f"{r['ms_per_batch']:9.2f} ms/batch (host CPU {r['host_cpu_ms']:7.2f} ms) "
                      f"peak {_mib(r['peak_mib'])}", flush=True)
        for suffix in suffixes:
            for ours, ref in ((m, r) for r in REFERENCES for m in args.models if m not in REFERENCES):
                if ours + suffix in by_name and ref + suffix in by_name:
                    ratio = by_name[ours + suffix]["images_per_s"] / by_name[ref + suffix]["images_per_s"]
                    print(f"ratio {size}px{suffix}: {ours} / {ref} images/s = {ratio:.2f}x")
                    results[f"{ours}_over_{ref}@{size}{suffix.replace(' +', '_')}"] = ratio
        if args.train:
            trained: dict[str, dict[str, float]] = {}
            for impl in args.optimizer:
                tag = f" train step ({impl} AdamW)" if len(args.optimizer) > 1 else " train step"
                for name in args.models:
                    try:
                        trained[name + tag] = r = measure_train(name, size, batch, args, impl)
                    except Exception as err:  # report the case and go on with the others
                        print(f"{name + tag:38s} {size:5d}px: failed: {type(err).__name__}: {err}"[:300])
                        continue
                    results["cases"].append({"model": name + tag, "size": size, "batch": batch, **r})
                    print(f"{name + tag:38s} {size:5d}px batch {batch:4d}: {r['images_per_s']:9.1f} img/s "
                          f"{r['ms_per_batch']:9.2f} ms/batch peak {_mib(r['peak_mib'])}", flush=True)
                for ours, ref in ((m, r) for r in REFERENCES for m in args.models if m not in REFERENCES):
                    if ours + tag in trained and ref + tag in trained:
                        ratio = trained[ours + tag]["images_per_s"] / trained[ref + tag]["images_per_s"]
                        print(f"ratio {size}px{tag}: {ours} / {ref} samples/s = {ratio:.2f}x")
                        key = f"{ours}_over_{ref}@{size}_train" + ("" if len(args.optimizer) == 1 else f"_{impl}")
                        results[key] = ratio
            for name in args.models if len(args.optimizer) > 1 else ():
                a, b = (trained.get(f"{name} train step ({impl} AdamW)") for impl in args.optimizer[:2])
                if a and b:
                    print(f"speed-up {size}px train step: {name} {args.optimizer[1]} / {args.optimizer[0]} AdamW = "
                          f"{b['images_per_s'] / a['images_per_s']:.2f}x")
        for name in args.models:
            for suffix in suffixes[1:]:
                if name in by_name and name + suffix in by_name:
                    speedup = by_name[name + suffix]["images_per_s"] / by_name[name]["images_per_s"]
                    print(f"speed-up {size}px: {name}{suffix} / eager = {speedup:.2f}x")
    if args.scaling:
        results["scaling"] = scaling(args.scaling, args, args.out)
    dev = torch.cuda.get_device_name() if cuda else "cpu"
    layout = ", channels_last" if args.channels_last else ""
    print(f"setting: {dev}, torch {torch.__version__}, {args.dtype}{layout}, "
          f"median of {args.repeats} blocks x {args.iters}")
    (args.out / "throughput.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

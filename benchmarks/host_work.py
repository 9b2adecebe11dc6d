"""Host work of one eager inference forward: aten ops dispatched and host syncs, side by side per model.

Measured on the CPU and deterministically: the aten ops one eval forward dispatches (batch 1,
``--size`` pixels, under ``torch.no_grad()``), how many of them read a tensor's value on the host
(``.item()``, ``.tolist()``, ``bool(t)``, ops whose output shape depends on the data such as
``nonzero``: each one a device sync on the GPU), and the median CPU (thread) time of that forward,
for each of ``--models``. On a GPU every op is a kernel launch, so the count is what an eager
forward pays in host time. Models with MoE layers are counted on both of their paths: ``loop``
(the CPU default: one call per expert, with a host read of the split sizes) and ``grouped`` (what
bf16 on CUDA runs: grouped GEMMs, no host read). ``--detail`` adds the ops per source function;
``--dtype bfloat16`` counts the bf16 model (the casts a bf16 CUDA forward makes).

    python benchmarks/host_work.py --models base small vit_b16 [--detail] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

if "--fused" in sys.argv:  # Triton reads it when first imported (some torch imports below import it)
    os.environ["TRITON_INTERPRET"] = "1"
import time
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _floats, build  # noqa: E402

from vlsdk.ops import triton_launch  # noqa: E402

#: aten ops whose output shape depends on tensor values, or that copy a value to the host
_HOST_SYNC_OPS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2",
                            "unique_consecutive", "unique_dim", "repeat_interleave", "is_nonzero", "equal",
                            "bincount", "histc"})
#: tensor methods that hand a value to Python (on a GPU tensor: a device sync each)
_HOST_READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"})


def _source() -> str:
    """``file:function`` of the innermost vlsdk (or benchmark model) frame on the Python stack."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if "/vlsdk/" in path or path.endswith("encoder_flops.py"):
            return f"{Path(path).name}:{frame.f_code.co_qualname}"
        frame = frame.f_back
    return "?"


class HostWork(TorchDispatchMode):
    """Counts the aten ops a region dispatches, per source function, and its host reads.

    A host read is a tensor value handed to Python (``.item()``, ``.tolist()``, ``bool(t)``, ...; seen
    through a ``TorchFunctionMode``) or an op whose output shape depends on the data (``nonzero``,
    boolean indexing, ...): on a GPU each one waits for the device. On the CPU nothing waits, but the
    same calls are made, so the count is the one a CUDA forward would have.

    Example:
        >>> with HostWork() as work:
        ...     _ = torch.ones(3).sum().item()
        >>> work.ops, work.syncs
        (3, 1)
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()
        self.sync_sites: Counter[str] = Counter()
        self._reads = _Reads(self)
        self._in_read = 0

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())

    @property
    def syncs(self) -> int:
        return sum(self.sync_sites.values())

    def __enter__(self) -> HostWork:
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._reads.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if triton_launch.launching():  # Triton's CPU interpreter at work inside one (counted) kernel launch
            return func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        self.by_op[name] += 1
        self.by_source[_source()] += 1
        bool_index = name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                             for i in (args[1] if len(args) > 1 and args[1] else ()))
        if not self._in_read and (name in _HOST_SYNC_OPS or bool_index):
            self.sync_sites[f"{name} in {_source()}"] += 1
        return func(*args, **(kwargs or {}))


class _Reads(TorchFunctionMode):
    def __init__(self, work: HostWork) -> None:
        super().__init__()
        self.work = work

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = getattr(func, "__name__", "")
        if name not in _HOST_READS:
            return func(*args, **(kwargs or {}))
        self.work.sync_sites[f".{name}() in {_source()}"] += 1
        self.work._in_read += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.work._in_read -= 1


def op_count(names: list[str], size: int, repeats: int = 7, detail: bool = False,
             dtype: torch.dtype = torch.float32, fused: bool = False) -> list[dict]:
    """Aten ops (plus Triton launches), host reads and CPU milliseconds of one eval forward of each
    model (batch 1, CPU); ``fused`` adds the MoE path with the Triton kernels (in the interpreter)."""
    rows = []
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    for name in names:
        torch.manual_seed(0)
        model = build(name).to(dtype).eval()
        layers = getattr(model, "moe_layers", [])
        for path in ((["loop", "grouped"] + (["fused"] if fused else [])) if layers else ["dense"]):
            for layer in layers:
                layer.grouped = path != "loop"
                layer.fused = path == "fused"
            with torch.no_grad():
                model(x)  # warm-up: caches (position embedding, stacked expert weights) are filled
                launched = sum(triton_launch.LAUNCHES.values())
                with HostWork() as work:
                    model(x)
                launches = sum(triton_launch.LAUNCHES.values()) - launched
                times = []
                for _ in range(repeats):
                    t0 = time.thread_time()
                    model(x)
                    times.append(time.thread_time() - t0)
            row = {"model": name, "path": path, "size": size, "ops": work.ops + launches, "aten_ops": work.ops,
                   "kernel_launches": launches, "host_syncs": work.syncs,
                   "cpu_ms": statistics.median(times) * 1e3, "sync_sites": dict(work.sync_sites),
                   "ops_by_source": dict(work.by_source.most_common())}
            rows.append(row)
            print(f"{name + ' ' + path:22s} {size:4d}px: {row['ops']:5d} ops ({launches} kernel launches) "
                  f"{row['host_syncs']:4d} host syncs "
                  f"{row['cpu_ms']:8.1f} ms CPU per forward", flush=True)
            if detail:
                for source, n in work.by_source.most_common():
                    print(f"    {n:5d}  {source}")
                for site, n in work.sync_sites.items():
                    print(f"    sync x{n}: {site}")
    ref = {r["model"]: r for r in rows if r["path"] == "dense"}
    for r in rows:
        for other in ref.values():
            if r["path"] != "dense":
                print(f"ratio {r['model']} {r['path']} / {other['model']}: {r['ops'] / other['ops']:.2f}x ops, "
                      f"{r['cpu_ms'] / other['cpu_ms']:.2f}x CPU time")
    return rows


def train_op_count(names: list[str], size: int, detail: bool = False) -> list[dict]:
    """Aten ops of one eager training step of each model (batch 2, CPU): forward under bf16 autocast
    (float32 weights, the MoE layers on their grouped path, as on CUDA), backward of the outputs'
    mean, AdamW (foreach) step. The backward runs on the calling thread on the CPU, so its ops are
    counted too (on CUDA the autograd engine's device thread runs them: the same ops)."""
    rows = []
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    for name in names:
        torch.manual_seed(0)
        model = build(name).train()
        for layer in getattr(model, "moe_layers", []):
            layer.grouped = True
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            loss = sum(t.float().mean() for t in _floats(out))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up: optimiser state, caches
        with HostWork() as work:
            step()
        row = {"model": name, "path": "train step", "size": size, "ops": work.ops, "host_syncs": work.syncs,
               "ops_by_source": dict(work.by_source.most_common())}
        rows.append(row)
        print(f"{name + ' train step':22s} {size:4d}px: {row['ops']:5d} aten ops {row['host_syncs']:4d} host syncs",
              flush=True)
        if detail:
            for source, n in work.by_source.most_common(25):
                print(f"    {n:5d}  {source}")
    for r in rows[:-1]:
        print(f"ratio {r['model']} / {rows[-1]['model']} train step: {r['ops'] / rows[-1]['ops']:.2f}x ops")
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["base", "small", "vit_b16"])
    p.add_argument("--size", type=int, default=64, help="image size (default 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--detail", action="store_true", help="ops per source function and each sync site")
    p.add_argument("--train", action="store_true",
                   help="count the ops of one training step instead (bf16 autocast, backward, AdamW); the last "
                        "model is the reference of the ratios")
    p.add_argument("--fused", action="store_true",
                   help="also count the MoE path with the Triton kernels (vlsdk.models.moe_kernels), each launch "
                        "counted as an op; on the CPU they run in Triton's interpreter (TRITON_INTERPRET=1)")
    p.add_argument("--out", type=Path, default=Path("runs/host_work"))
    args = p.parse_args(argv)
    if args.train:
        rows = train_op_count(args.models, args.size, detail=args.detail)
    else:
        rows = op_count(args.models, args.size, detail=args.detail, dtype=getattr(torch, args.dtype), fused=args.fused)
    print(f"setting: cpu, torch {torch.__version__}, {args.dtype}, {torch.get_num_threads()} threads, batch 1, "
          f"no_grad, median of 7 forwards (thread time)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"setting": vars(args) | {"out": str(args.out)}, "op_count": rows}
    (args.out / "op_count.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

"""vlsdk's PCB defect detector beside ultralytics YOLOv8s, measured the same way in one run.

Boards per second of each model on one resident batch of random boards (already on the device):
forward only, forward + decoding + NMS, and one training step. vlsdk is timed by
:func:`vlsdk_industrial.throughput.measure_throughput`, the function behind ``vlsdk pcb --benchmark``
(forward, ``decode`` with its score threshold 0.05, top-k and class-wise NMS), so its figures are
the ones that command prints. YOLOv8s is built from its yaml (``yolov8s.yaml``, random weights,
nothing downloaded), Conv+BN fused as its predictor's ``AutoBackend`` does, and timed as its
predictor runs it: the model's forward, then ``non_max_suppression`` with the predictor's defaults
(conf 0.25, iou 0.7, max_det 300, read from ``ultralytics.cfg``). Each case is warmed up
(``--warmup`` batches), then ``--repeats`` batches are timed one by one with device synchronisation;
the median counts. ``--compile`` adds a ``torch.compile``-d twin of each inference case. Both models
have random weights, whose heads are initialised to score every location below its threshold (vlsdk
0.05, YOLOv8s 0.25), so "forward + NMS" times the decoding with no candidate left for the NMS itself;
a trained model keeps more boxes and pays more there.

Precision (``--amp bf16``, the default on CUDA): vlsdk autocasts its fp32 weights to bf16, as
``vlsdk pcb --benchmark --amp bf16`` does; YOLOv8s runs with fp16 weights and input, as its
``half=True`` does (``--yolo-amp bf16`` puts it under the same bf16 autocast as vlsdk instead).
The output and the JSON say which ran. ultralytics never halves on the CPU, so neither does this.

The training step (eager): forward, the task's own loss, backward, clipping, optimiser step, on a
resident batch of ``--train-batch-size`` boards with ``--boxes`` random defects each. vlsdk: the
``industrial.pcb`` loss (:func:`vlsdk_industrial.task.detection_loss`) plus the MoE load-balancing
and z-losses, gradient clipping and AdamW with the :class:`vlsdk.train.Trainer` defaults, autocast
as ``--amp``. YOLOv8s: ``model.loss(batch)`` on the dict its trainer builds (``img``, ``cls``,
``bboxes`` normalised xywh, ``batch_idx``; ``model.args`` = ``ultralytics.cfg.get_cfg()``), then its
trainer's ``optimizer_step``: GradScaler, clipping at 10, AdamW (what ``optimizer=auto`` picks for a
DeepPCB-sized run, its parameter groups and learning rate), EMA update; under ``--amp`` its
``amp=True`` recipe (fp16 autocast and a GradScaler). No logging, no host syncs inside a step.

ultralytics is not a vlsdk dependency: without it the YOLOv8s rows are skipped (one line says so)
and the vlsdk rows still run. The import is done with ``YOLO_OFFLINE`` and ``YOLO_AUTOINSTALL``
off, so ultralytics neither probes the network nor installs anything.

    python benchmarks/pcb_vs_yolo.py                                     # CPU, tiny shapes
    python benchmarks/pcb_vs_yolo.py --device cuda --compile --out runs/pcb_vs_yolo   # 640 px, batch 64, bf16
    python benchmarks/pcb_vs_yolo.py --device cuda --yolo-amp bf16 --channels-last    # both under bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlsdk_industrial.samples import DEEPPCB_CLASSES
from vlsdk_industrial.task import HEAD, build_detector, detection_loss
from vlsdk_industrial.throughput import measure_throughput

PEER = "yolov8s"
SKIPPED = "ultralytics is not installed: YOLOv8s skipped (pip install ultralytics)"
#: The issue's targets: vlsdk / YOLOv8s boards/s, forward + NMS eager and the training step.
TARGETS = {"forward_nms": 1.0, "train": 0.75}
COLUMNS = ("forward", "forward_nms", "train")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls timed one by one, after ``warmup`` untimed calls.

    The pattern of :func:`vlsdk_industrial.throughput.measure_throughput`, so both models are timed alike.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_boxes(batch: int, size: int, boxes: int, num_classes: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``boxes`` random defects per board: xyxy pixels ``(batch, boxes, 4)`` and labels ``(batch, boxes)``.

    Sides of 2-8 % of the board (at least 2 px), as DeepPCB's small defects; the same boxes go to both models.
    """
    wh = (torch.rand(batch, boxes, 2, generator=generator) * 0.06 + 0.02) * size
    wh = wh.clamp(min=2.0)
    xy = torch.rand(batch, boxes, 2, generator=generator) * (size - wh)
    labels = torch.randint(0, num_classes, (batch, boxes), generator=generator)
    return torch.cat([xy, xy + wh], -1), labels


# --- vlsdk ------------------------------------------------------------------------------------------

def vlsdk_inference(args: argparse.Namespace, compiled: bool) -> dict[str, float]:
    """Boards/s of ``vlsdk pcb --benchmark`` with these settings: forward only and forward + decode + NMS."""
    torch.manual_seed(0)
    model = build_detector(args.config, in_chans=args.in_chans)
    if compiled:
        torch._dynamo.reset()
    r = measure_throughput(model, head=HEAD, batch_size=args.batch_size, image_size=args.image_size,
                           device=args.device, amp=args.amp, warmup=args.warmup, batches=args.repeats,
                           compile=compiled, dense_moe=args.dense_moe, channels_last=args.channels_last,
                           bf16_weights=args.bf16_weights)
    return {"forward": r.forward_boards_per_s, "forward_nms": r.boards_per_s}


def vlsdk_train(args: argparse.Namespace) -> float:
    """Boards/s of one eager optimiser step of the ``industrial.pcb`` task, as :class:`vlsdk.train.Trainer` runs it.

    Forward under autocast, the task's loss plus the MoE losses (the Trainer's weights), backward,
    gradient clipping, AdamW with the Trainer's parameter groups. Float32 weights and optimiser state.
    """
    from vlsdk.train.config import TrainConfig
    from vlsdk.train.trainer import _param_groups, _RouterLosses  # the Trainer's own parts, not copies

    device = torch.device(args.device)
    cfg = TrainConfig()
    torch.manual_seed(0)
    model = build_detector(args.config, in_chans=args.in_chans).to(device).train()
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    router = _RouterLosses(model)
    g = torch.Generator().manual_seed(0)
    n, size = args.train_batch_size, args.image_size
    images = torch.rand(n, args.in_chans, size, size, generator=g).to(device)
    boxes, labels = random_boxes(n, size, args.boxes, len(DEEPPCB_CLASSES), g)
    targets = [{"boxes": b.to(device), "labels": c.to(device)} for b, c in zip(boxes, labels, strict=True)]
    batch = (images, targets, [{} for _ in range(n)])
    amp = args.amp == "bf16"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            total = detection_loss(model, batch)["loss"].float()
        aux, z = router.take()
        if aux is not None:
            total = total + cfg.aux_loss_weight * aux + cfg.z_loss_weight * z
        total.backward()
        if cfg.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()

    try:
        seconds = median_seconds(step, device, args.warmup, args.repeats)
    finally:
        router.close()
    return n / seconds


# --- YOLOv8s (ultralytics) --------------------------------------------------------------------------

def import_ultralytics() -> tuple[Any, str | None]:
    """``(ultralytics module, None)``, or ``(None, why)`` where it cannot be imported."""
    os.environ.setdefault("YOLO_OFFLINE", "true")  # no connectivity probe, no analytics at import
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # never pip-installs a missing requirement
    os.environ.setdefault("YOLO_VERBOSE", "false")
    try:
        import ultralytics
    except ImportError as err:
        if err.name == "ultralytics":
            return None, SKIPPED
        return None, f"ultralytics could not be imported ({type(err).__name__}: {err}): YOLOv8s skipped"[:500]
    except Exception as err:  # a broken install (a torchvision built for another torch) must not stop the run
        return None, f"ultralytics could not be imported ({type(err).__name__}: {err}): YOLOv8s skipped"[:500]
    return ultralytics, None


def _nms_function() -> Callable[..., Any]:
    """ultralytics' ``non_max_suppression``: ``ultralytics.utils.nms`` in newer releases, ``utils.ops`` before."""
    try:
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:
        from ultralytics.utils.ops import non_max_suppression
    return non_max_suppression


def build_yolo(args: argparse.Namespace) -> nn.Module:
    """YOLOv8s from its yaml (random weights, nothing downloaded), DeepPCB's classes, ``--yolo-channels`` input."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel(f"{PEER}.yaml", ch=args.yolo_channels, nc=len(DEEPPCB_CLASSES), verbose=False)


def yolo_inference(args: argparse.Namespace, compiled: bool) -> dict[str, float]:
    """Boards/s of YOLOv8s as its predictor runs it: forward only and forward + ``non_max_suppression``."""
    from ultralytics.cfg import get_cfg

    device = torch.device(args.device)
    hyp = get_cfg()
    conf = hyp.conf or 0.25  # the predictor's default (None in default.yaml, 0.25 at predict time)
    nms = _nms_function()
    half = args.yolo_amp == "half"
    dtype = torch.float16 if half else torch.float32
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_yolo(args)
    with warnings.catch_warnings():
        # the fused convolutions' weights are not graph leaves: .to() reads their .grad and torch warns
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
        if args.fuse:
            model = model.fuse(verbose=False)  # AutoBackend(fuse=True), the predictor's default
        model = model.to(device, dtype, memory_format=fmt).eval()
    if compiled:
        torch._dynamo.reset()
    run = torch.compile(model) if compiled else model
    images = torch.rand(args.batch_size, args.yolo_channels, args.image_size, args.image_size,
                        device=device, dtype=dtype).contiguous(memory_format=fmt)
    autocast = args.yolo_amp == "bf16"

    def forward() -> object:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return run(images)

    def step() -> None:
        nms(forward(), conf, hyp.iou, agnostic=hyp.agnostic_nms, max_det=hyp.max_det, classes=hyp.classes)

    total = median_seconds(step, device, args.warmup, args.repeats)
    forward_only = median_seconds(forward, device, args.warmup, args.repeats)
    return {"forward": args.batch_size / forward_only, "forward_nms": args.batch_size / total}


def yolo_train(args: argparse.Namespace) -> float:
    """Boards/s of one eager step of ultralytics' trainer: ``model.loss(batch)``, backward, ``optimizer_step``."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.torch_utils import ModelEMA

    device = torch.device(args.device)
    hyp = get_cfg()
    model = build_yolo(args).to(device).train()
    model.args = hyp  # v8DetectionLoss reads its gains (box, cls, dfl) here, as the trainer sets it
    nc = len(DEEPPCB_CLASSES)
    # optimizer=auto for a DeepPCB-sized run (well under 10,000 iterations): AdamW, lr fitted to nc,
    # betas (0.9, 0.999); biases and norm weights without decay (BaseTrainer.build_optimizer)
    norms = tuple(v for k, v in nn.__dict__.items() if "Norm" in k)
    groups: tuple[list, list, list] = ([], [], [])
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            groups[2 if "bias" in name else 1 if isinstance(module, norms) else 0].append(p)
    decay = hyp.weight_decay * args.train_batch_size / hyp.nbs  # the trainer scales weight decay by batch
    optimizer = torch.optim.AdamW([{"params": groups[2], "weight_decay": 0.0},
                                   {"params": groups[0], "weight_decay": decay},
                                   {"params": groups[1], "weight_decay": 0.0}],
                                  lr=round(0.002 * 5 / (4 + nc), 6), betas=(0.9, 0.999))
    fp16 = args.yolo_amp == "half" and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    ema = ModelEMA(model)
    g = torch.Generator().manual_seed(0)
    n, size = args.train_batch_size, args.image_size
    images = torch.rand(n, args.yolo_channels, size, size, generator=g).to(device)
    boxes, labels = random_boxes(n, size, args.boxes, nc, g)
    xywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1) / size
    batch = {"img": images, "cls": labels.reshape(-1, 1).float().to(device), "bboxes": xywh.reshape(-1, 4).to(device),
             "batch_idx": torch.arange(n).repeat_interleave(args.boxes).float().to(device)}
    amp_dtype = torch.float16 if fp16 else torch.bfloat16

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=fp16 or args.yolo_amp == "bf16"):
            loss, _ = model.loss(batch)
        scaler.scale(loss.sum()).backward()  # .sum(): newer releases return the per-term vector
        scaler.unscale_(optimizer)  # BaseTrainer.optimizer_step
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        ema.update(model)

    return n / median_seconds(step, device, args.warmup, args.repeats)


# --- the run ----------------------------------------------------------------------------------------

def precisions(args: argparse.Namespace) -> dict[str, str]:
    """What each model ran in, in words (printed and in the JSON)."""
    vlsdk = "fp32" if args.amp == "none" else ("bf16 weights and boards" if args.bf16_weights
                                               else "bf16 autocast, fp32 weights")
    yolo = {"half": "fp16 weights and boards (ultralytics half=True)", "bf16": "bf16 autocast, fp32 weights",
            "none": "fp32"}[args.yolo_amp]
    yolo_train = {"half": "fp16 autocast + GradScaler (ultralytics amp=True)", "bf16": "bf16 autocast, fp32 weights",
                  "none": "fp32"}[args.yolo_amp]
    if args.fuse:
        yolo += ", Conv+BN fused (as its predictor)"
    return {"vlsdk_inference": vlsdk, "vlsdk_train": "fp32" if args.amp == "none" else "bf16 autocast, fp32 weights",
            "yolo_inference": yolo, "yolo_train": yolo_train}


def run_cases(name: str, inference: Callable[[argparse.Namespace, bool], dict[str, float]],
              train: Callable[[argparse.Namespace], float], args: argparse.Namespace,
              errors: dict[str, str]) -> dict[str, float | None]:
    """One model's figures: ``forward``, ``forward_nms`` (eager and ``@compile``), ``train``; None where failed."""
    figures: dict[str, float | None] = {}
    for compiled in (False, True) if args.compile else (False,):
        suffix = "@compile" if compiled else ""
        try:
            r = inference(args, compiled)
        except Exception as err:  # report the case and go on with the others
            errors[f"{name} inference{suffix}"] = f"{type(err).__name__}: {err}"[:500]
            print(f"{name} inference{suffix}: failed: {errors[f'{name} inference{suffix}']}"[:300], flush=True)
            r = {"forward": None, "forward_nms": None}
        figures |= {k + suffix: v for k, v in r.items()}
        _free(args.device)
    if not args.no_train:
        try:
            figures["train"] = train(args)
        except Exception as err:
            errors[f"{name} train"] = f"{type(err).__name__}: {err}"[:500]
            print(f"{name} train: failed: {errors[f'{name} train']}"[:300], flush=True)
            figures["train"] = None
        _free(args.device)
    return figures


def _free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _cell(value: float | None) -> str:
    return f"{'-':>12s}" if value is None or not math.isfinite(value) else f"{value:12.1f}"


def table(results: dict[str, dict[str, float | None]], compiled: bool) -> list[str]:
    """Rows ``model x {forward, forward + NMS, train step}`` in boards/s."""
    lines = [f"{'boards/s':24s}{'forward':>12s}{'forward+NMS':>12s}{'train step':>12s}"]
    for name, f in results.items():
        lines.append(f"{name:24s}{_cell(f.get('forward'))}{_cell(f.get('forward_nms'))}{_cell(f.get('train'))}")
        if compiled:
            lines.append(f"{name + ' +compile':24s}{_cell(f.get('forward@compile'))}"
                         f"{_cell(f.get('forward_nms@compile'))}{_cell(None)}")
    return lines


def ratios(ours: dict[str, float | None], peer: dict[str, float | None]) -> dict[str, float]:
    """vlsdk / YOLOv8s boards/s for every figure both have."""
    return {k: v / peer[k] for k, v in ours.items() if v is not None and peer.get(k)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda where available)")
    p.add_argument("--config", default="small", help="vlsdk backbone config of the detector (tiny, edge, small, base)")
    p.add_argument("--in-chans", type=int, default=2, choices=[1, 2],
                   help="vlsdk input channels: 2 = board + template (vlsdk pcb's default), 1 = board")
    p.add_argument("--yolo-channels", type=int, default=3, help="YOLOv8s input channels (its yaml's default 3)")
    p.add_argument("--batch-size", type=int, default=None, help="boards per inference batch (default 64 CUDA, 2 CPU)")
    p.add_argument("--train-batch-size", type=int, default=None,
                   help="boards per training step (default 16 on CUDA, both trainers' default; else --batch-size)")
    p.add_argument("--image-size", type=int, default=None, help="square board side (default 640 CUDA, 128 CPU)")
    p.add_argument("--amp", choices=["none", "bf16"], default=None,
                   help="vlsdk autocast (default bf16 on CUDA, none on CPU); YOLOv8s follows unless --yolo-amp")
    p.add_argument("--yolo-amp", choices=["half", "bf16", "none"], default=None,
                   help="YOLOv8s precision: half = fp16 weights (its half=True; training: its amp=True), bf16 = the "
                        "same autocast as vlsdk, none = fp32 (default: half with --amp bf16 on CUDA, else none)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="keep YOLOv8s's BatchNorms unfused (its predictor fuses them)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile-d inference of both models")
    p.add_argument("--channels-last", action="store_true", help="both models and boards in torch.channels_last")
    p.add_argument("--dense-moe", action="store_true", help="vlsdk: static all-experts MoE path (inference)")
    p.add_argument("--bf16-weights", action="store_true", help="vlsdk inference: bf16 weights instead of autocast")
    p.add_argument("--boxes", type=int, default=5, help="random defects per training board")
    p.add_argument("--no-train", action="store_true", help="skip the training steps")
    p.add_argument("--no-peer", action="store_true", help="skip YOLOv8s (vlsdk rows only)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 5 CUDA, 1 CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed batches, median counts (default 20 CUDA, 3 CPU)")
    p.add_argument("--out", type=Path, default=Path("runs/pcb_vs_yolo"))
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (64 if cuda else 2)
    args.train_batch_size = args.train_batch_size or (16 if cuda else args.batch_size)
    args.image_size = args.image_size or (640 if cuda else 128)
    args.amp = args.amp or ("bf16" if cuda else "none")
    args.yolo_amp = args.yolo_amp or ("half" if cuda and args.amp == "bf16" else "none")
    args.warmup = (5 if cuda else 1) if args.warmup is None else args.warmup
    args.repeats = args.repeats or (20 if cuda else 3)
    if args.yolo_amp == "half" and not cuda:
        p.error("--yolo-amp half needs CUDA (ultralytics runs fp32 on the CPU)")
    if args.bf16_weights and args.amp != "bf16":
        p.error("--bf16-weights needs --amp bf16")
    if min(args.batch_size, args.train_batch_size, args.repeats, args.boxes) < 1 or args.image_size < 32 \
            or args.warmup < 0:
        p.error("--batch-size, --train-batch-size, --repeats and --boxes must be >= 1, --image-size >= 32, "
                "--warmup >= 0")
    args.out.mkdir(parents=True, exist_ok=True)

    device_name = torch.cuda.get_device_name(torch.device(args.device)) if cuda else "cpu"
    precision = precisions(args)
    vlsdk_name = f"vlsdk {args.config}"
    results: dict[str, dict[str, float | None]] = {}
    errors: dict[str, str] = {}
    results[vlsdk_name] = run_cases(vlsdk_name, vlsdk_inference, vlsdk_train, args, errors)

    ultralytics, skipped = (None, "--no-peer: YOLOv8s skipped") if args.no_peer else import_ultralytics()
    if ultralytics is not None:
        results[PEER] = run_cases(PEER, yolo_inference, yolo_train, args, errors)
    else:
        print(skipped, flush=True)

    print("\n".join(table(results, args.compile)))
    ratio: dict[str, float] = {}
    met: dict[str, bool] = {}
    if PEER in results:
        ratio = ratios(results[vlsdk_name], results[PEER])
        for key, value in ratio.items():
            print(f"ratio {key}: {vlsdk_name} / {PEER} boards/s = {value:.2f}x")
        for key, target in TARGETS.items():
            if key in ratio:
                met[key] = ratio[key] >= target
                print(f"target {key} (eager) >= {target:.2f}x of {PEER}: {'met' if met[key] else 'not met'} "
                      f"({ratio[key]:.2f}x)")
    print(f"setting: {device_name}, torch {torch.__version__}, inference batch {args.batch_size}, train batch "
          f"{args.train_batch_size}, {args.image_size} px, vlsdk {args.in_chans} ch / {PEER} {args.yolo_channels} ch, "
          f"median of {args.repeats} batches after {args.warmup}")
    peer = f"; {PEER} {precision['yolo_inference']} (train: {precision['yolo_train']})" if PEER in results else ""
    print(f"precision: vlsdk {precision['vlsdk_inference']} (train: {precision['vlsdk_train']}){peer}")
    record = {
        "device": args.device, "device_name": device_name, "torch": torch.__version__,
        "ultralytics": getattr(ultralytics, "__version__", None),
        "setting": vars(args) | {"out": str(args.out)}, "precision": precision,
        "models": {"vlsdk": vlsdk_name, "peer": PEER},
        "peer_skipped": skipped,
        "boards_per_s": results, "ratios": ratio, "targets": TARGETS, "met": met, "errors": errors,
    }
    (args.out / "pcb_vs_yolo.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out / 'pcb_vs_yolo.json'}")
    return record


if __name__ == "__main__":
    main()

"""LoRA on an int8 frozen base vs full fine-tuning, side by side on BraTS lesion segmentation.

Task: the ``medical.lesion`` task's whole-tumour segmentation (``vlsdk_medical.task``): 2D slices
of the BraTS training patients (FLAIR + T1c, MONAI augmentation), scored by whole-tumour Dice
(MONAI) on the held-out patient's volume with sliding-window inference. Both arms use the
task's own pieces: :func:`~vlsdk_medical.task.lesion_train_set`,
:func:`~vlsdk_medical.task.lesion_loss`, the core :class:`~vlsdk.train.Trainer` and
:func:`~vlsdk_medical.evaluation.evaluate_held_out`.

**Starting weights.** Both arms start from the *same* base: a ``VLModel`` with the ``lesion``
head and the ``medical.lesion`` expert, briefly pre-trained on the ``medical.lesions``
synthesizer (:class:`~vlsdk_medical.synth.LesionSynthesizer`: random tissue with bright/dark
ellipses, two channels) and never on BraTS. A random init would make LoRA meaningless (low-rank
updates to random features), and pre-training on BraTS itself would hand LoRA the answer; a
synthetic pre-training gives a base that knows "find blobs" but not MRI tumours, which is the
situation LoRA is meant for. Same data order, same number of steps, same seed for both arms;
each arm has its own learning rate (LoRA conventionally trains at a higher one).

**Arms** (``--arms``, default all four). (a) ``full``: every parameter trains (AdamW). (b) ``lora``:
LoRA through :func:`vlsdk.train.lora.attach_lora` with ``quantize_base=True``: the frozen
``nn.Linear`` layers become int8 :class:`~vlsdk.quant.Int8Linear`, adapters of rank ``--rank`` go
on the modules named by ``--targets`` (default: every MoE expert's and the shared expert's
``fc1``/``fc2``, the encoder attention ``qkv``/``proj`` and the ``lesion`` head's convolutions).
(c) ``lora_float``: the same adapters and learning rate on the base as it is (float weights;
computed in ``--amp``'s dtype), which isolates what the int8 base costs. (d) ``lora_int4``: the
same on a 4-bit base (:class:`~vlsdk.quant.Int4Linear`, groups of 128, QLoRA's setting).

**Measures.** Dice of each and the ratio LoRA / full (target >= 0.97); Dice of LoRA on the int8
base minus LoRA on the float base (target: within 0.01), and the same for the 4-bit base. Trainable state =
bytes of the gradients that exist after training plus the optimiser's state tensors (measured on
the Trainer's own AdamW, not estimated), ratio full / LoRA (target >= 12). Weight bytes = every
tensor in the model's ``state_dict`` (int8 weights and their scales for the LoRA arm). Peak
training memory: on CUDA ``torch.cuda.max_memory_allocated`` over the arm's training (weights,
gradients, optimiser state, activations; the peak counter is reset before each arm). On CPU
there is no per-arm allocator peak, so the figure is the *static training state*: weight bytes
+ trainable state (activations excluded), and the JSON says so (``peak_memory_kind``).

    python benchmarks/lora_vs_full.py --quick                        # CPU, a few minutes
    python benchmarks/lora_vs_full.py --device cuda --amp bf16 --data PATH/brats_lesion_mri

Writes ``<out>/lora_vs_full.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats_lesion_mri"

#: the arms: full fine-tuning, LoRA on the int8 base, LoRA on the float base, LoRA on the 4-bit base
ARMS = ("full", "lora", "lora_float", "lora_int4")
#: ``attach_lora``'s ``quantize_base`` per LoRA arm
BASE = {"lora": 8, "lora_float": False, "lora_int4": 4}

#: default LoRA targets: MoE experts (routed, domain and shared), encoder attention, head convolutions
DEFAULT_TARGETS = (
    r".*ffn\.(experts\.(generic\.\d+|medical\.lesion)|shared)\.fc[12]",
    r"encoder\.stages\.\d+\.blocks\.\d+\.attn\.(qkv|proj)",
    r"heads\.lesion\.decoder\.(stem|blocks\.\d+\.\d+)\.0",
    r"heads\.lesion\.classifier",
)


class SyntheticLesions(torch.utils.data.Dataset):
    """``n`` samples of the ``medical.lesions`` synthesizer, in the BraTS sample format (for pre-training).

    Args:
        n: number of samples (sample ``i`` is drawn from seed ``seed + i``).
        size: square image size.
        channels: image channels (as many as the BraTS modalities).
        seed: first seed.
    """

    def __init__(self, n: int, size: int, channels: int, seed: int = 10_000) -> None:
        from vlsdk_medical.synth import LesionSynthesizer

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.seed = n, seed
        self.synth = LesionSynthesizer((size, size), channels=channels, count=(1, 3), radius=(size / 24, size / 6),
                                       contrast=(0.3, 1.0), noise=(0.0, 0.2))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.synth(self.seed + int(i))
        return {"image": s["image"], "label": s["label"]}


def build_model(name: str, in_chans: int, seed: int, lesion_expert: bool = True) -> nn.Module:
    """A ``VLModel`` with the binary ``lesion`` head (and the ``medical.lesion`` expert), seeded.

    Args:
        name: backbone config name.
        in_chans: image channels.
        seed: initialisation seed.
        lesion_expert: insert the ``medical.lesion`` MoE expert, as the pipeline does.
    """
    import vlsdk

    torch.manual_seed(seed)
    model = vlsdk.VLModel(name, in_chans=in_chans)
    model.add_head("lesion", task="segmentation", num_classes=1)
    if lesion_expert and model.moe_layers:
        model.add_expert("medical.lesion", init_bias=0.0)
    return model


def tensor_bytes(tensors: Any) -> int:
    """Bytes of distinct tensors (shared storage counted once)."""
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[(t.untyped_storage().data_ptr(), t.storage_offset())] = t.numel() * t.element_size()
    return sum(seen.values())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in the model's ``state_dict`` (parameters, buffers, int8 weights and scales)."""
    return tensor_bytes(model.state_dict().values())


def measured_trainable_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Gradient bytes (gradients that exist) and optimiser state bytes, read off the live tensors."""
    grads = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    state = tensor_bytes(t for s in optimizer.state.values() for t in s.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"grad_bytes": grads, "optimizer_bytes": state, "trainable_state_bytes": grads + state,
            "trainable_params": trainable}


def train_arm(model: nn.Module, loss_fn: Any, train_set: torch.utils.data.Dataset, *, steps: int, lr: float,
              args: argparse.Namespace, out_dir: Path, desc: str) -> tuple[Any, float]:
    """Train with the core :class:`~vlsdk.train.Trainer` (the pipeline's settings); returns (trainer, seconds).

    On CUDA the allocator's peak counter is reset first, so ``max_memory_allocated`` afterwards is
    this arm's training peak.
    """
    from vlsdk.train import TrainConfig, Trainer
    from vlsdk_medical.dataset import collate_samples

    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(steps=steps, batch_size=args.batch_size, lr=lr, weight_decay=1e-4,
                         warmup_steps=max(1, steps // 20), amp=args.amp or "off", device=args.device,
                         num_workers=args.num_workers, seed=args.seed, out_dir=str(out_dir / desc),
                         progress=not args.no_progress, log_every=max(1, min(10, steps // 4)), clip_grad=1.0)
    trainer = Trainer(model, loss_fn, train_set, config, collate_fn=collate_samples)
    print(f"-- {desc}: {steps} steps, lr {lr:g}")
    t0 = time.perf_counter()
    trainer.fit()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return trainer, time.perf_counter() - t0


def lesion_config(args: argparse.Namespace, model: str) -> Any:
    """The ``medical.lesion`` task's :class:`~vlsdk_medical.lesion_settings.LesionSettings` for these options."""
    from vlsdk_medical.lesion_settings import LesionSettings

    values: dict[str, Any] = {
        "data": args.data, "out": args.out, "model": model, "max_steps": args.steps, "batch_size": args.batch_size,
        "roi_size": args.roi_size, "max_slices_per_case": args.max_slices_per_case, "eval_slices": args.eval_slices,
        "device": args.device, "precision": args.amp or "off", "num_workers": args.num_workers, "seed": args.seed,
        "progress": not args.no_progress, "epochs": 10_000}
    if args.quick:  # the task's CI size: the training split, a tiny model, few slices
        values.update(train_splits=["train"], model="tiny", epochs=1, batch_size=min(args.batch_size, 4),
                      roi_size=min(args.roi_size, 96), max_slices_per_case=args.max_slices_per_case or 12,
                      eval_slices=args.eval_slices or 8, max_steps=args.steps or 6)
    return LesionSettings(**values)


def dice_of(model: nn.Module, cfg: Any, device: torch.device) -> dict[str, Any]:
    """Held-out whole-tumour Dice (and HD95) through the task's evaluation."""
    from vlsdk_medical.evaluation import evaluate_held_out
    from vlsdk_medical.task import held_out_set

    r = evaluate_held_out(model.to(device), held_out_set(cfg), cfg)
    return {"dice": r["dice_mean"], "dice_per_case": r["dice"], "hd95": r["hd95_mean"]}


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options both benchmark scripts share."""
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="brats_lesion_mri folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<script name>)")
    p.add_argument("--quick", action="store_true", help="CPU smoke mode: tiny model, few slices and steps")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1...")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (GPU)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per arm")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--roi-size", type=int, default=None, help="training crop (and inference window) size")
    p.add_argument("--max-slices-per-case", type=int, default=None, help="training slices per patient")
    p.add_argument("--eval-slices", type=int, default=None, help="held-out slices scored (default: all)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default 0 on CPU, 8 on GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def fill_defaults(args: argparse.Namespace, quick: dict[str, Any], gpu: dict[str, Any]) -> None:
    """Fill the options left at ``None`` from the quick or the GPU preset."""
    preset = quick if args.quick else gpu
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.num_workers is None:
        args.num_workers = 0 if args.device == "cpu" or args.quick else min(8, os.cpu_count() or 1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device} but CUDA is not available here")
    if not Path(args.data).is_dir():
        raise SystemExit(f"error: BraTS data folder {args.data} not found (pass --data)")


def ratio(a: float, b: float) -> float:
    """``a / b``; NaN when ``b`` is 0."""
    return a / b if b else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--model", default=None, help="backbone config (default: tiny with --quick, else small)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="synthetic pre-training steps of the base")
    p.add_argument("--lr-full", type=float, default=None, help="peak lr of full fine-tuning")
    p.add_argument("--lr-lora", type=float, default=None, help="peak lr of the LoRA arm")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS), help="LoRA target name patterns")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                   help="full fine-tuning, LoRA on the int8, float or 4-bit base (default: all)")
    args = p.parse_args(argv)
    fill_defaults(args,
                  quick={"model": "tiny", "steps": 30, "pretrain_steps": 30, "batch_size": 4, "roi_size": 64,
                         "max_slices_per_case": 12, "eval_slices": 8, "lr_full": 1e-3, "lr_lora": 3e-3},
                  gpu={"model": "small", "steps": 900, "pretrain_steps": 400, "batch_size": 16, "roi_size": 128,
                       "lr_full": 1e-3, "lr_lora": 1e-2})  # chosen on CPU (BENCHMARKS.md)
    args.alpha = args.alpha or 2.0 * args.rank
    args.out = Path(args.out or "runs/lora_vs_full")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    from vlsdk.train.lora import attach_lora
    from vlsdk_medical.task import lesion_loss, lesion_train_set

    start = time.perf_counter()
    cfg = lesion_config(args, args.model)
    train_set = lesion_train_set(cfg)
    train_set.repeats = max(1, math.ceil(args.steps * args.batch_size / len(train_set.index)))
    channels = train_set.num_channels

    # -- the shared starting point: a base pre-trained on synthetic lesions only ------------------
    base = build_model(args.model, channels, args.seed)
    synth = SyntheticLesions(max(args.batch_size, args.pretrain_steps * args.batch_size), cfg.roi_size, channels)
    trainer, pre_s = train_arm(base, lesion_loss, synth, steps=args.pretrain_steps, lr=1e-3, args=args,
                               out_dir=args.out, desc="pretrain_synthetic")
    base_state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    device = trainer.device
    base_dice = dice_of(trainer.model, cfg, device)["dice"]
    del trainer

    arms: dict[str, dict[str, Any]] = {}
    for arm in args.arms:
        model = build_model(args.model, channels, args.seed)
        model.load_state_dict(base_state)
        if arm != "full":
            attach_lora(model, "lesion", args.targets, r=args.rank, alpha=args.alpha, quantize_base=BASE[arm])
        trainer, seconds = train_arm(model, lesion_loss, train_set, steps=args.steps,
                                     lr=args.lr_full if arm == "full" else args.lr_lora, args=args,
                                     out_dir=args.out, desc=arm)
        state = measured_trainable_state(trainer.model, trainer.optimizer)
        weights = weight_bytes(trainer.model)
        if device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
        else:
            peak, kind = weights + state["trainable_state_bytes"], "static: weights + grads + optimiser state"
        arms[arm] = {**dice_of(trainer.model, cfg, device), **state, "weight_bytes": weights,
                     "peak_memory_bytes": peak, "peak_memory_kind": kind, "train_seconds": seconds,
                     "total_params": sum(p.numel() for p in trainer.model.parameters())}
        del trainer, model
    ratios: dict[str, float] = {}
    targets: dict[str, float] = {}
    if {"full", "lora"} <= set(arms):
        full, lora = arms["full"], arms["lora"]
        ratios |= {
            "dice_lora_over_full": ratio(lora["dice"], full["dice"]),
            "trainable_state_full_over_lora": ratio(full["trainable_state_bytes"], lora["trainable_state_bytes"]),
            "weight_bytes_full_over_lora": ratio(full["weight_bytes"], lora["weight_bytes"]),
            "peak_memory_full_over_lora": ratio(full["peak_memory_bytes"], lora["peak_memory_bytes"]),
        }
        targets |= {"dice_lora_over_full": 0.97, "trainable_state_full_over_lora": 12.0}
    if {"lora", "lora_float"} <= set(arms):
        # "within 1 point": the int8 base may cost at most 0.01 Dice; a higher Dice always meets it
        ratios["dice_lora_minus_lora_float"] = arms["lora"]["dice"] - arms["lora_float"]["dice"]
        targets["dice_lora_minus_lora_float"] = -0.01
    if {"lora_int4", "lora_float"} <= set(arms):
        ratios["dice_lora_int4_minus_lora_float"] = arms["lora_int4"]["dice"] - arms["lora_float"]["dice"]
        targets["dice_lora_int4_minus_lora_float"] = -0.01
    results = {"task": "BraTS whole-tumour Dice on the held-out patient(s)", "device": str(device),
               "torch": torch.__version__, "base_dice_before_finetune": base_dice, "pretrain_seconds": pre_s,
               "arms": arms, "ratios": ratios, "targets": targets,
               "met": {k: bool(ratios[k] >= v) for k, v in targets.items()},
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "lesion_config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
               "seconds": time.perf_counter() - start}
    path = args.out / "lora_vs_full.json"
    path.write_text(json.dumps(results, indent=2, default=str))

    mib = 2.0 ** 20
    names = {"full": "full FT", "lora": "LoRA int8", "lora_float": "LoRA float", "lora_int4": "LoRA int4"}
    print(f"\nBraTS whole-tumour Dice, {args.model} model, {args.steps} steps per arm, {device} "
          f"(base after synthetic pre-training: Dice {base_dice:.4f})")
    print(f"{'':26s}" + "".join(f"{names[a]:>12s}" for a in arms))
    rows = [("held-out Dice", lambda a: f"{a['dice']:12.4f}"),
            ("trainable params", lambda a: f"{a['trainable_params']:12d}"),
            ("trainable state MiB", lambda a: f"{a['trainable_state_bytes'] / mib:12.3f}"),
            ("weight MiB", lambda a: f"{a['weight_bytes'] / mib:12.3f}"),
            ("peak train memory MiB", lambda a: f"{a['peak_memory_bytes'] / mib:12.2f}"),
            ("train seconds", lambda a: f"{a['train_seconds']:12.1f}"),
            ("seconds per step", lambda a: f"{a['train_seconds'] / args.steps:12.3f}")]
    for label, cell in rows:
        print(f"{label:26s}" + "".join(cell(a) for a in arms.values()))
    print(f"(peak memory: {next(iter(arms.values()))['peak_memory_kind']})")
    for key, value in ratios.items():
        goal = f"  target >= {targets[key]:g}: {'met' if value >= targets[key] else 'NOT met'}" if key in targets else ""
        print(f"{key:34s} {value:8.3f}{goal}")
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()

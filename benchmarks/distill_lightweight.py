"""Distillation into a lightweight model vs training it from scratch, on BraTS lesion segmentation.

Task and evaluation as in ``benchmarks/lora_vs_full.py``: the medical pipeline's whole-tumour
segmentation (:func:`~vlsdk_medical.task.lesion_train_set`,
:func:`~vlsdk_medical.task.lesion_loss`, the core :class:`~vlsdk.train.Trainer`,
:func:`~vlsdk_medical.evaluation.evaluate_held_out`: Dice on the held-out patient).

1. The **teacher** (``--teacher``, default ``small``) is trained on the task with labels.
2. The **student** (``--student``, default ``edge``; must cost <= 1/4 of the teacher's FLOPs,
   checked) is trained twice from the *same* initial weights, with the same data order, steps and
   learning rate: (a) from scratch with the labels only, (b) with the labels plus
   :class:`vlsdk.train.Distiller` (pyramid-feature MSE through 1x1 adapters, relative to the teacher
   map's mean square, and the ``lesion`` head's soft targets) from the frozen teacher:
   ``loss = label loss + --kd-weight * distillation loss``, the student run once per step for both.

FLOPs are counted as in ``benchmarks/encoder_flops.py`` (``torch.utils.flop_counter.FlopCounterMode``,
a multiply-add counts 2, forward only, batch 1), here for the whole segmentation model (encoder,
``medical.lesion`` expert and ``lesion`` head) on one ``roi_size`` crop with the data's channels.

    python benchmarks/distill_lightweight.py --quick                 # CPU, a few minutes
    python benchmarks/distill_lightweight.py --device cuda --amp bf16 --data PATH/brats_lesion_mri
    OMP_NUM_THREADS=1 python benchmarks/distill_lightweight.py --teacher small --student edge --roi-size 96
        --batch-size 8 --max-slices-per-case 32 --teacher-steps 800 --steps 800   # CPU, ~20 min
    ... --teacher-checkpoint runs/distill_lightweight/teacher/checkpoint    # reuse that teacher

Pairs of named configs: ``tiny`` costs 0.335 of ``edge`` (misses the 1/4 bound), ``edge`` 0.198 of
``small`` at 96 px (0.195 at 64 px).

Writes ``<out>/distill_lightweight.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_vs_full import (  # noqa: E402  (the sibling benchmark's shared helpers)
    add_common_arguments,
    build_model,
    dice_of,
    fill_defaults,
    lesion_config,
    ratio,
    train_arm,
    weight_bytes,
)


def model_flops(model: nn.Module, channels: int, size: int) -> int:
    """Forward FLOPs of ``model(x, heads=["lesion"])`` for one ``channels x size x size`` image."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, channels, size, size, device=device), heads=["lesion"])
    model.train(was)
    return int(counter.get_total_flops())


def distill_loss(kd_weight: float):
    """``loss_fn(distiller, batch)``: the pipeline's label loss on the student plus the Distiller's loss.

    The student runs once per step: its output feeds both the label loss (as
    :func:`~vlsdk_medical.task.lesion_loss` computes it) and the Distiller (``student_out``).
    """
    from vlsdk.heads.segmentation import SegmentationOutput

    def loss_fn(distiller: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        student = distiller.student
        out = student(batch["image"], heads=distiller.heads)
        label = student.heads["lesion"].loss(SegmentationOutput(out["lesion"].logits.float()),
                                             batch["label"][:, 0].long())
        kd = distiller(batch["image"], student_out=out)
        return {"loss": label["loss"] + kd_weight * kd["loss"], "label_loss": label["loss"].detach(),
                "kd_loss": kd["loss"].detach(), "kd_feature": kd["feature"].detach()}

    return loss_fn


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--teacher", default=None, help="teacher config (default small)")
    p.add_argument("--student", default=None, help="student config (default: tiny with --quick, else edge)")
    p.add_argument("--teacher-steps", type=int, default=None, help="teacher training steps")
    p.add_argument("--teacher-checkpoint", type=Path, default=None,
                   help="load the teacher from a Trainer checkpoint folder (e.g. <out>/teacher/checkpoint of an "
                        "earlier run with the same options) instead of training it")
    p.add_argument("--lr", type=float, default=None, help="peak lr (teacher and both students)")
    p.add_argument("--kd-weight", type=float, default=1.0, help="weight of the distillation loss")
    p.add_argument("--temperature", type=float, default=2.0, help="softening of the head's soft targets")
    args = p.parse_args(argv)
    fill_defaults(args,
                  quick={"teacher": "small", "student": "tiny", "steps": 30, "teacher_steps": 30, "batch_size": 4,
                         "roi_size": 64, "max_slices_per_case": 12, "eval_slices": 8, "lr": 1e-3},
                  gpu={"teacher": "small", "student": "edge", "steps": 1000, "teacher_steps": 1200,
                       "batch_size": 16, "roi_size": 128, "lr": 1e-3})
    args.out = Path(args.out or "runs/distill_lightweight")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    from vlsdk.train.distill import Distiller
    from vlsdk_medical.task import lesion_loss, lesion_train_set

    start = time.perf_counter()
    cfg = lesion_config(args, args.teacher)
    train_set = lesion_train_set(cfg)
    most = max(args.steps, args.teacher_steps)
    train_set.repeats = max(1, math.ceil(most * args.batch_size / len(train_set.index)))
    channels = train_set.num_channels

    teacher = build_model(args.teacher, channels, args.seed)
    student_init = build_model(args.student, channels, args.seed + 1).state_dict()
    flops = {"teacher": model_flops(teacher, channels, cfg.roi_size),
             "student": model_flops(build_model(args.student, channels, args.seed + 1), channels, cfg.roi_size)}
    flops_ratio = flops["student"] / flops["teacher"]
    if flops_ratio > 0.25:
        raise SystemExit(f"error: student {args.student} costs {flops_ratio:.3f} of teacher {args.teacher}'s FLOPs "
                         "(> 1/4); pick a lighter student or a larger teacher")

    if args.teacher_checkpoint is None:
        trainer, teacher_s = train_arm(teacher, lesion_loss, train_set, steps=args.teacher_steps, lr=args.lr,
                                       args=args, out_dir=args.out, desc="teacher")
        device, teacher = trainer.device, trainer.model
    else:  # a teacher trained earlier: its weights, on the device the students train on
        from safetensors.torch import load_file

        trainer, teacher_s = None, float("nan")
        device = torch.device(args.device)
        teacher.load_state_dict(load_file(str(args.teacher_checkpoint / "model.safetensors")))
        teacher = teacher.to(device)
        print(f"-- teacher: loaded {args.teacher_checkpoint}")
    runs: dict[str, dict[str, Any]] = {"teacher": {**dice_of(teacher, cfg, device), "train_seconds": teacher_s,
                                                   "config": args.teacher, "flops": flops["teacher"],
                                                   "weight_bytes": weight_bytes(teacher)}}
    del trainer
    for arm in ("scratch", "distilled"):
        student = build_model(args.student, channels, args.seed + 1)
        student.load_state_dict(student_init)  # the same initial weights for both students
        if arm == "scratch":
            trainer, seconds = train_arm(student, lesion_loss, train_set, steps=args.steps, lr=args.lr, args=args,
                                         out_dir=args.out, desc="student_scratch")
            student = trainer.model
        else:
            distiller = Distiller(student, teacher, temperature=args.temperature)
            trainer, seconds = train_arm(distiller, distill_loss(args.kd_weight), train_set, steps=args.steps,
                                         lr=args.lr, args=args, out_dir=args.out, desc="student_distilled")
            student = trainer.model.student
        runs[arm] = {**dice_of(student, cfg, device), "train_seconds": seconds, "config": args.student,
                     "flops": flops["student"], "weight_bytes": weight_bytes(student)}
        del trainer
    t = runs["teacher"]["dice"]
    ratios = {"scratch_over_teacher": ratio(runs["scratch"]["dice"], t),
              "distilled_over_teacher": ratio(runs["distilled"]["dice"], t),
              "distilled_over_scratch": ratio(runs["distilled"]["dice"], runs["scratch"]["dice"]),
              "student_flops_over_teacher": flops_ratio}
    targets = {"distilled_over_teacher": 0.90}
    results = {"task": "BraTS whole-tumour Dice on the held-out patient(s)", "device": str(device),
               "torch": torch.__version__, "runs": runs, "ratios": ratios, "targets": targets,
               "met": {k: bool(ratios[k] >= v) for k, v in targets.items()},
               "flops_counted": f"forward, batch 1, {channels}x{cfg.roi_size}x{cfg.roi_size}, FlopCounterMode",
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "lesion_config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
               "seconds": time.perf_counter() - start}
    path = args.out / "distill_lightweight.json"
    path.write_text(json.dumps(results, indent=2, default=str))

    print(f"\nBraTS whole-tumour Dice, teacher {args.teacher} ({args.teacher_steps} steps), student {args.student} "
          f"({args.steps} steps each), {device}")
    print(f"{'':22s} {'config':>8s} {'GFLOPs':>9s} {'Dice':>8s} {'vs teacher':>11s} {'train s':>8s}")
    for name, label in (("teacher", "teacher"), ("scratch", "student, labels"), ("distilled", "student, distilled")):
        r = runs[name]
        print(f"{label:22s} {r['config']:>8s} {r['flops'] / 1e9:9.3f} {r['dice']:8.4f} "
              f"{ratio(r['dice'], t):11.3f} {r['train_seconds']:8.1f}")
    print(f"student/teacher FLOPs {flops_ratio:.3f} (<= 0.25); distilled/teacher Dice "
          f"{ratios['distilled_over_teacher']:.3f} (target >= 0.90); distilled/scratch "
          f"{ratios['distilled_over_scratch']:.3f}")
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()

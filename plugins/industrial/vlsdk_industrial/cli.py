"""The ``vlsdk pcb`` command (and ``examples/industrial_pcb_defects.py``): the ``industrial.pcb`` task's alias.

Its flags map onto :class:`~vlsdk_industrial.task.PcbSettings` and the task runs on the core runtime
(``vlsdk train examples/configs/industrial_pcb.yaml`` runs the same task from a config).

``configure`` imports nothing heavy, so building the ``vlsdk`` parser stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

__all__ = ["BACKBONES", "config_from_args", "configure", "run"]

BENCHMARK_BATCH = 64

#: ``--backbone`` choice -> ``BackboneConfig.stem``: the hybrid CNN stem, or a plain ViT (16x16 patches
#: from pixels, strides 4 and 8 upsampled from the tokens) for the hybrid-vs-plain-ViT ablation.
BACKBONES: dict[str, str] = {"hybrid": "cnn", "vit": "patch"}



def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``vlsdk pcb`` options to ``parser``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("--data", type=Path, default=None, help="DeepPCB folder holding PCBData/ (required)")
    parser.add_argument("--out", type=Path, default=Path("runs/pcb"), help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke run: tiny model, 256 px, 8 train / 4 test pairs, 3 steps")
    parser.add_argument("--config", default=None, metavar="NAME",
                        help="VLModel size: tiny, edge, small or base (default small; tiny with --quick), with "
                             "optional field overrides for ablations, e.g. tiny@patch_size=4@depths=2,")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="hybrid",
                        help="encoder: hybrid (CNN stem + ViT) or vit (plain ViT: 16x16 patches from pixels, "
                             "for ablations) (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="default 24")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="boards per step and rank (under torchrun the global batch is N x this); default 16")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=None,
                        help="default 640 (DeepPCB's size); with --predict: the size the model was trained at")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast dtype")
    parser.add_argument("--no-template", dest="template", action="store_false",
                        help="do not feed the defect-free template as a second channel")
    parser.add_argument("--synthetic-ratio", type=float, default=None,
                        help="mix synthetic boards: real boards per synthetic one (3 = 3:1); default none")
    parser.add_argument("--synthetic-style", choices=["default", "deeppcb"], default=None,
                        help="synthetic board style: default (domain-randomised grey boards) or deeppcb "
                             "(binary boards, trace/pad/box sizes measured on DeepPCB) (default: default)")
    parser.add_argument("--synthetic-pretrain-steps", type=int, default=None, metavar="N",
                        help="first train N steps on synthetic boards only (--synthetic-style), then the usual "
                             "training (real, or the --synthetic-ratio mix) with a fresh lr schedule; "
                             "--max-seconds covers both (default 0: none)")
    parser.add_argument("--train-pairs", type=int, default=None, help="use only the first N trainval pairs")
    parser.add_argument("--eval-pairs", type=int, default=None, help="evaluate on the first N test pairs")
    parser.add_argument("--max-steps", type=int, default=None, help="stop training after N steps")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop training after this many seconds, then evaluate (a time-boxed GPU run)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 4)")
    parser.add_argument("--no-expert", dest="expert", action="store_false",
                        help="leave out the industrial.pcb_defect MoE expert")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="evaluate (or benchmark) a model saved by a previous run (its model/ folder)")
    parser.add_argument("--benchmark", action="store_true",
                        help="only measure inference boards/s on random boards (--batch-size default 64, "
                             "--image-size default 640); writes OUT/throughput.json")
    parser.add_argument("--predict", type=Path, default=None, metavar="FOLDER",
                        help="with --checkpoint: detect on every board image of FOLDER (<n>_test.* with its "
                             "<n>_temp.* for a template model); writes OUT/predictions.json and .png")
    parser.add_argument("--compile", action="store_true", help="with --benchmark: torch.compile the model")
    parser.add_argument("--dense-moe", action="store_true", help="with --benchmark: static all-experts MoE path")
    parser.add_argument("--channels-last", action="store_true",
                        help="with --benchmark: model and boards in torch.channels_last (NHWC convolutions)")
    parser.add_argument("--bf16-weights", action="store_true",
                        help="with --benchmark and --amp bf16: cast the model to bf16 instead of autocasting")
    parser.add_argument("--profile", action="store_true",
                        help="with --benchmark: print the forward's GPU kernel time by kind")
    parser.add_argument("--format", choices=["json", "coco"], default="json",
                        help="coco: also write coco_results.json and coco_ground_truth.json (DeepPCB test boards in "
                             "COCO form) and print pycocotools' COCOeval beside the DeepPCB criterion")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")


def config_from_args(args: argparse.Namespace) -> object:
    """The :class:`~vlsdk_industrial.task.PcbSettings` for parsed ``vlsdk pcb`` arguments.

    Args:
        args: from a parser set up by :func:`configure`; explicit options override ``--quick``.

    Raises:
        SystemExit: no ``--data`` folder (there is no default data path).
    """
    from vlsdk.settings import settings_from
    from vlsdk_industrial.task import PcbSettings, PcbTask

    values: dict[str, object] = dict(PcbTask.quick) if args.quick else {}
    renamed = {"config": "model", "workers": "num_workers"}
    for name in ("config", "epochs", "batch_size", "image_size", "synthetic_ratio", "synthetic_style",
                 "synthetic_pretrain_steps", "train_pairs", "eval_pairs", "max_steps", "max_seconds", "workers"):
        if getattr(args, name) is not None:
            values[renamed.get(name, name)] = getattr(args, name)
    values |= {"data": args.data, "out": args.out, "stem": BACKBONES[args.backbone], "lr": args.lr,
               "device": args.device, "precision": "off" if args.amp == "none" else args.amp,
               "template": args.template, "seed": args.seed, "progress": args.progress,
               "coco_json": args.format == "coco"}
    if not args.expert:
        values["experts"] = []
    return settings_from(PcbSettings, values, "vlsdk pcb")


def run(args: argparse.Namespace) -> int:
    """Run ``vlsdk pcb``: train and evaluate the ``industrial.pcb`` task (or evaluate, predict, benchmark).

    Args:
        args: from a parser set up by :func:`configure`.
    """
    from vlsdk.tasks.runner import evaluate_model, train
    from vlsdk_industrial.task import PcbTask

    if args.quick:
        from vlsdk.demo import QUICK_NOTE

        print(f"[pcb] --quick: {QUICK_NOTE}", flush=True)
    if args.benchmark:
        return _benchmark(args)
    if args.predict is not None:
        from vlsdk_industrial.predict import predict_folder

        if args.checkpoint is None:
            raise SystemExit("vlsdk pcb: --predict needs --checkpoint MODEL_DIR")
        predict_folder(args.checkpoint, args.predict, args.out, image_size=args.image_size,
                       batch_size=args.batch_size or 16, device=args.device, amp=args.amp)
        return 0
    if args.data is None or not Path(args.data).is_dir():
        raise SystemExit(f"vlsdk pcb: DeepPCB folder {args.data} not found; pass --data PATH/TO/deeppcb")
    settings = config_from_args(args)
    if args.checkpoint is not None:
        from vlsdk_industrial.predict import load_detector

        model = load_detector(args.checkpoint, settings.device, channels=settings.channels)
        trained = model.metadata.input.image_size if model.metadata.input is not None else None
        if args.image_size is None and trained:  # score at the size the model was trained at
            settings = dataclasses.replace(settings, image_size=trained[0])
        evaluate_model(PcbTask(), settings, model, args.checkpoint)
        return 0
    train(PcbTask(), settings)
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    import json

    from vlsdk_industrial.task import HEAD, build_detector
    from vlsdk_industrial.throughput import measure_throughput

    if args.checkpoint is not None:
        from vlsdk import VLModel

        model = VLModel.from_pretrained(args.checkpoint)
    else:
        model = build_detector(args.config or ("tiny" if args.quick else "small"), in_chans=2 if args.template else 1,
                               expert=args.expert, stem=BACKBONES[args.backbone])
    device = args.device if args.device != "auto" else ("cuda" if _cuda() else "cpu")
    result = measure_throughput(model, head=HEAD, batch_size=args.batch_size or BENCHMARK_BATCH,
                                image_size=args.image_size or 640, device=device, amp=args.amp,
                                compile=args.compile, dense_moe=args.dense_moe, channels_last=args.channels_last,
                                bf16_weights=args.bf16_weights, profile=args.profile,
                                warmup=1 if args.quick else 5, batches=2 if args.quick else 20)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(result.as_dict(), indent=2))
    print(f"{result.boards_per_s:.1f} boards/s ({json.dumps(result.as_dict())})")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

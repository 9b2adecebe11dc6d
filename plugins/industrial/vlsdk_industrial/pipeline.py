"""PCB defect detection end to end: DeepPCB (+ synthetic boards) -> VLModel + detection head -> mAP.

:func:`run_pipeline` trains on DeepPCB ``trainval`` (optionally mixed with synthetic boards at a
real:synthetic ratio, optionally after pre-training on synthetic boards only: :mod:`~vlsdk_industrial.pretrain`),
evaluates on ``test`` with :class:`~vlsdk_industrial.metrics.DetectionMAP`, prints the per-class table, saves
the model (``save_pretrained``), ``metrics.json`` and a PNG of predictions drawn on boards. ``vlsdk pcb``
and ``examples/industrial_pcb_defects.py`` call it.

Input pipeline: the training pairs are decoded once into a RAM cache (``PipelineConfig.cache``),
batches travel from the DataLoader workers as ``uint8`` ``(B, H, W, C)`` (:func:`collate_uint8`,
a quarter of the float bytes, no board pixels pickled with the metadata) and become float
``(B, C, H, W)`` in ``[0, 1]`` on the training device (:func:`images_to_float`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlsdk_industrial.deeppcb import CACHE_MODES
from vlsdk_industrial.samples import DEEPPCB_CLASSES, collate
from vlsdk_industrial.synth import STYLES

if TYPE_CHECKING:
    import torch

    from vlsdk import VLModel
    from vlsdk_industrial.metrics import MAPResult

__all__ = ["PipelineConfig", "build_detector", "collate_uint8", "detection_loss", "draw_predictions", "evaluate",
           "float_output", "images_to_float", "predict_folder", "run_pipeline", "train"]

#: Name of the detection head in the model.
HEAD = "pcb"


@dataclass
class PipelineConfig:
    """Settings of :func:`run_pipeline` (the ``vlsdk pcb`` options).

    Args:
        data: the DeepPCB folder (holding ``PCBData/``).
        out: output folder for ``model/``, ``metrics.json`` and ``predictions.png``.
        config: VLModel named config (``tiny``, ``edge``, ``small``, ``base``).
        stem: the backbone's ``BackboneConfig.stem``: ``"cnn"`` (hybrid) or ``"patch"`` (plain ViT).
        epochs: passes over the training set.
        batch_size: boards per step (per rank under torchrun: the global batch is ``batch_size x world``).
        lr: peak AdamW learning rate (linear warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        image_size: boards are resized to ``image_size x image_size`` (DeepPCB is 640).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or any torch device.
        amp: ``"none"`` or ``"bf16"`` autocast.
        template: feed the defect-free template as a second channel.
        synthetic_ratio: real boards per synthetic board (``3`` = 3:1); ``None``: real only.
        synthetic_style: :class:`~vlsdk_industrial.synth.BoardSynthesizer` ``style``: ``"default"``
            (domain-randomised) or ``"deeppcb"`` (binary DeepPCB-like boards and box sizes, 4-10
            defects a board like DeepPCB's 4-10).
        synthetic_pretrain_steps: first train this many steps on synthetic boards only (style
            ``synthetic_style``), then the usual training with a fresh learning-rate schedule
            (:mod:`~vlsdk_industrial.pretrain`); ``0``: no pre-training.
        train_pairs: use only the first ``train_pairs`` trainval pairs.
        eval_pairs: evaluate only the first ``eval_pairs`` test pairs.
        max_steps: stop training after this many steps.
        max_seconds: stop training after this many seconds and evaluate what was learnt (pre-training
            and training together).
        workers: DataLoader worker processes.
        seed: seed of torch, the synthesizer and the augmentations.
        expert: insert the ``industrial.pcb_defect`` expert into the MoE layers.
        draw: boards drawn into ``predictions.png``.
        progress: show tqdm progress bars.
        checkpoint: evaluate a model saved by ``save_pretrained`` instead of training one.
        cache: how the training pairs are kept (:data:`~vlsdk_industrial.deeppcb.CacheMode`):
            ``"uint8"`` (default) decodes them once, exactly, into RAM (0.8 GB for the 1,000
            trainval pairs with templates); ``"packed"`` binarises and bit-packs them (100 MB);
            ``"none"`` decodes the JPEGs every epoch.
    """

    data: Path = Path("../shared/data/deeppcb")
    out: Path = Path("runs/pcb")
    config: str = "small"
    stem: str = "cnn"
    epochs: int = 24
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: int = 640
    device: str = "auto"
    amp: str = "none"
    template: bool = True
    synthetic_ratio: float | None = None
    synthetic_style: str = "default"
    synthetic_pretrain_steps: int = 0
    train_pairs: int | None = None
    eval_pairs: int | None = None
    max_steps: int | None = None
    max_seconds: float | None = None
    workers: int = 4
    seed: int = 0
    expert: bool = True
    draw: int = 4
    progress: bool = True
    checkpoint: Path | None = None
    cache: str = "uint8"

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.checkpoint = Path(self.checkpoint) if self.checkpoint is not None else None
        for name in ("epochs", "batch_size", "image_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("train_pairs", "eval_pairs", "max_steps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        v = self.synthetic_pretrain_steps
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"synthetic_pretrain_steps must be an int >= 0, got {v!r}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {self.amp!r}")
        if self.synthetic_style not in STYLES:
            raise ValueError(f"synthetic_style must be one of {STYLES}, got {self.synthetic_style!r}")
        if self.synthetic_ratio is not None and not self.synthetic_ratio > 0:
            raise ValueError(f"synthetic_ratio must be > 0 or None, got {self.synthetic_ratio!r}")
        if not self.lr > 0 or self.weight_decay < 0 or self.workers < 0 or self.draw < 0:
            raise ValueError("lr must be > 0 and weight_decay, workers, draw >= 0")


def build_detector(config: str = "small", *, in_chans: int = 2, num_classes: int = len(DEEPPCB_CLASSES),
                   expert: bool = True, stem: str = "cnn") -> VLModel:
    """A VLModel for board images with the ``pcb`` detection head.

    Args:
        config: named backbone config.
        in_chans: 1 (board) or 2 (board + template).
        num_classes: defect classes.
        expert: insert the registered ``industrial.pcb_defect`` expert into every MoE layer.
        stem: ``"cnn"`` (hybrid) or ``"patch"`` (plain ViT), see ``BackboneConfig``.
    """
    from vlsdk import VLModel

    if in_chans < 1 or num_classes < 1:
        raise ValueError(f"in_chans and num_classes must be >= 1, got {in_chans}, {num_classes}")
    model = VLModel(config, in_chans=in_chans, text=None, stem=stem)
    if expert and model.moe_layers:
        model.add_expert("industrial.pcb_defect", init_bias=0.0)
    model.add_head(HEAD, task="detection", num_classes=num_classes)
    return model


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device, amp: str) -> Any:
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def float_output(output: Any) -> Any:
    """Cast a ``DetectionOutput``'s tensors to float32 (for losses and decoding after autocast).

    Args:
        output: a :class:`vlsdk.heads.detection.DetectionOutput`.
    """
    import torch

    return dataclasses.replace(output, **{f.name: getattr(output, f.name).float() for f in dataclasses.fields(output)
                                          if isinstance(getattr(output, f.name), torch.Tensor)})


def collate_uint8(samples: Sequence[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """Batch samples for training, leaving the pixels ``uint8`` (convert with :func:`images_to_float`).

    Like :func:`~vlsdk_industrial.samples.collate`, but ``images`` is the ``uint8`` ``(B, H, W, C)``
    stack (no permute, no float: 4x fewer bytes from a worker to the trainer, converted on the GPU)
    and the returned samples keep their metadata without ``"image"`` (not pickled a second time).

    Args:
        samples: samples of one image size and channel count.

    Raises:
        ValueError: no samples, images of different shapes, or images that are not ``uint8``.

    Example:
        >>> s = {"image": np.zeros((64, 64, 2), np.uint8), "boxes": np.zeros((0, 4)), "labels": np.zeros(0)}
        >>> images, targets, meta = collate_uint8([s, s])
        >>> tuple(images.shape), images.dtype, "image" in meta[0]
        ((2, 64, 64, 2), torch.uint8, False)
    """
    import torch

    if not samples:
        raise ValueError("collate_uint8 needs at least one sample")
    shapes = {s["image"].shape for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate_uint8 needs images of one shape (resize them in the transform), "
                         f"got {sorted(shapes)}")
    dtypes = {str(np.asarray(s["image"]).dtype) for s in samples}
    if dtypes != {"uint8"}:
        raise ValueError(f"collate_uint8 needs uint8 images, got {sorted(dtypes)}; use samples.collate for others")
    images = torch.from_numpy(np.stack([s["image"] for s in samples]))
    targets = [{"boxes": torch.as_tensor(np.asarray(s["boxes"], np.float32).reshape(-1, 4)),
                "labels": torch.as_tensor(np.asarray(s["labels"], np.int64).reshape(-1))} for s in samples]
    return images, targets, [{k: v for k, v in s.items() if k != "image"} for s in samples]


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """The model's input from a batch: ``uint8 (B, H, W, C)`` -> float ``(B, C, H, W)`` in ``[0, 1]``.

    A float batch (from :func:`~vlsdk_industrial.samples.collate`) is returned as it is, so both
    collates feed :func:`detection_loss`.

    Args:
        images: a :func:`collate_uint8` or :func:`~vlsdk_industrial.samples.collate` batch, on any device.
    """
    import torch

    if images.dtype != torch.uint8:
        return images
    if images.ndim != 4:
        raise ValueError(f"expected a uint8 (B, H, W, C) batch, got shape {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div_(255)


def detection_loss(model: VLModel, batch: tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]) -> dict[str, Any]:
    """``loss_fn(model, batch)`` for :class:`vlsdk.train.Trainer`: the ``pcb`` head's loss.

    The Trainer adds the MoE load-balancing and z-losses itself.

    Args:
        model: from :func:`build_detector`.
        batch: a :func:`collate_uint8` or :func:`~vlsdk_industrial.samples.collate` batch already on
            the device (``uint8`` pixels are converted there).
    """
    images, targets, _ = batch
    out = model(images_to_float(images), heads=[HEAD])
    return model.heads[HEAD].loss(float_output(out[HEAD]), targets)


def train(model: VLModel, train_set: Any, *, steps: int, batch_size: int, lr: float, weight_decay: float = 0.05,
          device: str = "cpu", amp: str = "none", workers: int = 0, seed: int = 0, out_dir: str | Path = "runs/pcb",
          progress: bool = True, progress_label: str = "train", max_seconds: float | None = None) -> Any:
    """Train with the core :class:`vlsdk.train.Trainer` (warm-up + cosine, clipping, MoE losses, resume).

    Args:
        model: from :func:`build_detector`.
        train_set: a map-style dataset of industrial samples of one size.
        steps: optimiser steps.
        batch_size: boards per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        amp: ``"none"`` or ``"bf16"``.
        workers: DataLoader workers.
        seed: data order and initialisation seed.
        out_dir: the Trainer's folder (``checkpoint/``, ``metrics.csv``, ``curves.png``).
        progress: tqdm bar.
        progress_label: the bar's label (``TrainConfig.progress_label``).
        max_seconds: stop after this many seconds (``None``: run every step).

    Returns:
        The Trainer's ``TrainResult`` (``train``: the logged rows with ``loss``, ``box``, ...).
    """
    from vlsdk.train import TrainConfig, Trainer

    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup_steps=max(1, steps // 20), amp="off" if amp == "none" else amp, device=device,
                         num_workers=workers, seed=seed, out_dir=str(out_dir), progress=progress,
                         progress_label=progress_label, log_every=max(1, min(10, steps // 4)), clip_grad=10.0,
                         max_seconds=max_seconds)
    return Trainer(model, detection_loss, train_set, config, collate_fn=collate_uint8).fit()


def evaluate(model: VLModel, loader: Any, *, device: torch.device | str = "cpu", amp: str = "none",
             class_names: Sequence[str] = DEEPPCB_CLASSES, score_threshold: float = 0.001,
             progress: bool = True) -> tuple[MAPResult, list[dict[str, Any]], float]:
    """Detect on every batch of ``loader`` and score it.

    Args:
        model: a model with the ``pcb`` head.
        loader: yields :func:`~vlsdk_industrial.samples.collate` batches with targets.
        device: torch device.
        amp: ``"none"`` or ``"bf16"``.
        class_names: the metric's classes.
        score_threshold: decoding threshold (low, for mAP).
        progress: tqdm bar.

    Returns:
        The :class:`~vlsdk_industrial.metrics.MAPResult`, per-image predictions (numpy
        ``boxes``, ``scores``, ``labels``, and the sample) and boards per second of forward +
        decoding (batches after the first; a rough figure, benchmarks measure it properly).
    """
    import torch
    from tqdm.auto import tqdm

    from vlsdk_industrial.metrics import DetectionMAP

    device = torch.device(device)
    metric = DetectionMAP(class_names)
    head = model.heads[HEAD]
    model.eval()
    preds: list[dict[str, Any]] = []
    seconds, boards = 0.0, 0
    with torch.no_grad():
        for i, (images, targets, samples) in enumerate(tqdm(loader, desc="eval", unit="batch", disable=not progress)):
            images = images_to_float(images.to(device, non_blocking=True))
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with _autocast(device, amp):
                out = model(images, heads=[HEAD])
            dets = head.decode(float_output(out[HEAD]), score_threshold=score_threshold)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > 0 or len(loader) == 1:
                seconds += time.perf_counter() - start
                boards += images.shape[0]
            batch = [{"boxes": d.boxes.cpu().numpy(), "scores": d.scores.cpu().numpy(),
                      "labels": d.labels.cpu().numpy(), "sample": s} for d, s in zip(dets, samples, strict=True)]
            metric.update(batch, targets)
            preds += batch
    return metric.compute(), preds, boards / seconds if seconds else float("nan")


def draw_predictions(predictions: Sequence[dict[str, Any]], path: str | Path, *,
                     class_names: Sequence[str] = DEEPPCB_CLASSES, score_threshold: float = 0.3,
                     columns: int = 2) -> Path:
    """Write a PNG of boards with ground truth (green) and predictions (red, class and score).

    Args:
        predictions: from :func:`evaluate` (each with its ``"sample"``).
        path: the PNG to write.
        class_names: names for the labels.
        score_threshold: predictions drawn from this score up.
        columns: boards per row.
    """
    import cv2

    if not predictions:
        raise ValueError("no predictions to draw")
    tiles = []
    for p in predictions:
        s = p["sample"]
        tile = cv2.cvtColor(np.ascontiguousarray(s["image"][..., 0]), cv2.COLOR_GRAY2BGR)
        for b in np.asarray(s["boxes"]).round().astype(int):
            cv2.rectangle(tile, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 200, 0), 1)
        keep = p["scores"] >= score_threshold
        for b, sc, lab in zip(p["boxes"][keep].round().astype(int), p["scores"][keep], p["labels"][keep],
                              strict=True):
            cv2.rectangle(tile, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 0, 255), 1)
            cv2.putText(tile, f"{class_names[int(lab)]} {sc:.2f}", (int(b[0]), max(8, int(b[1]) - 2)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 255), 1, cv2.LINE_AA)
        cv2.putText(tile, Path(str(s.get("path", ""))).name, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (255, 128, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    h, w = tiles[0].shape[:2]
    tiles = [cv2.resize(t, (w, h)) for t in tiles]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid):
        raise OSError(f"could not write {path}")
    return path


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Train, evaluate, print the per-class table, save model, ``metrics.json`` and ``predictions.png``.

    Args:
        cfg: the settings.

    Returns:
        A summary dict (also written to ``metrics.json``).
    """
    import torch
    from torch.utils.data import DataLoader

    from vlsdk.train.distributed import dist_info, init_from_env
    from vlsdk_industrial.deeppcb import DeepPCBDataset
    from vlsdk.data.mixing import MixedDataset
    from vlsdk_industrial.pretrain import pretrain_synthetic, seconds_left
    from vlsdk_industrial.synth import BoardSynthesizer
    from vlsdk_industrial.transforms import build_transforms

    torch.manual_seed(cfg.seed)
    init_from_env(cfg.device)  # under torchrun: join now, so "cuda" below is this rank's GPU, not every rank's GPU 0
    device = _device(cfg.device)
    started = time.perf_counter()
    train_tf = build_transforms(train=True, size=cfg.image_size, seed=cfg.seed)
    eval_tf = build_transforms(train=False, size=cfg.image_size)
    test = DeepPCBDataset(cfg.data, "test", template=cfg.template, transform=eval_tf, on_error="skip",
                          max_samples=cfg.eval_pairs)
    test_loader = DataLoader(test, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate,
                             num_workers=cfg.workers, pin_memory=device.type == "cuda")
    summary: dict[str, Any] = {"test_samples": len(test), "test_skipped": [str(s) for s in test.skipped]}
    if cfg.checkpoint is not None:
        from vlsdk import VLModel

        model = VLModel.from_pretrained(cfg.checkpoint, map_location=device)
        if HEAD not in model.heads:
            raise ValueError(f"{cfg.checkpoint} has no {HEAD!r} detection head (heads: {sorted(model.heads)})")
        want = 2 if cfg.template else 1
        if model.config.in_chans != want:
            hint = "drop --no-template" if model.config.in_chans == 2 else "pass --no-template"
            raise ValueError(f"{cfg.checkpoint} takes {model.config.in_chans}-channel boards but the data has {want} "
                             f"channel(s); {hint}")
    else:
        real = DeepPCBDataset(cfg.data, "trainval", template=cfg.template, transform=train_tf, on_error="skip",
                              max_samples=cfg.train_pairs, cache=cfg.cache)  # type: ignore[arg-type]
        train_set: Any = real
        counts = {"min_defects": 4, "max_defects": 10} if cfg.synthetic_style == "deeppcb" else {}
        synth = BoardSynthesizer(size=640, template=cfg.template, style=cfg.synthetic_style, **counts)
        if cfg.synthetic_ratio is not None:
            train_set = MixedDataset(real, synth.dataset(len(real), seed=cfg.seed, transform=train_tf),
                                     cfg.synthetic_ratio)
        model = build_detector(cfg.config, in_chans=2 if cfg.template else 1, expert=cfg.expert,
                               stem=cfg.stem).to(device)
        steps = cfg.epochs * max(1, len(train_set) // (cfg.batch_size * dist_info()[1]))  # global batches
        steps = min(steps, cfg.max_steps) if cfg.max_steps is not None else steps
        stage = None
        if cfg.synthetic_pretrain_steps:
            stage = pretrain_synthetic(model, synth, steps=cfg.synthetic_pretrain_steps, batch_size=cfg.batch_size,
                                       lr=cfg.lr, transform=train_tf, weight_decay=cfg.weight_decay,
                                       device=str(device), amp=cfg.amp, workers=cfg.workers, seed=cfg.seed,
                                       out_dir=cfg.out / "pretrain", progress=cfg.progress,
                                       max_seconds=cfg.max_seconds)
            if dist_info()[0] == 0:
                mix = f" + synthetic {cfg.synthetic_ratio:g}:1" if cfg.synthetic_ratio is not None else ""
                print(f"stage 2/2: training, {steps} steps on {len(real)} real pairs{mix} (fresh lr schedule; "
                      f"pre-training ran {stage.steps} steps in {stage.seconds:.1f} s)", flush=True)
        train_started = time.perf_counter()
        fit = train(model, train_set, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                    weight_decay=cfg.weight_decay, device=str(device), amp=cfg.amp, workers=cfg.workers,
                    seed=cfg.seed, out_dir=cfg.out / "train", progress=cfg.progress,
                    max_seconds=seconds_left(cfg.max_seconds, stage.seconds if stage else 0.0))
        train_seconds = time.perf_counter() - train_started
        if dist_info()[0] != 0:  # under torchrun only rank 0 evaluates, saves and writes metrics
            return {"steps": fit.step, "rank": dist_info()[0]}
        losses = [row["loss"] for row in fit.train]
        summary |= {"train_samples": len(train_set), "train_skipped": [str(s) for s in real.skipped],
                    "augmentation_dropped_boxes": train_tf.dropped if cfg.workers == 0 else None,  # in-process count
                    "steps": fit.step, "train_seconds": train_seconds,
                    "pretrain": stage.as_dict() if stage else None,
                    "first_loss": losses[0], "last_loss": losses[-1], "loss_log": fit.train}
    result, preds, boards_per_s = evaluate(model, test_loader, device=device, amp=cfg.amp, progress=cfg.progress)
    print(result.table())
    print(f"eval throughput: {boards_per_s:.1f} boards/s at {cfg.image_size}x{cfg.image_size} on {device} "
          f"(amp={cfg.amp}, batch {cfg.batch_size}; rough, see BENCHMARKS.md for the measured figure)")
    cfg.out.mkdir(parents=True, exist_ok=True)
    model_dir = cfg.checkpoint if cfg.checkpoint is not None else model.save_pretrained(cfg.out / "model")
    png = draw_predictions(preds[: max(1, cfg.draw)], cfg.out / "predictions.png")
    summary |= {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
        "metrics": result.as_dict(), "eval_boards_per_s": boards_per_s, "seconds": time.perf_counter() - started,
        "model": str(model_dir), "predictions_png": str(png), "device": str(device),
    }
    (cfg.out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"saved {model_dir}, {png} and {cfg.out / 'metrics.json'} ({summary['seconds']:.1f} s)")
    return summary


def predict_folder(checkpoint: str | Path, folder: str | Path, out: str | Path, *, image_size: int = 640,
                   batch_size: int = 16, device: str = "auto", amp: str = "none", score_threshold: float = 0.3,
                   template: tuple[str, str] = ("_test", "_temp"), draw: int = 4) -> dict[str, Any]:
    """Detect defects on every board image of a folder with a saved model.

    A 2-channel model reads each ``<n>_test.*`` with its ``<n>_temp.*`` template; a 1-channel
    model reads every image but the ``*_temp.*`` ones. Boxes are reported in the original pixels.

    Args:
        checkpoint: a ``save_pretrained`` folder with the ``pcb`` head.
        folder: the images (searched recursively).
        out: writes ``predictions.json`` and ``predictions.png`` here.
        image_size: the model's input side (boards are resized to it).
        batch_size: boards per forward pass.
        device: torch device or ``"auto"``.
        amp: ``"none"`` or ``"bf16"``.
        score_threshold: detections kept from this score up.
        template: ``(board_suffix, template_suffix)`` for 2-channel models.
        draw: boards drawn into the PNG.

    Returns:
        ``{"images", "detections", "json", "png"}``.
    """
    import torch
    from torch.utils.data import DataLoader

    from vlsdk import VLModel
    from vlsdk_industrial.folder import ImageFolder
    from vlsdk_industrial.transforms import build_transforms

    dev = _device(device)
    model = VLModel.from_pretrained(checkpoint, map_location=dev).eval()
    if HEAD not in model.heads:
        raise ValueError(f"{checkpoint} has no {HEAD!r} detection head (heads: {sorted(model.heads)})")
    two = model.config.in_chans == 2
    images = ImageFolder(folder, template=template if two else None, exclude=() if two else (template[1],),
                         transform=build_transforms(train=False, size=image_size))
    if len(images) == 0:
        raise ValueError(f"no board images in {folder}" + (f" named *{template[0]}.*" if two else ""))
    loader = DataLoader(images, batch_size=batch_size, collate_fn=collate)
    head = model.heads[HEAD]
    results, drawn = [], []
    with torch.no_grad():
        for batch, _, samples in loader:
            with _autocast(dev, amp):
                out_ = model(batch.to(dev), heads=[HEAD])
            for d, s in zip(head.decode(float_output(out_[HEAD]), score_threshold=score_threshold), samples,
                            strict=True):
                h, w = s["size"]
                scale = np.array([w / image_size, h / image_size] * 2)
                results.append({"path": s["path"], "boxes": (d.boxes.cpu().numpy() * scale).round(1).tolist(),
                                "scores": d.scores.cpu().numpy().round(4).tolist(),
                                "labels": [DEEPPCB_CLASSES[int(k)] for k in d.labels.cpu()]})
                if len(drawn) < max(1, draw):
                    drawn.append({"boxes": d.boxes.cpu().numpy(), "scores": d.scores.cpu().numpy(),
                                  "labels": d.labels.cpu().numpy(), "sample": s})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(results, indent=1))
    png = draw_predictions(drawn, out / "predictions.png", score_threshold=score_threshold)
    print(f"{len(results)} boards, {sum(len(r['scores']) for r in results)} detections -> "
          f"{out / 'predictions.json'}, {png}")
    return {"images": len(results), "detections": sum(len(r["scores"]) for r in results),
            "json": str(out / "predictions.json"), "png": str(png)}

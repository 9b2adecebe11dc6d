"""The industrial part of ``vlsdk demo``: PCB defect detection on synthetic boards (or a DeepPCB folder).

A ``tiny`` detector with the ``industrial.pcb_defect`` expert inserted (its router row opened so
it receives tokens from the start) is trained briefly with the core Trainer on procedurally drawn
boards (board + defect-free template as two channels, box-aware augmentations), then scored on
held-out boards (other seeds) with mAP@0.5 and DeepPCB's IoU > 0.33 criterion. No data folder
and no downloads; about a minute on a 2-core CPU (``quick``: a few seconds).

``vlsdk demo --data industrial=<DeepPCB folder>`` (``data=``) trains the same detector on the first
``trainval`` pairs of the folder instead, read through
:class:`~vlsdk_industrial.deeppcb.DeepPCBDataset` with the template as the second channel (as
the ``industrial.pcb`` task does), resized to 256 x 256, and scores it on the
first ``test`` pairs. The full real-data recipe is ``vlsdk pcb --data <DeepPCB folder>``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsdk_industrial.samples import DEEPPCB_CLASSES

if TYPE_CHECKING:
    from vlsdk.demo import DemoResult

__all__ = ["run_demo"]

#: ``quick`` -> (image size, training boards, steps, batch size, held-out boards).
_SETTINGS = {True: (128, 48, 50, 8, 8), False: (128, 192, 300, 8, 32)}
#: Held-out boards use seeds from here on (training boards use ``seed, seed + 1, ...``).
_HELD_OUT_SEED = 1_000_000
#: With ``data=``: DeepPCB boards (640 x 640) are resized to this (defects stay a few pixels wide).
_REAL_SIZE = 256


class _Cached:
    """A map-style dataset that draws each board once, then re-augments it on every read."""

    classes = DEEPPCB_CLASSES

    def __init__(self, boards: Any, transform: Any = None) -> None:
        self.samples = [boards[i] for i in range(len(boards))]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        return self.transform(dict(sample)) if self.transform is not None else sample


def _boards(data: Path | None, *, size: int, n_train: int, n_eval: int, seed: int) -> tuple[Any, Any]:
    """``(training boards, held-out boards)``: synthetic, or the first pairs of a DeepPCB folder (resized once)."""
    from vlsdk_industrial.synth import BoardSynthesizer
    from vlsdk_industrial.transforms import build_transforms

    augment = build_transforms(train=True, affine=0.0, photometric=0.3, seed=seed)
    if data is None:
        synth = BoardSynthesizer(size=size, template=True, min_defects=1, max_defects=4)
        return (_Cached(synth.dataset(n_train, seed=seed), augment),
                _Cached(synth.dataset(n_eval, seed=_HELD_OUT_SEED + seed)))
    from vlsdk_industrial.deeppcb import DeepPCBDataset

    resize = build_transforms(train=False, size=size)
    train = DeepPCBDataset(data, "trainval", template=True, transform=resize, on_error="skip", max_samples=n_train)
    test = DeepPCBDataset(data, "test", template=True, transform=resize, on_error="skip", max_samples=n_eval)
    for part in (train, test):
        if not len(part):
            raise ValueError(f"{data}: no readable DeepPCB pairs listed in {part.list_file}")
    return _Cached(train, augment), _Cached(test)


def run_demo(out_dir: Path, *, quick: bool, device: str, seed: int, steps: int | None = None,
             data: Path | None = None) -> DemoResult:
    """Train and evaluate a small PCB defect detector on synthetic boards or DeepPCB (``vlsdk demo``).

    Args:
        out_dir: where ``predictions.png`` and the Trainer's files go.
        quick: the fastest setting (tests).
        device: torch device.
        seed: seed of the boards, initialisation and data order.
        steps: training steps (``None``: 50 quick, 300 full).
        data: a DeepPCB folder (holding ``PCBData/``) to train and score on instead of synthetic
            boards; ``None``: synthetic.

    Returns:
        The :class:`~vlsdk.demo.DemoResult` with ``map50`` and ``deeppcb`` (mAP at IoU > 0.33).

    Raises:
        ValueError: ``steps < 1``, or a ``data`` folder that is not in the DeepPCB layout.
    """
    import numpy as np
    import torch
    from vlsdk.demo import DemoResult
    from vlsdk.tasks.runner import fit_stage
    from vlsdk_industrial.samples import collate
    from vlsdk_industrial.task import PcbSettings, PcbTask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, n_train, default_steps, batch, n_eval = _SETTINGS[bool(quick)]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1 or None, got {steps!r}")
    steps = default_steps if steps is None else steps
    size = size if data is None else _REAL_SIZE
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread beats two contending ones on a shared 2-core CPU
    try:
        started = time.perf_counter()
        torch.manual_seed(seed)
        train_set, held_out = _boards(None if data is None else Path(data), size=size, n_train=n_train,
                                      n_eval=n_eval, seed=seed)
        task = PcbTask()
        settings = PcbSettings(model="tiny", image_size=size, batch_size=batch, lr=2e-3, device=device, seed=seed,
                               out=out_dir, progress=False, num_workers=0, draw=4)
        model = task.build_model(settings, train_set).to(device)  # expert inserted, router row open
        fit = fit_stage(task, model, train_set, settings, steps=steps, folder="train")
        trained = time.perf_counter() - started
        with torch.no_grad():
            result = task.evaluate(model.eval(), held_out, settings)
            png = task.render(model, held_out, settings, out_dir / "predictions.png")
        samples = collate(held_out.samples[:4])[0].to(device)  # the routing views run the model on them
        train_samples = collate(train_set.samples[:16])[0]  # the cross-domain routing lesson
    finally:
        torch.set_num_threads(threads)
    metrics = {k: float(np.nan_to_num(result[m])) for k, m in (("map50", "map50"), ("deeppcb", "map_deeppcb"))}
    losses = [row["loss"] for row in fit.train]
    pictures = [fit.files["routing_png"]] if "routing_png" in fit.files else []  # expert shares over training
    if data is not None:
        return DemoResult(
            domain="industrial", title=f"PCB defect detection on DeepPCB ({Path(data).name})", metrics=metrics,
            images=[png, *pictures], model=model.eval(), samples=samples, expert="industrial.pcb_defect",
            train_samples=train_samples, train_steps=fit.step,
            summary=(f"Real data from {data}: the same tiny detector with the industrial.pcb_defect expert, trained "
                     f"for {fit.step} steps ({trained:.0f} s on {device} with loading) on the first "
                     f"{len(train_set)} DeepPCB trainval pairs (defective board + defect-free template as two "
                     f"channels, resized from 640 to {size} x {size}; loss {losses[0]:.2f} -> {losses[-1]:.2f}), "
                     f"scored on the first {len(held_out)} test pairs: mAP@0.5 {metrics['map50']:.3f}, DeepPCB "
                     f"criterion (IoU > 0.33) {metrics['deeppcb']:.3f}. Green: ground truth, red: predictions "
                     f"(score >= 0.3). The full recipe (640 x 640, every pair, more steps): vlsdk pcb --data {data}."))
    summary = (f"A tiny VLModel with the industrial.pcb_defect expert and a detection head, trained for {fit.step} "
               f"steps ({trained:.0f} s on {device}) on {n_train} synthetic {size} x {size} boards (board + "
               f"defect-free template as two channels; loss {losses[0]:.2f} -> {losses[-1]:.2f}), scored on "
               f"{n_eval} held-out boards: mAP@0.5 {metrics['map50']:.3f}, DeepPCB criterion (IoU > 0.33) "
               f"{metrics['deeppcb']:.3f}. Green: ground truth, red: predictions (score >= 0.3). "
               f"Real boards: vlsdk demo --data industrial=<DeepPCB folder>, or vlsdk pcb --data <DeepPCB folder>.")
    return DemoResult(domain="industrial", title="PCB defect detection on synthetic boards", metrics=metrics,
                      images=[png, *pictures], model=model.eval(),
                      samples=samples, expert="industrial.pcb_defect",
                      summary=summary, train_samples=train_samples, train_steps=fit.step)

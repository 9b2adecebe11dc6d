"""The industrial part of ``vlsdk demo``: PCB defect detection on synthetic boards only.

A ``tiny`` detector with the ``industrial.pcb_defect`` expert inserted (its router row opened so
it receives tokens from the start) is trained briefly with the core Trainer on procedurally drawn
boards (board + defect-free template as two channels, box-aware augmentations), then scored on
held-out boards (other seeds) with mAP@0.5 and DeepPCB's IoU > 0.33 criterion. No data folder
and no downloads; about a minute on a 2-core CPU (``quick``: a few seconds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlsdk.demo import DemoResult

__all__ = ["run_demo"]

#: ``quick`` -> (image size, training boards, steps, batch size, held-out boards).
_SETTINGS = {True: (128, 48, 50, 8, 8), False: (128, 192, 300, 8, 32)}
#: Held-out boards use seeds from here on (training boards use ``seed, seed + 1, ...``).
_HELD_OUT_SEED = 1_000_000


class _Cached:
    """A map-style dataset that draws each board once, then re-augments it on every read."""

    def __init__(self, boards: Any, transform: Any = None) -> None:
        self.samples = [boards[i] for i in range(len(boards))]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        return self.transform(dict(sample)) if self.transform is not None else sample


def _upscaled(pred: dict[str, Any], factor: int) -> dict[str, Any]:
    """A prediction with its board and boxes ``factor`` times larger (readable labels on small boards)."""
    import numpy as np

    s = pred["sample"]
    image = np.repeat(np.repeat(s["image"], factor, axis=0), factor, axis=1)
    sample = {**s, "image": image, "boxes": np.asarray(s["boxes"], np.float32) * factor}
    return {**pred, "boxes": pred["boxes"] * factor, "sample": sample}


def run_demo(out_dir: Path, *, quick: bool, device: str, seed: int) -> DemoResult:
    """Train and evaluate a small PCB defect detector on synthetic boards (``vlsdk demo``).

    Args:
        out_dir: where ``predictions.png`` and the Trainer's files go.
        quick: the fastest setting (tests).
        device: torch device.
        seed: seed of the boards, initialisation and data order.

    Returns:
        The :class:`~vlsdk.demo.DemoResult` with ``map50`` and ``deeppcb`` (mAP at IoU > 0.33).
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from vlsdk.demo import DemoResult
    from vlsdk_industrial.pipeline import build_detector, draw_predictions, evaluate, train
    from vlsdk_industrial.samples import collate
    from vlsdk_industrial.synth import BoardSynthesizer
    from vlsdk_industrial.transforms import build_transforms

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, n_train, steps, batch, n_eval = _SETTINGS[bool(quick)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread beats two contending ones on a shared 2-core CPU
    try:
        started = time.perf_counter()
        torch.manual_seed(seed)
        synth = BoardSynthesizer(size=size, template=True, min_defects=1, max_defects=4)
        train_set = _Cached(synth.dataset(n_train, seed=seed),
                            build_transforms(train=True, affine=0.0, photometric=0.3, seed=seed))
        held_out = _Cached(synth.dataset(n_eval, seed=_HELD_OUT_SEED + seed))
        model = build_detector("tiny", in_chans=2, expert=True).to(device)  # expert inserted, router row open
        fit = train(model, train_set, steps=steps, batch_size=batch, lr=2e-3, device=device, seed=seed,
                    out_dir=out_dir / "train", progress=False)
        trained = time.perf_counter() - started
        loader = DataLoader(held_out, batch_size=batch, shuffle=False, collate_fn=collate)
        result, preds, _ = evaluate(model, loader, device=device, progress=False)
        png = draw_predictions([_upscaled(p, 3) for p in preds[:4]], out_dir / "predictions.png", score_threshold=0.3)
        samples = collate(held_out.samples[:4])[0].to(device)  # the routing views run the model on them
        train_samples = collate(train_set.samples[:16])[0]  # the cross-domain routing lesson
    finally:
        torch.set_num_threads(threads)
    metrics = {k: float(np.nan_to_num(v)) for k, v in (("map50", result.map50), ("deeppcb", result.map_deeppcb))}
    losses = [row["loss"] for row in fit.train]
    summary = (f"A tiny VLModel with the industrial.pcb_defect expert and a detection head, trained for {fit.step} "
               f"steps ({trained:.0f} s on {device}) on {n_train} synthetic {size} x {size} boards (board + "
               f"defect-free template as two channels; loss {losses[0]:.2f} -> {losses[-1]:.2f}), scored on "
               f"{n_eval} held-out boards: mAP@0.5 {metrics['map50']:.3f}, DeepPCB criterion (IoU > 0.33) "
               f"{metrics['deeppcb']:.3f}. Green: ground truth, red: predictions (score >= 0.3). "
               f"Real boards: vlsdk pcb --data <DeepPCB folder>.")
    pictures = [fit.files["routing_png"]] if "routing_png" in fit.files else []  # expert shares over training
    return DemoResult(domain="industrial", title="PCB defect detection on synthetic boards", metrics=metrics,
                      images=[png, *pictures], model=model.eval(),
                      samples=samples, expert="industrial.pcb_defect",
                      summary=summary, train_samples=train_samples)

"""The medical part of ``vlsdk demo``: lesion segmentation on synthetic images only.

A 1-channel ``tiny`` :class:`~vlsdk.VLModel` with the ``medical.lesion`` expert inserted (its
router row opened, ``init_bias=0.0``, so it receives tokens from the start) and a binary
segmentation head is trained briefly with the core :class:`~vlsdk.train.Trainer` on images of the
``medical.lesions`` synthesizer (:class:`~vlsdk_medical.synth.LesionSynthesizer`), then scored with
MONAI Dice / HD95 on held-out images (other seeds). No data folder and no downloads, so every user
gets the same numbers for the same seed. Real data: ``vlsdk medical-lesion --data <BraTS folder>``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlsdk.demo import DemoResult

__all__ = ["run_demo"]

#: ``quick`` -> (image size, training images, steps, batch size, held-out images).
_SETTINGS = {True: (64, 80, 80, 8, 16), False: (64, 384, 400, 8, 48)}
#: Held-out images use seeds from here on (training images use ``seed, seed + 1, ...``).
_HELD_OUT_SEED = 1_000_000


class _Flipped:
    """The synthetic images, drawn once, with a random flip / transpose on every read."""

    def __init__(self, samples: list[dict[str, Any]], seed: int) -> None:
        import numpy as np

        self.samples = samples
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, label = sample["image"], sample["label"]
        flips = [d for d, f in zip((1, 2), self.rng.random(2) < 0.5, strict=True) if f]
        if flips:
            image, label = image.flip(flips), label.flip(flips)
        if self.rng.random() < 0.5:
            image, label = image.transpose(1, 2), label.transpose(1, 2)
        return {"image": image.contiguous(), "label": label.contiguous()}


def run_demo(out_dir: Path, *, quick: bool, device: str, seed: int) -> DemoResult:
    """Train and evaluate a small lesion segmenter on synthetic images (``vlsdk demo``).

    Args:
        out_dir: where ``predictions.png`` and the Trainer's files go.
        quick: the fastest setting (tests): fewer images and steps.
        device: torch device.
        seed: seed of the images, initialisation and data order.

    Returns:
        The :class:`~vlsdk.demo.DemoResult` with ``dice`` (mean per-image MONAI Dice on the held-out
        images), ``dice_empty`` (the Dice an all-background prediction gets: 0), ``hd95`` (pixels)
        and the overlay PNG.
    """
    import torch

    import vlsdk
    from vlsdk.demo import DemoResult
    from vlsdk.train import TrainConfig, Trainer
    from vlsdk_medical.dataset import collate_samples
    from vlsdk_medical.metrics import CaseDice, CaseHD95
    from vlsdk_medical.pipeline import lesion_loss, write_overlay
    from vlsdk_medical.synth import LesionSynthesizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, n_train, steps, batch, n_eval = _SETTINGS[bool(quick)]
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)  # small tensors: one thread beats two contending ones on a shared 2-core CPU
    try:
        started = time.perf_counter()
        synth = LesionSynthesizer((size, size), count=(1, 3), radius=(3.0, 9.0), contrast=(0.3, 0.8),
                                  noise=(0.0, 0.15))
        train_set = _Flipped([synth(seed + i) for i in range(n_train)], seed)
        held_out = collate_samples([synth(_HELD_OUT_SEED + seed + i) for i in range(n_eval)])
        torch.manual_seed(seed)
        model = vlsdk.VLModel("tiny", in_chans=1)
        model.add_head("lesion", task="segmentation", num_classes=1)
        model.add_expert("medical.lesion", init_bias=0.0)  # open its router row: it gets tokens from step 0
        config = TrainConfig(steps=steps, batch_size=batch, lr=2e-3, weight_decay=1e-4,
                             warmup_steps=max(1, steps // 20), amp="off", device=device, seed=seed,
                             out_dir=str(out_dir / "train"),
                             progress=not quick, log_every=max(1, steps // 10), clip_grad=1.0)
        fit = Trainer(model, lesion_loss, train_set, config, collate_fn=collate_samples).fit()
        trained = time.perf_counter() - started
        model.eval()
        images, labels = held_out["image"], held_out["label"][:, 0].long()
        with torch.no_grad():
            logits = model(images.to(next(model.parameters()).device), heads=["lesion"])["lesion"].logits.float().cpu()
        pred = (logits[:, 0] > 0).long()
        cases = [f"held-out {i}" for i in range(n_eval)]
        dice, hd95, empty = CaseDice(2), CaseHD95(2), CaseDice(2)
        dice.update(pred, labels, cases=cases)
        hd95.update(pred, labels, cases=cases)
        empty.update(torch.zeros_like(labels), labels, cases=cases)
        d, h, e = dice.compute()["mean"], hd95.compute()["mean"], empty.compute()["mean"]
        png = write_overlay(out_dir / "predictions.png", images, labels, pred, num=4,
                            title=f"held-out synthetic images, Dice {d:.2f} ", panel="held-out image")
    finally:
        torch.set_num_threads(threads)
    metrics = {"dice": float(d), "dice_empty": float(e)}
    if math.isfinite(h):  # undefined when nothing at all is predicted
        metrics["hd95"] = float(h)
    losses = [row["loss"] for row in fit.train if "loss" in row]
    summary = (f"A tiny 1-channel VLModel with the medical.lesion expert (router row opened) and a binary "
               f"segmentation head, trained with the core Trainer for {fit.step} steps ({trained:.0f} s on "
               f"{device} with the data) on {n_train} synthetic {size} x {size} images of the medical.lesions "
               f"synthesizer (random tissue, 1-3 bright or dark lesions, noise; random flips; loss "
               f"{losses[0]:.2f} -> {losses[-1]:.2f}), scored with MONAI on {n_eval} held-out images (other "
               f"seeds): mean Dice {d:.3f} (an all-background prediction scores {e:.1f}), HD95 {h:.1f} px. "
               f"Green: ground truth, red: prediction. Real MRI: vlsdk medical-lesion --data <BraTS folder>.")
    pictures = [fit.files["routing_png"]] if "routing_png" in fit.files else []  # expert shares over training
    return DemoResult(domain="medical", title="Lesion segmentation on synthetic images", metrics=metrics,
                      images=[png, *pictures], model=model.eval(),
                      samples=images, expert="medical.lesion", summary=summary,
                      train_samples=torch.stack([s["image"] for s in train_set.samples[:16]]))


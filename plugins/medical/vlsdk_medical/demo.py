"""The medical part of ``vlsdk demo``: lesion segmentation on synthetic images (or a BraTS folder).

A 1-channel ``tiny`` :class:`~vlsdk.VLModel` with the ``medical.lesion`` expert inserted (its
router row opened, ``init_bias=0.0``, so it receives tokens from the start) and a binary
segmentation head is trained briefly with the core :class:`~vlsdk.train.Trainer` on images of the
``medical.lesions`` synthesizer (:class:`~vlsdk_medical.synth.LesionSynthesizer`), then scored with
MONAI Dice / HD95 on held-out images (other seeds). No data folder and no downloads, so every user
gets the same numbers for the same seed.

``vlsdk demo --data medical=<BraTS folder>`` (``data=``) trains the same model on a few FLAIR
slices of the folder's training patients instead (random lesion/background crops through
:class:`~vlsdk_medical.dataset.LesionSliceDataset`) and scores whole-tumour Dice / HD95 (mm) on
slices through the tumour of a held-out patient (the ``test`` split's first, else the last
patient), every slice of the selection stacked into one volume. The full
real-data recipe is ``vlsdk medical-lesion --data <BraTS folder>``.
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
#: ``quick`` -> (training slices per patient, held-out slices) with ``data=``.
_REAL_SLICES = {True: (8, 8), False: (24, 24)}


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


def _brats_split(data: Path) -> tuple[list[Any], list[Any]]:
    """``(training patients, [held-out patient])`` of a BraTS folder, FLAIR only (1 channel)."""
    from vlsdk_medical.dataset import find_brats_cases

    cases = find_brats_cases(data, None, ("flair",))  # raises naming the folder when it holds none
    try:
        held = find_brats_cases(data, "test", ("flair",))[:1]
    except ValueError:  # no test split: hold the last patient out
        held = cases[-1:]
    train = [c for c in cases if c.case_id != held[0].case_id]
    if not train:
        raise ValueError(f"{data}: the demo needs at least 2 BraTS patients (one is held out), found "
                         f"{[c.case_id for c in cases]}")
    return train, held


def _real_data(data: Path, *, quick: bool, size: int, steps: int, batch: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """Training crops and held-out slices of a BraTS folder, shaped like the synthetic ones."""
    import math

    import torch

    from vlsdk_medical.dataset import LesionSliceDataset

    train_cases, held = _brats_split(data)
    per_case, n_eval = _REAL_SLICES[bool(quick)]
    train_set = LesionSliceDataset(train_cases, roi_size=size, seed=seed, slices="lesion", max_slices_per_case=per_case,
                                   transform_options={"pos": 2.0, "neg": 1.0, "intensity_prob": 0.3})
    train_set.repeats = max(1, math.ceil(steps * batch / len(train_set.index)))  # fresh crops on every visit
    eval_set = LesionSliceDataset(held, transform=None, slices="lesion", max_slices_per_case=n_eval, seed=seed)
    raw = [eval_set.raw(i) for i in range(len(eval_set))]
    ks = torch.tensor([r["index"] for r in raw])
    spacing = list(eval_set.spacings[0])
    spacing[eval_set.axis] *= float(ks.diff().float().median()) if len(ks) > 1 else 1.0  # evenly spaced subset
    return train_set, {"image": torch.stack([r["image"] for r in raw]), "label": torch.stack([r["label"] for r in raw]),
                       "case": held[0].case_id, "slices": ks.tolist(), "spacing": spacing,
                       "train_cases": [c.case_id for c in train_cases], "per_case": per_case}


def run_demo(out_dir: Path, *, quick: bool, device: str, seed: int, steps: int | None = None,
             data: Path | None = None) -> DemoResult:
    """Train and evaluate a small lesion segmenter on synthetic images or a BraTS folder (``vlsdk demo``).

    Args:
        out_dir: where ``predictions.png`` and the Trainer's files go.
        quick: the fastest setting (tests): fewer images and steps.
        device: torch device.
        seed: seed of the images, initialisation and data order.
        steps: training steps (``None``: 80 quick, 400 full).
        data: a BraTS folder (``brats_lesion_mri`` layout) to train and score on instead of
            synthetic images; ``None``: synthetic.

    Returns:
        The :class:`~vlsdk.demo.DemoResult` with ``dice`` (mean MONAI Dice on the held-out
        images, or of the held-out patient's slices as one volume), ``dice_empty`` (the Dice an
        all-background prediction gets: 0), ``hd95`` (pixels; mm with ``data``) and the overlay PNG.

    Raises:
        ValueError: ``steps < 1``, or a ``data`` folder without BraTS patients.
    """
    import torch

    import vlsdk
    from vlsdk.demo import DemoResult
    from vlsdk.train import TrainConfig, Trainer
    from vlsdk_medical.dataset import collate_samples
    from vlsdk_medical.metrics import CaseDice, CaseHD95
    from vlsdk_medical.overlay import write_overlay
    from vlsdk_medical.synth import LesionSynthesizer
    from vlsdk_medical.task import lesion_loss

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, n_train, default_steps, batch, n_eval = _SETTINGS[bool(quick)]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1 or None, got {steps!r}")
    steps = default_steps if steps is None else steps
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)  # small tensors: one thread beats two contending ones on a shared 2-core CPU
    try:
        started = time.perf_counter()
        real: dict[str, Any] | None = None
        if data is not None:
            train_set, real = _real_data(Path(data), quick=quick, size=size, steps=steps, batch=batch, seed=seed)
            held_out = real
            n_eval = len(real["slices"])
        else:
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
        # synthetic: every image its own case; real: the held-out patient's slices form one volume
        cases = [f"held-out {i}" for i in range(n_eval)] if real is None else [real["case"]] * n_eval
        spacing = None if real is None else real["spacing"]
        dice, hd95, empty = CaseDice(2), CaseHD95(2), CaseDice(2)
        dice.update(pred, labels, cases=cases, spacing=spacing)
        hd95.update(pred, labels, cases=cases, spacing=spacing)
        empty.update(torch.zeros_like(labels), labels, cases=cases)
        d, h, e = dice.compute()["mean"], hd95.compute()["mean"], empty.compute()["mean"]
        if real is None:
            png = write_overlay(out_dir / "predictions.png", images, labels, pred, num=4,
                                title=f"held-out synthetic images, Dice {d:.2f} ", panel="held-out image")
        else:
            png = write_overlay(out_dir / "predictions.png", images, labels, pred, num=4,
                                title=f"held-out patient {real['case']} (FLAIR), Dice {d:.2f} ",
                                slice_ids=real["slices"])
        train_samples = torch.stack([train_set[i]["image"] for i in range(16)])
    finally:
        torch.set_num_threads(threads)
    metrics = {"dice": float(d), "dice_empty": float(e)}
    if math.isfinite(h):  # undefined when nothing at all is predicted
        metrics["hd95"] = float(h)
    losses = [row["loss"] for row in fit.train if "loss" in row]
    if real is not None:
        return DemoResult(
            domain="medical", title=f"Lesion segmentation on BraTS FLAIR ({Path(data).name})", metrics=metrics,
            images=[png, *([fit.files["routing_png"]] if "routing_png" in fit.files else [])], model=model.eval(),
            samples=images, expert="medical.lesion", train_samples=train_samples, train_steps=fit.step,
            summary=(f"Real data from {data}: the same tiny 1-channel VLModel with the medical.lesion expert, trained "
                     f"with the core Trainer for {fit.step} steps ({trained:.0f} s on {device} with loading) on "
                     f"random {size} x {size} lesion/background crops of {real['per_case']} FLAIR slices through "
                     f"the tumour per training patient ({', '.join(real['train_cases'])}; loss {losses[0]:.2f} -> "
                     f"{losses[-1]:.2f}), scored with MONAI on {n_eval} full slices through the tumour of the "
                     f"held-out patient {real['case']} as one volume: whole-tumour (label > 0) Dice {d:.3f} "
                     f"(all-background {e:.1f}), HD95 {h:.1f} mm. Green: ground truth, red: prediction. The full "
                     f"recipe (both modalities, more slices and steps, sliding-window inference): vlsdk "
                     f"medical-lesion --data {data}."))
    summary = (f"A tiny 1-channel VLModel with the medical.lesion expert (router row opened) and a binary "
               f"segmentation head, trained with the core Trainer for {fit.step} steps ({trained:.0f} s on "
               f"{device} with the data) on {n_train} synthetic {size} x {size} images of the medical.lesions "
               f"synthesizer (random tissue, 1-3 bright or dark lesions, noise; random flips; loss "
               f"{losses[0]:.2f} -> {losses[-1]:.2f}), scored with MONAI on {n_eval} held-out images (other "
               f"seeds): mean Dice {d:.3f} (an all-background prediction scores {e:.1f}), HD95 {h:.1f} px. "
               f"Green: ground truth, red: prediction. Real MRI: vlsdk demo --data medical=<BraTS folder>.")
    pictures = [fit.files["routing_png"]] if "routing_png" in fit.files else []  # expert shares over training
    return DemoResult(domain="medical", title="Lesion segmentation on synthetic images", metrics=metrics,
                      images=[png, *pictures], model=model.eval(),
                      samples=images, expert="medical.lesion", summary=summary,
                      train_samples=train_samples, train_steps=fit.step)


"""Stage 2 (expert specialisation) on real data: does the router learn to send each domain to its expert?

One model, two domains, both 2-channel: BraTS slices (FLAIR + T1c, ``lesion`` segmentation head)
and DeepPCB boards (board + template, ``pcb`` detection head).

**Backbone.** A ``VLModel`` (``--model``, ``tiny`` for ``--quick``, ``edge`` by default) with
both heads, pre-trained *generically*: every parameter, generic experts only, no domain expert,
on batches alternating between the two domains with each domain's own task loss, for
``--pretrain-steps`` (the core :class:`~vlsdk.train.Trainer`). Nothing is downloaded; a random
backbone would make routing arbitrary, and pre-training on both domains gives both heads a
starting point so stage 2 changes only what it is meant to change.

**Stage 2.** ``medical.lesion`` and ``industrial.pcb_defect`` (the registered experts) are
inserted closed (router bias -30: share 0), then opened by
:func:`~vlsdk.train.prepare_specialisation` at ``open_bias="parity"`` (each new row = the mean of
the generic rows; ``--open-bias 0`` shows the old default, under which the two untrained experts
take over most of every token's top-k on a pre-trained router). Each domain in turn: its
expert, its router rows and its head train on its own data with its task loss (the medical and
industrial pipelines' ``lesion_loss`` / ``detection_loss``; the Trainer adds the MoE
load-balancing loss at ``--aux-loss-weight``), everything else frozen.

**Measures**, before (rows opened, untrained) and after: :func:`vlsdk.inspect.domain_expert_table`
(``by="assignments"``, the share of (token, expert) assignments, as
:func:`~vlsdk.train.routing_share`) on held-out images of both domains, per MoE layer: each
domain's share to its own expert and to the other domain's expert; whole-tumour Dice on the
held-out BraTS patient (:func:`~vlsdk_medical.pipeline.evaluate_held_out`); DeepPCB mAP@0.5 on
test boards (:func:`~vlsdk_industrial.pipeline.evaluate`); and that every frozen weight (the
backbone, generic router rows) is bit-identical after stage 2.

    python benchmarks/specialise_routing.py --quick                 # CPU, a few minutes
    python benchmarks/specialise_routing.py --device cuda           # GPU-sized defaults

Writes ``<out>/specialise_routing.json`` and ``<out>/routing_{before,after}.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
EXPERTS = {"medical": "medical.lesion", "industrial": "industrial.pcb_defect"}
HEADS = {"medical": "lesion", "industrial": "pcb"}


@dataclass
class Settings:
    """Benchmark settings (``quick()`` gives the CPU preset).

    Args:
        data: the ``shared/data`` folder (``brats_lesion_mri``, ``deeppcb``).
        out: output folder.
        model: backbone config, the same for both domains.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        pretrain_steps: generic pre-training steps (alternating domains).
        steps: stage-2 steps per domain.
        batch_size: samples per step (slices / boards).
        lr: peak AdamW learning rate of pre-training and stage 2.
        aux_loss_weight: the Trainer's MoE load-balancing weight in stage 2.
        open_bias: how the domain rows are opened (``prepare_specialisation``): ``"parity"``
            (the mean generic row) or a bias value (``0.0``: the old default, a take-over).
        roi_size: BraTS training crop.
        slices_per_case: BraTS training slices per patient (``None``: all brain slices).
        train_splits: BraTS training splits (the held-out patient is ``test``).
        eval_slices: held-out BraTS slices scored (``None``: the whole volume).
        image_size: DeepPCB boards are resized to this side.
        train_boards: DeepPCB trainval pairs used (``None``: all).
        test_boards: DeepPCB test pairs scored and routed.
        seed: everything random.
    """

    data: Path = DATA
    out: Path = Path("runs/specialise_routing")
    model: str = "edge"
    device: str = "auto"
    pretrain_steps: int = 600
    steps: int = 400
    batch_size: int = 16
    lr: float = 1e-3
    aux_loss_weight: float = 0.01
    open_bias: str | float = "parity"
    roi_size: int = 128
    slices_per_case: int | None = None
    train_splits: tuple[str, ...] = ("train", "validation")
    eval_slices: int | None = None
    image_size: int = 512
    train_boards: int | None = None
    test_boards: int = 64
    seed: int = 0

    def quick(self) -> Settings:
        """The CPU preset (a few minutes on two cores)."""
        return replace(self, model="tiny", device="cpu", pretrain_steps=40, steps=30, batch_size=4, roi_size=64,
                       slices_per_case=16, train_splits=("train",), eval_slices=8, image_size=256,
                       train_boards=32, test_boards=8)


class AlternatingBatches(Dataset):
    """Whole single-domain batches, even indices medical, odd industrial (for a Trainer with batch_size 1).

    Args:
        sets: domain -> (dataset, collate function), two domains.
        batch_size: samples per domain batch.
        length: items (batches) per epoch.
    """

    def __init__(self, sets: dict[str, tuple[Dataset, Callable[[list[Any]], Any]]], batch_size: int,
                 length: int) -> None:
        if len(sets) != 2 or batch_size < 1 or length < 2:
            raise ValueError("need two domains, batch_size >= 1 and length >= 2")
        self.domains, self.sets, self.batch_size, self.length = list(sets), sets, batch_size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[str, Any]:
        domain = self.domains[i % 2]
        data, collate = self.sets[domain]
        n = len(data)  # type: ignore[arg-type]
        start = (i // 2) * self.batch_size
        return domain, collate([data[(start + j) % n] for j in range(self.batch_size)])


def _losses() -> dict[str, Callable[[torch.nn.Module, Any], Any]]:
    from vlsdk_industrial.pipeline import detection_loss
    from vlsdk_medical.pipeline import lesion_loss

    return {"medical": lesion_loss, "industrial": detection_loss}


def _alternating_loss(model: torch.nn.Module, item: list[tuple[str, Any]]) -> Any:
    domain, batch = item[0]
    return _losses()[domain](model, batch)


def _train_config(s: Settings, steps: int, out: Path, **extra: Any) -> Any:
    from vlsdk.train import TrainConfig

    return TrainConfig(steps=steps, lr=s.lr, weight_decay=1e-4, warmup_steps=max(1, steps // 20), amp="off",
                       device=s.device, seed=s.seed, out_dir=str(out), progress=False,
                       log_every=max(1, min(10, steps // 4)), clip_grad=1.0, **extra)


def load_domains(s: Settings) -> dict[str, Any]:
    """Training sets, collates, evaluation settings and held-out routing inputs of both domains."""
    from vlsdk_industrial.deeppcb import DeepPCBDataset
    from vlsdk_industrial.pipeline import collate_uint8
    from vlsdk_industrial.samples import collate
    from vlsdk_industrial.transforms import build_transforms
    from vlsdk_medical.dataset import collate_samples
    from vlsdk_medical.pipeline import LesionTrainConfig, lesion_train_set

    med_cfg = LesionTrainConfig(data_root=str(s.data / "brats_lesion_mri"), train_splits=s.train_splits,
                                roi_size=s.roi_size, max_slices_per_case=s.slices_per_case, eval_slices=s.eval_slices,
                                batch_size=s.batch_size, epochs=1, seed=s.seed, device=s.device, progress=False
                                ).resolved()
    med_train, _ = lesion_train_set(med_cfg)
    pcb_root = s.data / "deeppcb"
    pcb_train = DeepPCBDataset(pcb_root, "trainval", template=True, on_error="skip", max_samples=s.train_boards,
                               transform=build_transforms(train=True, size=s.image_size, seed=s.seed), cache="uint8")
    pcb_test = DeepPCBDataset(pcb_root, "test", template=True, on_error="skip", max_samples=s.test_boards,
                              transform=build_transforms(train=False, size=s.image_size))
    test_loader = DataLoader(pcb_test, batch_size=min(8, s.test_boards), collate_fn=collate)
    return {"medical_cfg": med_cfg, "pcb_test": test_loader,
            "train": {"medical": (med_train, collate_samples), "industrial": (pcb_train, collate_uint8)}}


def build_backbone(s: Settings, domains: dict[str, Any]) -> Any:
    """A VLModel with both heads, generically pre-trained on alternating domain batches (no domain expert)."""
    import vlsdk
    from vlsdk.train import Trainer
    from vlsdk_industrial.samples import DEEPPCB_CLASSES

    torch.manual_seed(s.seed)
    model = vlsdk.VLModel(s.model, in_chans=2, text=None)
    model.add_head(HEADS["medical"], task="segmentation", num_classes=1)
    model.add_head(HEADS["industrial"], task="detection", num_classes=len(DEEPPCB_CLASSES))
    data = AlternatingBatches(domains["train"], s.batch_size, length=max(2, 2 * math.ceil(s.pretrain_steps / 2)))
    cfg = _train_config(s, s.pretrain_steps, s.out / "pretrain", batch_size=1)
    Trainer(model, _alternating_loss, data, cfg, collate_fn=list).fit()
    return model


def measure(model: Any, s: Settings, domains: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Domain x expert routing table on held-out images, held-out Dice and test-board mAP@0.5."""
    from vlsdk.inspect import domain_expert_table
    from vlsdk_industrial.pipeline import evaluate
    from vlsdk_medical.pipeline import evaluate_held_out

    med = evaluate_held_out(model, domains["medical_cfg"], device)
    result, _, _ = evaluate(model, domains["pcb_test"], device=device, progress=False)
    slices = [shown[0] for shown in med["shown"].values()]  # (S, C, X, Y) held-out slices per patient
    boards = [images for images, _, _ in domains["pcb_test"]]
    table = domain_expert_table(model, {"medical": slices, "industrial": boards}, by="assignments")
    model.train()
    return {"table": table, "dice": float(med["dice_mean"]), "dice_raw": float(med["before"]["dice_mean"]),
            "map50": float(result.map50)}


def specialise(model: Any, s: Settings, domain: str, domains: dict[str, Any]) -> list[str]:
    """Stage 2 for one domain: its expert, router rows and head train on its data; returns what trained."""
    from vlsdk.train import Trainer, prepare_specialisation

    # the rows were opened for the "before" table already: open_bias=None leaves them as they are
    trainable = prepare_specialisation(model, [EXPERTS[domain]], open_bias=None, train_heads=[HEADS[domain]])
    data, collate = domains["train"][domain]
    cfg = _train_config(s, s.steps, s.out / f"stage2_{domain}", batch_size=s.batch_size,
                        aux_loss_weight=s.aux_loss_weight)
    Trainer(model, _losses()[domain], data, cfg, collate_fn=collate).fit()
    return trainable


def frozen_snapshot(model: Any) -> dict[str, torch.Tensor]:
    """Every weight that stage 2 must not change: all but domain experts, their router rows and heads."""
    snap = {n: p.detach().clone() for n, p in model.named_parameters()
            if not n.startswith("heads.") and not any(f"experts.{e}." in n for e in EXPERTS.values())
            and not n.endswith(("router.weight", "router.bias"))}
    for i, layer in enumerate(model.moe_layers):
        keep = [j for j, e in enumerate(layer.expert_names) if e not in EXPERTS.values()]
        snap[f"moe{i}.router.weight[generic]"] = layer.router.weight.detach()[keep].clone()
        snap[f"moe{i}.router.bias[generic]"] = layer.router.bias.detach()[keep].clone()
    return snap


def changed(before: dict[str, torch.Tensor], model: Any) -> list[str]:
    """Names in ``before`` whose tensors are not bit-identical now."""
    now = frozen_snapshot(model)
    return [n for n, t in before.items() if not torch.equal(t, now[n])]


def routing_rows(before: Any, after: Any) -> list[dict[str, Any]]:
    """Per domain, expert and MoE layer: the share before and after (``own``: the domain's own expert)."""
    rows = []
    for d, domain in enumerate(after.domains):
        for expert in EXPERTS.values():
            j = after.experts.index(expert)
            layers = [(f"layer {i}", float(before.per_layer[i, d, j]), float(after.per_layer[i, d, j]))
                      for i in range(after.per_layer.shape[0])]
            layers.append(("all", float(before.share[d, j]), float(after.share[d, j])))
            for layer, b, a in layers:
                rows.append({"domain": domain, "expert": expert, "own": expert == EXPERTS[domain],
                             "layer": layer, "before": b, "after": a})
    return rows


def run(s: Settings) -> dict[str, Any]:
    """The whole benchmark; returns (and writes) the JSON summary."""
    import vlsdk
    from vlsdk.inspect import plot_domain_expert_table

    started = time.perf_counter()
    s.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if s.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if s.device == "auto" else s.device))
    s = replace(s, device=str(device))
    domains = load_domains(s)
    model = build_backbone(s, domains)
    for expert in EXPERTS.values():
        model.add_expert(expert)  # inserted closed: router bias -30
    closed = measure(model, s, domains, device)["table"]
    prepare_specialisation_open(model, s)
    before = measure(model, s, domains, device)
    snapshot = frozen_snapshot(model)
    trainable: list[str] = []
    for domain in EXPERTS:
        trainable += specialise(model, s, domain, domains)
    after = measure(model, s, domains, device)
    moved = changed(snapshot, model)
    plot_domain_expert_table(before["table"], s.out / "routing_before.png", title="Before stage 2 (rows opened)")
    plot_domain_expert_table(after["table"], s.out / "routing_after.png", title="After stage 2")
    summary = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "vlsdk": vlsdk.__version__, "device": str(device),
        "closed_own_share": {d: closed.own_share(d) for d in EXPERTS},
        "routing": routing_rows(before["table"], after["table"]),
        "share_before": before["table"].share.tolist(), "share_after": after["table"].share.tolist(),
        "table_columns": after["table"].experts, "table_rows": after["table"].domains,
        "metrics": {k: {"before": before[k], "after": after[k]} for k in ("dice", "dice_raw", "map50")},
        "frozen_checked": len(snapshot), "frozen_changed": moved,
        "trainable": sorted(set(trainable)), "seconds": time.perf_counter() - started,
        "pngs": [str(s.out / "routing_before.png"), str(s.out / "routing_after.png")],
    }
    (s.out / "specialise_routing.json").write_text(json.dumps(summary, indent=2))
    return summary


def prepare_specialisation_open(model: Any, s: Settings) -> None:
    """Open both domain rows (``s.open_bias``) without training: the 'before' state of stage 2."""
    from vlsdk.train import prepare_specialisation

    prepare_specialisation(model, list(EXPERTS.values()), open_bias=s.open_bias, train_heads=False)


def print_table(summary: dict[str, Any]) -> None:
    """The before/after routing table and the task metrics."""
    print(f"{'domain':<11} {'-> expert':<22} {'layer':<8} {'before':>8} {'after':>8}")
    for r in summary["routing"]:
        tag = " (own)" if r["own"] else ""
        print(f"{r['domain']:<11} {r['expert'] + tag:<22} {r['layer']:<8} {r['before']:8.3f} {r['after']:8.3f}")
    m = summary["metrics"]
    print(f"held-out BraTS Dice (post-processed): {m['dice']['before']:.4f} -> {m['dice']['after']:.4f}  "
          f"(raw {m['dice_raw']['before']:.4f} -> {m['dice_raw']['after']:.4f})")
    print(f"DeepPCB test mAP@0.5: {m['map50']['before']:.4f} -> {m['map50']['after']:.4f}")
    print(f"frozen tensors checked: {summary['frozen_checked']}, changed: {summary['frozen_changed'] or 'none'}")
    print(f"({summary['seconds']:.0f} s on {summary['device']})")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--quick`` for CPU, defaults for a GPU."""
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU preset: tiny backbone, few steps")
    p.add_argument("--data", type=Path, default=d.data)
    p.add_argument("--out", type=Path, default=d.out)
    p.add_argument("--device", default=None)
    p.add_argument("--model", default=None)
    for name in ("pretrain_steps", "steps", "batch_size", "roi_size", "slices_per_case", "eval_slices", "image_size",
                 "train_boards", "test_boards"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("lr", "aux_loss_weight"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--open-bias", type=lambda v: v if v == "parity" else float(v), default=None,
                   help="'parity' (default) or a bias value such as 0 (a take-over on a trained router)")
    args = p.parse_args(argv)
    s = d.quick() if args.quick else d
    given = {k: v for k, v in vars(args).items() if k != "quick" and v is not None}
    s = replace(s, **given)
    for sub in ("brats_lesion_mri", "deeppcb"):
        if not (s.data / sub).is_dir():
            print(f"error: {s.data / sub} not found (pass --data)")
            return 2
    summary = run(s)
    print_table(summary)
    print(f"wrote {s.out / 'specialise_routing.json'} and {', '.join(summary['pngs'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

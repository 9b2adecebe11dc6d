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
:func:`~vlsdk.train.prepare_specialisation` at ``open_bias="parity"`` (its default: each new row =
the mean of the generic rows; ``--open-bias 0`` shows the old default, under which the two
untrained experts take over most of every token's top-k on a pre-trained router). From that one
state, two arms train side by side, each on its own copy: the two experts, their router rows and
both heads, everything else frozen, every step holding one batch of each domain
(:class:`~vlsdk.train.specialise.DomainBatches`, ``--steps`` batches per domain), with the loss
of :class:`~vlsdk.train.specialise.SpecialisationLoss`:

* ``task``: each domain's task loss alone (the medical and industrial pipelines' ``lesion_loss`` /
  ``detection_loss``), i.e. ``--routing-weight 0``;
* ``task+routing``: plus ``--routing-weight`` x the domain routing term, ``-log p(own expert)``
  over the tokens of each domain's batch (:func:`~vlsdk.train.specialise.own_expert_loss`).

The Trainer adds the MoE load-balancing loss at ``--aux-loss-weight`` in both. Both hold the
frozen BatchNorm layers in eval mode (``SpecialisationLoss``'s default; ``--train-batch-norms``
shows the former behaviour, where each single-domain batch was normalised by its own statistics
and the router learnt the token position instead of the domain).

**Measures**, before (rows opened, untrained) and after: :func:`vlsdk.inspect.domain_expert_table`
(``by="assignments"``, the share of (token, expert) assignments, as
:func:`~vlsdk.train.routing_share`; and ``by="top1"``: with top-2 routing and two domain rows
that both beat every generic row, each gets 0.5 of the assignments whatever their order, so the
top-1 share is what shows which of the two a domain's tokens prefer) on held-out images of both
domains, per MoE layer: each
domain's share to its own expert and to the other domain's expert; whole-tumour Dice on the
held-out BraTS patient (:func:`~vlsdk_medical.evaluation.evaluate_held_out`); DeepPCB mAP@0.5 on
test boards (:meth:`~vlsdk_industrial.task.PcbTask.evaluate`); and, per arm, that every frozen weight
(the backbone, generic router rows) and every BatchNorm running statistic is bit-identical after
stage 2.

    python benchmarks/specialise_routing.py --quick                 # CPU, a few minutes
    python benchmarks/specialise_routing.py --device cuda           # GPU-sized defaults

Writes ``<out>/specialise_routing.json`` and ``<out>/routing_{before,task,task_routing}.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vlsdk.train.specialise import ROUTING_WEIGHT

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
EXPERTS = {"medical": "medical.lesion", "industrial": "industrial.pcb_defect"}
HEADS = {"medical": "lesion", "industrial": "pcb"}
ARMS = ("task", "task+routing")


@dataclass
class Settings:
    """Benchmark settings (``quick()`` gives the CPU preset).

    Args:
        data: the ``shared/data`` folder (``brats_lesion_mri``, ``deeppcb``).
        out: output folder.
        model: backbone config, the same for both domains.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        pretrain_steps: generic pre-training steps (alternating domains).
        steps: stage-2 steps (each holds one batch of each domain).
        batch_size: samples per step (slices / boards).
        lr: peak AdamW learning rate of pre-training.
        stage2_lr: peak AdamW learning rate of stage 2 (``None``: ``lr``).
        aux_loss_weight: the Trainer's MoE load-balancing weight in stage 2.
        routing_weight: weight of the domain routing term in the ``task+routing`` arm.
        freeze_batch_norms: hold the frozen BatchNorm layers in eval mode in stage 2.
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
    stage2_lr: float | None = None
    aux_loss_weight: float = 0.01
    routing_weight: float = ROUTING_WEIGHT
    freeze_batch_norms: bool = True
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
        return replace(self, model="tiny", device="cpu", pretrain_steps=40, steps=40, stage2_lr=1e-2, batch_size=4,
                       roi_size=64,
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
    from vlsdk_industrial.task import detection_loss
    from vlsdk_medical.task import lesion_loss

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
    from vlsdk.data.collate import collate_uint8
    from vlsdk_industrial.samples import collate
    from vlsdk_industrial.transforms import build_transforms
    from vlsdk_medical.dataset import collate_samples
    from vlsdk_medical.lesion_settings import LesionSettings
    from vlsdk_medical.task import lesion_train_set

    med_cfg = LesionSettings(data=s.data / "brats_lesion_mri", train_splits=list(s.train_splits),
                             roi_size=s.roi_size, max_slices_per_case=s.slices_per_case, eval_slices=s.eval_slices,
                             batch_size=s.batch_size, epochs=1, seed=s.seed, device=s.device, progress=False)
    med_train = lesion_train_set(med_cfg)
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
    from vlsdk_industrial.task import PcbSettings, PcbTask
    from vlsdk_medical.evaluation import evaluate_held_out
    from vlsdk_medical.task import held_out_set

    med = evaluate_held_out(model.to(device), held_out_set(domains["medical_cfg"]), domains["medical_cfg"])
    test = domains["pcb_test"]
    with torch.no_grad():
        result = PcbTask().evaluate(model.eval(), test.dataset, PcbSettings(batch_size=test.batch_size, num_workers=0))
    slices = [shown[0] for shown in med["shown"].values()]  # (S, C, X, Y) held-out slices per patient
    boards = [images for images, _, _ in domains["pcb_test"]]
    images = {"medical": slices, "industrial": boards}
    table = domain_expert_table(model, images, by="assignments")
    top1 = domain_expert_table(model, images, by="top1")
    model.train()
    return {"table": table, "top1": top1, "dice": float(med["dice_mean"]),
            "dice_raw": float(med["before"]["dice_mean"]), "map50": float(result["map50"])}


def specialise(model: Any, s: Settings, domains: dict[str, Any], routing_weight: float, name: str) -> list[str]:
    """Stage 2 on both domains at once (one batch of each per step); returns what trained."""
    from vlsdk.train import Trainer, prepare_specialisation
    from vlsdk.train.specialise import DomainBatches, SpecialisationLoss

    # the rows were opened for the "before" table already: open_bias=None leaves them as they are
    trainable = prepare_specialisation(model, list(EXPERTS.values()), open_bias=None, train_heads=list(HEADS.values()))
    data = DomainBatches(domains["train"], s.batch_size, length=s.steps)
    loss = SpecialisationLoss(_losses(), EXPERTS, routing_weight=routing_weight,
                              freeze_batch_norms=s.freeze_batch_norms)
    stage2 = replace(s, lr=s.stage2_lr if s.stage2_lr is not None else s.lr)
    cfg = _train_config(stage2, s.steps, s.out / f"stage2_{name.replace('+', '_')}", batch_size=1,
                        aux_loss_weight=s.aux_loss_weight)
    Trainer(model, loss, data, cfg, collate_fn=DomainBatches.collate).fit()
    return trainable


def frozen_snapshot(model: Any) -> dict[str, torch.Tensor]:
    """Every weight that stage 2 must not change: all but domain experts, their router rows and heads.

    The backbone's BatchNorm running statistics are included: buffers, but part of what is frozen.
    """
    snap = {n: p.detach().clone() for n, p in model.named_parameters()
            if not n.startswith("heads.") and not any(f"experts.{e}." in n for e in EXPERTS.values())
            and not n.endswith(("router.weight", "router.bias"))}
    for i, layer in enumerate(model.moe_layers):
        keep = [j for j, e in enumerate(layer.expert_names) if e not in EXPERTS.values()]
        snap[f"moe{i}.router.weight[generic]"] = layer.router.weight.detach()[keep].clone()
        snap[f"moe{i}.router.bias[generic]"] = layer.router.bias.detach()[keep].clone()
    snap.update({n: b.detach().clone() for n, b in model.named_buffers()
                 if not n.startswith("heads.") and n.endswith(("running_mean", "running_var"))})
    return snap


def changed(before: dict[str, torch.Tensor], model: Any) -> list[str]:
    """Names in ``before`` whose tensors are not bit-identical now."""
    now = frozen_snapshot(model)
    return [n for n, t in before.items() if not torch.equal(t, now[n])]


def routing_rows(before: Any, after: dict[str, Any]) -> list[dict[str, Any]]:
    """Per domain, expert and MoE layer (and ``all``): the share before and after each arm.

    ``own`` marks the domain's own expert; ``after`` maps arm -> its table.
    """
    rows = []
    for d, domain in enumerate(before.domains):
        for expert in EXPERTS.values():
            j = before.experts.index(expert)
            layers: list[tuple[str, Any]] = [(f"layer {i}", (i, d, j)) for i in range(before.per_layer.shape[0])]
            layers.append(("all", (d, j)))
            for layer, at in layers:
                def pick(t: Any, at: Any = at, layer: str = layer) -> float:
                    return float((t.share if layer == "all" else t.per_layer)[at])

                row = {"domain": domain, "expert": expert, "own": expert == EXPERTS[domain], "layer": layer,
                       "before": pick(before)}
                row.update({arm: pick(table) for arm, table in after.items()})
                rows.append(row)
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
    after: dict[str, dict[str, Any]] = {}
    moved: dict[str, list[str]] = {}
    trainable: list[str] = []
    for arm in ARMS:
        arm_model = copy.deepcopy(model)
        trainable = specialise(arm_model, s, domains, 0.0 if arm == "task" else s.routing_weight, arm)
        after[arm] = measure(arm_model, s, domains, device)
        moved[arm] = changed(snapshot, arm_model)
        del arm_model
    pngs = [s.out / f"routing_{name.replace('+', '_')}.png" for name in ("before", *ARMS)]
    plot_domain_expert_table(before["table"], pngs[0], title="Before stage 2 (rows opened)")
    for arm, png in zip(ARMS, pngs[1:], strict=True):
        plot_domain_expert_table(after[arm]["table"], png, title=f"After stage 2, {arm}")
    summary = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "vlsdk": vlsdk.__version__, "device": str(device), "arms": list(ARMS),
        "closed_own_share": {d: closed.own_share(d) for d in EXPERTS},
        "routing": routing_rows(before["table"], {arm: after[arm]["table"] for arm in ARMS}),
        "routing_top1": routing_rows(before["top1"], {arm: after[arm]["top1"] for arm in ARMS}),
        "share_before": before["table"].share.tolist(),
        "share_after": {arm: after[arm]["table"].share.tolist() for arm in ARMS},
        "table_columns": before["table"].experts, "table_rows": before["table"].domains,
        "metrics": {k: {"before": before[k], **{arm: after[arm][k] for arm in ARMS}}
                    for k in ("dice", "dice_raw", "map50")},
        "frozen_checked": len(snapshot), "frozen_changed": moved,
        "trainable": sorted(set(trainable)), "seconds": time.perf_counter() - started,
        "pngs": [str(p) for p in pngs],
    }
    (s.out / "specialise_routing.json").write_text(json.dumps(summary, indent=2))
    return summary


def prepare_specialisation_open(model: Any, s: Settings) -> None:
    """Open both domain rows (``s.open_bias``) without training: the 'before' state of stage 2."""
    from vlsdk.train import prepare_specialisation

    prepare_specialisation(model, list(EXPERTS.values()), open_bias=s.open_bias, train_heads=False)


def print_table(summary: dict[str, Any]) -> None:
    """The routing table (before, then after each arm) and the task metrics."""
    arms = summary["arms"]
    for key, what in (("routing", "share of (token, expert) assignments"), ("routing_top1", "share of top-1 choices")):
        print(what)
        print(f"{'domain':<11} {'-> expert':<28} {'layer':<8} {'before':>8} " + " ".join(f"{a:>13}" for a in arms))
        for r in summary[key]:
            tag = " (own)" if r["own"] else ""
            print(f"{r['domain']:<11} {r['expert'] + tag:<28} {r['layer']:<8} {r['before']:8.3f} "
                  + " ".join(f"{r[a]:13.3f}" for a in arms))
    names = {"dice": "held-out BraTS Dice (post-processed)", "dice_raw": "held-out BraTS Dice (raw)",
             "map50": "DeepPCB test mAP@0.5"}
    for key, label in names.items():
        m = summary["metrics"][key]
        print(f"{label}: before {m['before']:.4f}, " + ", ".join(f"{a} {m[a]:.4f}" for a in arms))
    moved = {a: v or "none" for a, v in summary["frozen_changed"].items()}
    print(f"frozen tensors checked: {summary['frozen_checked']}, changed: {moved}")
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
    for name in ("lr", "stage2_lr", "aux_loss_weight", "routing_weight"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--train-batch-norms", dest="freeze_batch_norms", action="store_false", default=None,
                   help="let stage 2 normalise each domain batch by its own statistics (the former behaviour)")
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

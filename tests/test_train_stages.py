"""Training stages 1 and 2: CLIP loss with hard negatives, retrieval recall, expert specialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vlsdk
from vlsdk.train.contrastive import CLIPObjective, clip_loss, retrieval_recall
from vlsdk.train.specialise import (
    SpecialisationLoss,
    frozen_batch_norms,
    mixed_indices,
    prepare_specialisation,
    routing_share,
)


def test_clip_loss_aligned_random_and_hard_negatives():
    e = torch.eye(8)
    assert float(clip_loss(e, e, logit_scale=50.0)) < 1e-6
    torch.manual_seed(0)
    a, b = torch.randn(16, 8), torch.randn(16, 8)
    plain = clip_loss(a, b, 1.0)
    assert float(plain) == pytest.approx(torch.log(torch.tensor(16.0)).item(), rel=0.2)
    assert float(clip_loss(a, b, 1.0, hard_negatives=3, hard_weight=4.0)) > float(plain)
    with pytest.raises(ValueError, match="one shape"):
        clip_loss(a, b[:4])


def test_hard_negatives_concentrate_the_gradient():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], requires_grad=True)
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    # image 2 lies close to text 0: a hard negative whose gradient the up-weighting must grow
    g_plain = torch.autograd.grad(clip_loss(img, txt, 10.0), img)[0]
    g_hard = torch.autograd.grad(clip_loss(img, txt, 10.0, hard_negatives=1, hard_weight=8.0), img)[0]
    assert g_hard[2].norm() > g_plain[2].norm()


def test_retrieval_recall():
    e = torch.randn(10, 4)
    assert retrieval_recall(e, e) == {"i2t_r@1": 1.0, "t2i_r@1": 1.0, "i2t_r@5": 1.0, "t2i_r@5": 1.0}
    r = retrieval_recall(e, -e, ks=(1,))
    assert r["i2t_r@1"] == 0.0


def test_contrastive_pretraining_learns_bilingual_captions():
    torch.manual_seed(0)
    colours = {"red 红色": 0, "green 绿色": 1, "blue 蓝色": 2, "dark 黑色": None}
    images, texts = [], []
    for caption, channel in colours.items():
        img = torch.zeros(3, 32, 32)
        if channel is not None:
            img[channel] = 1.0
        images.append(img)
        texts.append(caption)
    images = torch.stack(images)
    model = vlsdk.VLModel("tiny")
    objective = CLIPObjective(model, dim=16, hard_negatives=1)
    opt = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = objective(images + 0.05 * torch.randn_like(images), texts)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    objective.eval()
    with torch.no_grad():
        recall = retrieval_recall(*objective.embed(images, texts))
    assert loss.item() < 0.5 * first
    assert recall["i2t_r@1"] == 1.0 and recall["t2i_r@1"] == 1.0


class Scale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc(x)


def test_specialisation_trains_only_the_expert_and_opens_its_route():
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.add_expert("medical.toy", Scale)
    images = torch.rand(8, 1, 32, 32)
    masks = (images[:, 0] > 0.7).long()
    before_share = routing_share(model, images, "medical.toy")
    frozen_before = {n: p.clone() for n, p in model.named_parameters()}
    trainable = prepare_specialisation(model, ["medical.toy"])
    assert before_share == 0.0  # inserted closed
    assert all("medical.toy" in n or "router" in n or n.startswith("heads.") for n in trainable)
    assert any("router" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(5):
        out = model(images, heads=["seg"])
        loss = model.heads["seg"].loss(out["seg"], masks)["loss"] + 0.01 * out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after_share = routing_share(model, images, "medical.toy")
    assert after_share > 0.0
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n
    for layer in model.moe_layers:  # generic router rows did not move
        row = layer.expert_names.index("medical.toy")
        keep = [i for i in range(layer.router.num_experts) if i != row]
        before = frozen_before[next(n for n, p in model.named_parameters() if p is layer.router.weight)]
        assert torch.equal(layer.router.weight[keep], before[keep])
    with pytest.raises(ValueError, match="not in the model"):
        prepare_specialisation(model, ["driving.lidar"])


def test_specialisation_loss_holds_frozen_batch_norms_in_eval_mode():
    # Train-mode BatchNorm on a single-domain batch normalises away the domain and moves the
    # running statistics of a frozen backbone; SpecialisationLoss holds those layers in eval mode.
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.add_expert("medical.toy", Scale)
    prepare_specialisation(model, ["medical.toy"])
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(p.requires_grad for m in norms for p in m.parameters())
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    images = torch.rand(4, 1, 32, 32) * 5 + 3  # far from the running statistics

    def seg_loss(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return m.heads["seg"].loss(m(batch, heads=["seg"])["seg"], (batch[:, 0] > 5).long())["loss"]

    loss = SpecialisationLoss({"medical": seg_loss}, {"medical": "medical.toy"})
    loss(model, {"medical": images})["loss"].backward()
    assert all(m.training for m in norms)  # back in train mode afterwards
    for m, (mean, var) in zip(norms, stats, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    SpecialisationLoss({"medical": seg_loss}, {"medical": "medical.toy"}, freeze_batch_norms=False)(
        model, {"medical": images})
    assert not torch.equal(norms[0].running_mean, stats[0][0])  # the former behaviour moved them
    norms[0].weight.requires_grad_(True)  # a trainable norm is left in train mode
    with frozen_batch_norms(model) as held:
        assert norms[0] not in held and norms[0].training and all(not m.training for m in held)


def test_mixed_indices_ratio_and_determinism():
    sched = mixed_indices(30, 10, ratio=3.0, length=40, seed=1)
    assert sum(kind == "synthetic" for kind, _ in sched) == 10
    assert sched == mixed_indices(30, 10, ratio=3.0, length=40, seed=1)
    assert {i for kind, i in sched if kind == "real"} == set(range(30))
    with pytest.raises(ValueError, match="ratio"):
        mixed_indices(5, 0)

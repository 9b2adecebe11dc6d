"""Distillation: a smaller student learns the teacher's features and head outputs."""

from __future__ import annotations

import pytest
import torch

import vlsdk
from vlsdk.train.distill import Distiller


def pair():
    torch.manual_seed(0)
    teacher = vlsdk.VLModel("tiny", in_chans=1)
    teacher.add_head("seg", task="segmentation", num_classes=3)
    teacher.add_head("det", task="detection", num_classes=2)
    student = vlsdk.VLModel("tiny", in_chans=1, embed_dim=32, stem_widths=(8, 16))
    student.add_head("seg", task="segmentation", num_classes=3)
    student.add_head("det", task="detection", num_classes=2)
    return student, teacher


def agreement(student, teacher, images):
    with torch.no_grad():
        s = student.eval()(images, heads=["seg"])["seg"].logits.argmax(1)
        t = teacher.eval()(images, heads=["seg"])["seg"].logits.argmax(1)
    student.train()
    return float((s == t).float().mean())


def test_student_learns_teacher_outputs():
    student, teacher = pair()
    images = torch.rand(4, 1, 32, 32)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(student, teacher).train()
    assert distiller.heads == ["seg", "det"] and distiller.strides == [4, 8, 16, 32]
    before = agreement(student, teacher, images)
    opt = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(25):
        losses = distiller(images)
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["loss"].item() < 0.5 * first["loss"]
    assert losses["seg"].item() < first["seg"] and losses["det"].item() < first["det"]
    assert agreement(student, teacher, images) > before + 0.15
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_bad_strides():
    student, teacher = pair()
    with pytest.raises(ValueError, match="not in both pyramids"):
        Distiller(student, teacher, strides=[64])

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


def test_student_out_reused():
    """Given the student's output, the Distiller does not run the student again and gets the same losses."""
    student, teacher = pair()
    distiller = Distiller(student, teacher).eval()
    images = torch.rand(2, 1, 32, 32)
    calls = []
    handle = student.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        own = distiller(images)
        assert len(calls) == 1
        out = student(images, heads=distiller.heads)
        given = distiller(images, student_out=out)
    handle.remove()
    assert len(calls) == 2  # the Distiller's own call and the caller's: none inside the second Distiller call
    assert own.keys() == given.keys()
    for k in own:
        torch.testing.assert_close(given[k], own[k])
    with pytest.raises(ValueError, match="lacks the distilled heads"):
        distiller(images, student_out=student(images, heads=["seg"]))



def test_feature_term_is_scale_free():
    """Normalised, the feature term of an untrained (zero) adapter is 1 whatever the teacher's scale; raw MSE
    grows with the square of the scale."""
    student, teacher = pair()
    images = torch.rand(2, 1, 32, 32)
    norm, raw = Distiller(student, teacher).eval(), Distiller(student, teacher, normalize_features=False).eval()
    for conv in [*norm.adapters.values(), *raw.adapters.values()]:
        torch.nn.init.zeros_(conv.weight), torch.nn.init.zeros_(conv.bias)

    def scale_by(factor):
        def hook(module, args, out):
            out.pyramid = {s: m * factor for s, m in out.pyramid.items()}
            return out
        return teacher.encoder.register_forward_hook(hook)

    with torch.no_grad():
        raw1 = raw(images)["feature"].item()
        assert norm(images)["feature"].item() == pytest.approx(1.0)
        handle = scale_by(10.0)
        raw10, norm10 = raw(images)["feature"].item(), norm(images)["feature"].item()
        handle.remove()
    assert norm10 == pytest.approx(1.0)
    assert raw10 == pytest.approx(100 * raw1, rel=1e-4)

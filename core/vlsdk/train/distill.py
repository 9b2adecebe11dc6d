"""Distillation of a trained model into a lighter one: pyramid features and head outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlsdk.models.model import ModelOutput

__all__ = ["Distiller", "segmentation_kd", "detection_kd"]


def segmentation_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 2.0) -> torch.Tensor:
    """Pixel-wise KL(teacher || student) on softened class maps (sigmoid BCE for one class)."""
    t = temperature
    if student_logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(student_logits / t, torch.sigmoid(teacher_logits / t)) * t * t
    log_s = F.log_softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_s, p_t, reduction="none").sum(1).mean() * t * t


def detection_kd(student, teacher, box_weight: float = 1.0, min_objectness: float = 0.3) -> torch.Tensor:
    """Soft targets for a YOLO-style head: objectness and classes (BCE to the teacher's sigmoids)
    everywhere, box distances (L1 in stride units) where the teacher sees an object."""
    obj_t = torch.sigmoid(teacher.obj_logits)
    loss = F.binary_cross_entropy_with_logits(student.obj_logits, obj_t)
    weight = obj_t.unsqueeze(-1)
    cls = F.binary_cross_entropy_with_logits(student.cls_logits, torch.sigmoid(teacher.cls_logits), reduction="none")
    loss = loss + (cls * weight).sum() / weight.sum().clamp(min=1e-6) / cls.shape[-1]
    mask = obj_t > min_objectness
    if mask.any():
        scale = student.strides.to(student.ltrb.dtype)[None, :, None]
        loss = loss + box_weight * F.l1_loss(student.ltrb[mask] / scale.expand_as(student.ltrb)[mask],
                                             teacher.ltrb[mask] / scale.expand_as(teacher.ltrb)[mask])
    return loss


class Distiller(nn.Module):
    """Train ``student`` to match a frozen ``teacher`` on the same images.

    The loss adds, for each pyramid stride both models have, the MSE between the student's map
    (through a learned 1x1 adapter to the teacher's width) and the teacher's map, divided by the
    teacher map's mean square (``normalize_features``: the term starts near 1 whatever the
    teacher's activation scale; raw MSE on a trained ``small`` teacher's pyramid started at ~150,
    100x the label loss), and for each
    head both models carry (same name and task) a head-specific soft-target loss. Optimise
    ``distiller.parameters()``: the student's and the adapters' (the teacher is frozen).

    Args:
        student: the lighter :class:`~vlsdk.VLModel` (e.g. the ``edge`` config), heads attached.
        teacher: the trained model.
        strides: pyramid strides to match (default all shared ones).
        feature_weight: weight of the feature term.
        normalize_features: divide each stride's MSE by the teacher map's mean square
            (``False``: raw MSE).
        temperature: softening for segmentation logits.

    Example:
        >>> distiller = Distiller(student, teacher)  # doctest: +SKIP
        >>> losses = distiller(images)  # {"loss", "feature", "seg", ...}  # doctest: +SKIP
        >>> out = student(images, heads=distiller.heads)  # one pass for label and KD losses  # doctest: +SKIP
        >>> losses = distiller(images, student_out=out)  # doctest: +SKIP
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, strides: Sequence[int] | None = None,
                 feature_weight: float = 1.0, temperature: float = 2.0, normalize_features: bool = True) -> None:
        super().__init__()
        s_ch, t_ch = student.encoder.channels, teacher.encoder.channels
        shared = sorted(set(s_ch) & set(t_ch)) if strides is None else list(strides)
        bad = [s for s in shared if s not in s_ch or s not in t_ch]
        if bad:
            raise ValueError(f"strides {bad} are not in both pyramids: student {sorted(s_ch)}, teacher {sorted(t_ch)}")
        self.student, self.teacher = student, teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.strides = shared
        self.adapters = nn.ModuleDict({str(s): nn.Conv2d(s_ch[s], t_ch[s], 1) for s in shared})
        self.feature_weight, self.temperature = feature_weight, temperature
        self.normalize_features = normalize_features
        self.heads = [h for h in student.heads if h in teacher.heads
                      and student.head_specs[h].task == teacher.head_specs[h].task]

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher always runs in inference mode
        return self

    def forward(self, images: torch.Tensor, student_out: ModelOutput | None = None) -> dict[str, torch.Tensor]:
        """Distillation losses on ``images``.

        Args:
            images: the batch both models see.
            student_out: the student's output on these ``images`` (with every head in
                :attr:`heads`), when the caller has it already for its label loss: the student
                then runs once per step instead of twice (half the cost, and BatchNorm statistics
                and MoE router losses counted once, as in training without distillation).
        """
        with torch.no_grad():
            t_out = self.teacher(images, heads=self.heads)
        if student_out is None:
            s_out = self.student(images, heads=self.heads)
        else:
            missing = [h for h in self.heads if h not in student_out.heads]
            if missing:
                raise ValueError(f"student_out lacks the distilled heads {missing}; run the student with "
                                 f"heads={self.heads}")
            s_out = student_out
        losses: dict[str, torch.Tensor] = {}
        feats = []
        for s in self.strides:
            target = t_out.features.pyramid[s].float()
            mse = F.mse_loss(self.adapters[str(s)](s_out.features.pyramid[s]).float(), target)
            feats.append(mse / target.pow(2).mean().clamp_min(1e-6) if self.normalize_features else mse)
        losses["feature"] = torch.stack(feats).mean() if feats else images.new_zeros(())
        for h in self.heads:
            task = self.student.head_specs[h].task
            if task == "segmentation":
                losses[h] = segmentation_kd(s_out[h].logits, t_out[h].logits, self.temperature)
            elif task == "detection":
                losses[h] = detection_kd(s_out[h], t_out[h])
            elif task == "depth":
                log_s, log_t = (torch.log(o[h].depth.clamp_min(1e-6)) for o in (s_out, t_out))
                losses[h] = F.l1_loss(log_s, log_t)
        losses["loss"] = self.feature_weight * losses["feature"] + sum(losses[h] for h in self.heads)
        return losses

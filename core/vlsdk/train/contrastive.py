"""Stage 1, contrastive pre-training: a CLIP loss with hard-negative up-weighting, and retrieval recall."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["clip_loss", "retrieval_recall", "CLIPObjective"]


def _hard_logits(logits: torch.Tensor, hard_negatives: int, hard_weight: float) -> torch.Tensor:
    """Add ``log(hard_weight)`` to each row's ``hard_negatives`` highest-scoring negatives.

    In the softmax denominator those negatives then count ``hard_weight`` times: the gradient
    concentrates on the negatives the model confuses most (Robinson et al., 2021, in top-k form).
    """
    n = logits.shape[0]
    m = min(hard_negatives, n - 1)
    if m <= 0 or hard_weight == 1.0:
        return logits
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    negatives = logits.detach().masked_fill(eye, float("-inf"))
    hardest = negatives.topk(m, dim=1).indices
    boost = torch.zeros_like(logits).scatter(1, hardest, math.log(hard_weight))
    return logits + boost


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float = 1 / 0.07,
              hard_negatives: int = 0, hard_weight: float = 2.0) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, text) pairs, row ``i`` with row ``i``.

    Args:
        image_emb: ``(N, D)`` image embeddings (normalised here).
        text_emb: ``(N, D)`` text embeddings (normalised here).
        logit_scale: the temperature's inverse.
        hard_negatives: up-weight this many hardest in-batch negatives per row (0: plain CLIP).
        hard_weight: how many times a hard negative counts in the softmax denominator.

    Example:
        >>> e = torch.eye(4)
        >>> float(clip_loss(e, e, logit_scale=50.0)) < 1e-6
        True
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(f"expected two (N, D) embeddings of one shape, got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    if hard_weight < 1.0:
        raise ValueError(f"hard_weight must be >= 1 (1 = no up-weighting), got {hard_weight}")
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    logits = logit_scale * img @ txt.T
    target = torch.arange(logits.shape[0], device=logits.device)
    i2t = F.cross_entropy(_hard_logits(logits, hard_negatives, hard_weight), target)
    t2i = F.cross_entropy(_hard_logits(logits.T, hard_negatives, hard_weight), target)
    return (i2t + t2i) / 2


@torch.no_grad()
def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k for matching rows (cosine similarity)."""
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    target = torch.arange(sim.shape[0], device=sim.device)
    out = {}
    for k in ks:
        kk = min(k, sim.shape[1])
        out[f"i2t_r@{k}"] = float((sim.topk(kk, dim=1).indices == target[:, None]).any(1).float().mean())
        out[f"t2i_r@{k}"] = float((sim.T.topk(kk, dim=1).indices == target[:, None]).any(1).float().mean())
    return out


class CLIPObjective(nn.Module):
    """Projections and temperature for contrastive pre-training of a :class:`~vlsdk.VLModel`.

    The image embedding is the mean of the final visual tokens, the text embedding the pooled
    output of the model's text encoder; both are projected to ``dim`` and compared with
    :func:`clip_loss`. Train ``CLIPObjective`` and the model together (it holds the model).

    Args:
        model: the model to pre-train (needs a text path).
        dim: joint embedding width.
        hard_negatives: hardest in-batch negatives to up-weight per row.
        hard_weight: their weight in the softmax denominator.
    """

    def __init__(self, model: nn.Module, dim: int = 128, hard_negatives: int = 3, hard_weight: float = 2.0) -> None:
        super().__init__()
        if getattr(model, "text_encoder", None) is None:
            raise ValueError("contrastive pre-training needs a model with a text path (config.text is not None)")
        self.model = model
        self.image_proj = nn.Linear(model.config.embed_dim, dim, bias=False)
        self.text_proj = nn.Linear(model.text_encoder.dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.hard_negatives, self.hard_weight = hard_negatives, hard_weight

    def embed(self, images: torch.Tensor, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, dim)`` image and text embeddings (the visual path sees no text)."""
        feats = self.model.forward_features(images)
        text = self.model.text_encoder.encode(list(texts))
        return self.image_proj(feats.tokens.mean(1)), self.text_proj(text.pooled)

    def forward(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        img, txt = self.embed(images, texts)
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        return clip_loss(img, txt, scale, self.hard_negatives, self.hard_weight)

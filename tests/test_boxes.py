"""Box ops: IoU / GIoU against hand computations, and vectorised NMS against a greedy reference."""

from __future__ import annotations

import pytest
import torch

from vlsdk.ops.boxes import batched_nms, box_area, box_iou, clip_boxes, generalized_box_iou, nms, padded_nms


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, thr: float) -> list[int]:
    """The textbook greedy loop, one box at a time."""
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    kept: list[int] = []
    for i in order:
        suppressed = any(
            int(idxs[j]) == int(idxs[i]) and box_iou(boxes[j : j + 1], boxes[i : i + 1]).item() > thr for j in kept
        )
        if not suppressed:
            kept.append(i)
    return kept


def random_boxes(n: int, generator: torch.Generator, extent: float = 100.0) -> torch.Tensor:
    """Boxes clustered around a few centres so that many overlap."""
    centres = torch.rand(4, 2, generator=generator) * extent
    c = centres[torch.randint(0, 4, (n,), generator=generator)] + torch.randn(n, 2, generator=generator) * 6
    wh = 8 + torch.rand(n, 2, generator=generator) * 30
    return torch.cat((c - wh / 2, c + wh / 2), dim=1)


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    expected = torch.tensor([[1 / 7, 0.0, 1 / 4], [0.0, 0.0, 1 / 4]])
    torch.testing.assert_close(box_iou(a, b), expected)
    torch.testing.assert_close(box_iou(a, b[:2], pairwise=False), torch.tensor([1 / 7, 0.0]))
    torch.testing.assert_close(box_area(b), torch.tensor([4.0, 4.0, 1.0]))


def test_generalized_box_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    # disjoint: iou 0, hull 3, union 2 -> -1/3; overlapping: 1/7 - (9 - 7) / 9
    expected = torch.tensor([-1 / 3, 1 / 7 - 2 / 9])
    torch.testing.assert_close(generalized_box_iou(a, b, pairwise=False), expected)
    torch.testing.assert_close(generalized_box_iou(a, b).diagonal(), expected)
    torch.testing.assert_close(generalized_box_iou(a, a, pairwise=False), torch.ones(2))


def test_clip_boxes():
    boxes = torch.tensor([[-3.0, 5.0, 80.0, 90.0]])
    assert clip_boxes(boxes, (60, 70)).tolist() == [[0.0, 5.0, 70.0, 60.0]]


@pytest.mark.parametrize("seed", range(6))
def test_batched_nms_matches_greedy_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n = 80
    boxes = random_boxes(n, g)
    scores = torch.rand(n, generator=g)
    if seed % 2:
        scores = (scores * 5).round() / 5  # many ties: both sides keep the input order among equals
    idxs = torch.randint(0, 3, (n,), generator=g)
    for thr in (0.3, 0.5, 0.7):
        kept = batched_nms(boxes, scores, idxs, thr)
        assert kept.dtype == torch.long
        assert kept.tolist() == reference_nms(boxes, scores, idxs, thr)
        assert bool((scores[kept][1:] <= scores[kept][:-1]).all())


def test_nms_long_suppression_chain():
    # each box overlaps the next three by IoU > 0.5: greedy keeps 0, 4, 8, ... (needs several fixed-point rounds)
    boxes = torch.tensor([[float(i), 0.0, i + 10.0, 10.0] for i in range(20)])
    scores = torch.linspace(1.0, 0.1, 20)
    assert nms(boxes, scores, 0.5).tolist() == [0, 4, 8, 12, 16]
    assert nms(boxes, scores, 0.5).tolist() == reference_nms(boxes, scores, torch.zeros(20), 0.5)


def test_batched_nms_groups_never_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    kept = batched_nms(boxes, torch.tensor([0.5, 0.9, 0.7]), torch.tensor([0, 1, 0]), 0.5)
    assert kept.tolist() == [1, 2]


def test_batched_nms_empty_and_bad_shapes():
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)
    with pytest.raises(ValueError, match=r"scores \(N,\)"):
        batched_nms(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\) in xyxy"):
        box_iou(torch.zeros(3, 5), torch.zeros(2, 4))


@pytest.mark.parametrize("seed", range(4))
def test_padded_nms_matches_greedy_reference_per_image(seed):
    g = torch.Generator().manual_seed(seed)
    b, k = 5, 60
    boxes = torch.stack([random_boxes(k, g) for _ in range(b)])
    scores = torch.rand(b, k, generator=g).sort(dim=1, descending=True).values  # padded_nms wants score order
    labels = torch.randint(0, 3, (b, k), generator=g)
    lengths = [k, 0, 1, 17, 42]  # a full image, an empty one, padding of every length
    valid = torch.arange(k)[None, :] < torch.tensor(lengths)[:, None]
    boxes[~valid] = 0.0  # padding overlapping everything must not suppress anything
    for thr in (0.3, 0.5):
        keep = padded_nms(boxes, labels, valid, thr)
        for i, n in enumerate(lengths):
            assert not bool(keep[i, n:].any())
            expected = reference_nms(boxes[i, :n], scores[i, :n], labels[i, :n], thr)
            assert keep[i, :n].nonzero().flatten().tolist() == sorted(expected)


def test_padded_nms_bad_shapes():
    with pytest.raises(ValueError, match=r"labels \(B, K\)"):
        padded_nms(torch.zeros(2, 3, 4), torch.zeros(2, 2), torch.ones(2, 3, dtype=torch.bool), 0.5)
    assert padded_nms(torch.zeros(2, 0, 4), torch.zeros(2, 0), torch.ones(2, 0, dtype=torch.bool), 0.5).shape == (2, 0)

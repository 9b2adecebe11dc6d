"""Core task heads (detection, segmentation, depth) on hand-made encoder features."""

from __future__ import annotations

import math

import pytest
import torch

from vlsdk.heads import (
    DepthHead,
    DepthOutput,
    DetectionHead,
    DetectionOutput,
    Head,
    SegmentationHead,
    SegmentationOutput,
    assign_targets,
    pad_targets,
    silog_loss,
)
from vlsdk.heads.detection import decode_detections
from vlsdk.models.features import EncoderFeatures
from vlsdk.ops.boxes import box_iou

PYRAMIDS = [
    ({4: 16, 8: 32, 16: 48, 32: 48}, (64, 96)),
    ({4: 16, 8: 32, 16: 48}, (200, 120)),  # no stride 32, sizes not multiples of 32
    ({4: 8, 8: 16, 16: 24, 32: 24}, (45, 70)),
]


def make_features(channels: dict[int, int], size: tuple[int, int], batch: int = 2, seed: int = 0) -> EncoderFeatures:
    """Random features with the encoder's ceil-size pyramid."""
    g = torch.Generator().manual_seed(seed)
    pyramid = {s: torch.randn(batch, c, math.ceil(size[0] / s), math.ceil(size[1] / s), generator=g)
               for s, c in channels.items()}
    return EncoderFeatures(torch.zeros(batch, 4, 8), (2, 2), pyramid, size)


def train(head: Head, features: EncoderFeatures, targets, steps: int, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = head.loss(head(features), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# -- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels,size", PYRAMIDS)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_detection_shapes(channels, size, num_classes):
    torch.manual_seed(0)
    head = DetectionHead(channels, num_classes, width=16, num_convs=1)
    assert isinstance(head, Head) and head.task == "detection"
    assert head.strides == tuple(s for s in (8, 16, 32) if s in channels)
    out = head(make_features(channels, size))
    n = sum(math.ceil(size[0] / s) * math.ceil(size[1] / s) for s in head.strides)
    assert out.cls_logits.shape == (2, n, num_classes)
    assert out.obj_logits.shape == (2, n)
    assert out.boxes.shape == (2, n, 4) and out.anchors.shape == (n, 2) and out.strides.shape == (n,)
    assert bool((out.ltrb > 0).all())
    # each level's first anchor is at half its stride, its last at (size - 0.5) * stride
    first = 0
    for s, (h, w) in zip(head.strides, out.level_sizes, strict=True):
        assert out.anchors[first].tolist() == [s / 2, s / 2]
        assert out.anchors[first + h * w - 1].tolist() == [(w - 0.5) * s, (h - 0.5) * s]
        first += h * w


@pytest.mark.parametrize("channels,size", PYRAMIDS)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_segmentation_and_depth_shapes(channels, size, num_classes):
    torch.manual_seed(0)
    feats = make_features(channels, size)
    seg = SegmentationHead(channels, num_classes, decoder_channels=[16] * len(channels))
    out = seg(feats)
    assert out.logits.shape == (2, num_classes, *size)
    pred = seg.decode(out)
    assert pred.labels.shape == (2, *size) and pred.probs.shape == (2, num_classes, *size)
    assert int(pred.labels.max()) < max(num_classes, 2)
    depth = DepthHead(channels, max_depth=10.0, decoder_channels=[16] * len(channels))
    d = depth(feats).depth
    assert d.shape == (2, 1, *size)
    assert bool((d > 0).all() and (d < 10.0).all())
    assert depth.decode(DepthOutput(d)).shape == (2, *size)


# -- detection ------------------------------------------------------------------------------


def test_detection_loss_finite_with_empty_and_non_empty_targets():
    torch.manual_seed(0)
    channels = {4: 8, 8: 16, 16: 16, 32: 16}
    head = DetectionHead(channels, num_classes=3, width=16, num_convs=1)
    feats = make_features(channels, (64, 80))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    some = {"boxes": torch.tensor([[5.0, 6.0, 30.0, 40.0], [40.0, 10.0, 78.0, 60.0]]), "labels": torch.tensor([0, 2])}
    for targets in ([empty, empty], [empty, some], [some, some]):
        head.zero_grad()
        losses = head.loss(head(feats), targets)
        assert set(losses) == {"loss", "obj", "cls", "box", "num_pos"}
        assert all(bool(torch.isfinite(v)) for v in losses.values())
        losses["loss"].backward()
        assert all(bool(torch.isfinite(p.grad).all()) for p in head.parameters() if p.grad is not None)
        n_boxes = sum(len(t["labels"]) for t in targets)
        assert (losses["num_pos"] > 0) == (n_boxes > 0)
        if n_boxes == 0:
            assert losses["cls"] == 0 and losses["box"] == 0


def test_detection_head_overfits_one_box():
    torch.manual_seed(0)
    channels = {4: 8, 8: 16, 16: 16, 32: 16}
    head = DetectionHead(channels, num_classes=2, width=16, num_convs=1)
    feats = make_features(channels, (64, 64), batch=1)
    gt = torch.tensor([[16.0, 20.0, 44.0, 52.0]])
    losses = train(head, feats, [{"boxes": gt, "labels": torch.tensor([1])}], steps=30)
    assert losses[-1] < 0.2 * losses[0]
    best = head.decode(head(feats), max_detections=5)[0]
    assert best.labels[0] == 1 and best.scores[0] > 0.5
    assert box_iou(best.boxes[:1], gt).item() > 0.7


def test_detection_decode_limits_and_clips():
    torch.manual_seed(0)
    channels = {8: 16, 16: 16}
    head = DetectionHead(channels, num_classes=4, width=16, num_convs=1)
    with torch.no_grad():
        head.box_pred.bias.fill_(3.0)  # large boxes, many crossing the border
    size = (50, 70)
    out = head(make_features(channels, size))
    assert bool((out.boxes[..., :2] < 0).any() and (out.boxes[..., 2] > size[1]).any())
    dets = head.decode(out, score_threshold=0.0, iou_threshold=0.9, max_detections=7)
    assert len(dets) == 2
    for d in dets:
        assert len(d) == 7
        assert bool((d.boxes[:, 0] >= 0).all() and (d.boxes[:, 1] >= 0).all())
        assert bool((d.boxes[:, 2] <= size[1]).all() and (d.boxes[:, 3] <= size[0]).all())
        assert bool((d.boxes[:, :2] <= d.boxes[:, 2:]).all())
        assert bool((d.scores[1:] <= d.scores[:-1]).all())
        assert d.labels.dtype == torch.long and int(d.labels.max()) < 4
    assert all(len(d) == 0 for d in head.decode(out, score_threshold=0.99))


@pytest.mark.parametrize("score_threshold", [0.0, 0.3, 0.7, 0.999])
def test_detection_decode_batched_equals_the_per_image_loop(score_threshold):
    g = torch.Generator().manual_seed(1)
    b, a, c = 4, 300, 3
    out = DetectionOutput(
        cls_logits=torch.randn(b, a, c, generator=g) * 2, obj_logits=torch.randn(b, a, generator=g) * 2,
        ltrb=torch.rand(b, a, 4, generator=g) * 30 + 1, anchors=torch.rand(a, 2, generator=g) * 100,
        strides=torch.full((a,), 8.0), level_sizes=[(15, 20)], image_size=(100, 100))
    loop = decode_detections(out, score_threshold, max_detections=20, batched=False)
    batched = decode_detections(out, score_threshold, max_detections=20, batched=True)
    assert [len(d) for d in batched] == [len(d) for d in loop]
    for x, y in zip(loop, batched, strict=True):
        assert torch.equal(x.boxes, y.boxes) and torch.equal(x.scores, y.scores) and torch.equal(x.labels, y.labels)
    if score_threshold < 0.9:
        assert sum(len(d) for d in loop) > 0  # the comparison is not between empty lists


def test_assignment_positives_lie_inside_their_box():
    torch.manual_seed(0)
    channels = {4: 8, 8: 16, 16: 16, 32: 16}
    head = DetectionHead(channels, num_classes=2, width=16, num_convs=1)
    size = (128, 160)
    out = head(make_features(channels, size))
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 60.0, 60.0], [20.0, 20.0, 40.0, 40.0], [70.0, 10.0, 170.0, 110.0]]),
         "labels": torch.tensor([0, 1, 1])},
        {"boxes": torch.tensor([[101.0, 51.0, 105.0, 55.0]]), "labels": torch.tensor([0])},  # smaller than a stride
    ]
    positive, boxes, labels, matched = head.assign(out, targets)
    anchors = out.anchors.expand(2, -1, -1)
    for b, t in enumerate(targets):
        for m, gt in enumerate(t["boxes"]):
            sel = positive[b] & (matched[b] == m)
            assert int(sel.sum()) >= 1, f"box {m} of image {b} got no positive"
            a = anchors[b][sel]
            if b == 0:  # boxes wider than a stride: every positive is strictly inside
                assert bool(((a > gt[:2]) & (a < gt[2:])).all())
            else:  # the tiny box is learnt at its centre cell
                assert bool(((a - (gt[:2] + gt[2:]) / 2).abs() <= out.strides[sel, None] / 2).all())
            assert bool((boxes[b][sel] == gt).all() and (labels[b][sel] == t["labels"][m]).all())
    # one level per box: side 60 -> stride 8, side 100 -> stride 16 (8 * 8 < 100 <= 8 * 16)
    assert set(out.strides[positive[0] & (matched[0] == 0)].tolist()) == {8.0}
    assert set(out.strides[positive[0] & (matched[0] == 2)].tolist()) == {16.0}
    # ties go to the smaller box: locations inside the small box all belong to it
    small = targets[0]["boxes"][1]
    inner = positive[0] & ((anchors[0] > small[:2]) & (anchors[0] < small[2:])).all(1)
    assert int(inner.sum()) > 0 and bool((matched[0][inner] == 1).all())


def test_assign_targets_ignores_padding():
    boxes, labels, valid = pad_targets([{"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "labels": torch.tensor([0])},
                                        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    anchors = torch.tensor([[4.0, 4.0], [12.0, 12.0], [20.0, 20.0]])
    matched, pos = assign_targets(anchors, torch.full((3,), 8.0), torch.tensor([[0.0, math.inf]] * 3), boxes, valid)
    assert pos.tolist() == [[True, True, False], [False, False, False]]


# -- segmentation ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 3])
def test_segmentation_head_overfits_a_mask(num_classes):
    torch.manual_seed(0)
    channels = {4: 8, 8: 16, 16: 16}
    head = SegmentationHead(channels, num_classes, decoder_channels=[16, 16, 16])
    feats = make_features(channels, (32, 40), batch=1)
    target = torch.zeros(1, 32, 40, dtype=torch.long)
    target[:, 8:24, 10:26] = 1
    if num_classes == 3:
        target[:, 26:32, 30:40] = 2

    def dice() -> float:
        labels = head.decode(head(feats)).labels
        inter = ((labels == 1) & (target == 1)).sum()
        return float(2 * inter / ((labels == 1).sum() + (target == 1).sum()))

    before = dice()
    losses = train(head, feats, target, steps=30)
    assert losses[-1] < 0.5 * losses[0]
    assert dice() > max(0.9, before)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_segmentation_ignore_index_pixels_do_not_count(num_classes):
    torch.manual_seed(0)
    head = SegmentationHead({4: 8, 8: 8}, num_classes, ignore_index=255)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, num_classes, 12, 16, generator=g)
    target = torch.randint(0, max(num_classes, 2), (2, 12, 16), generator=g)
    ignored = torch.zeros(2, 12, 16, dtype=torch.bool)
    ignored[:, :, :5] = True
    target[ignored] = 255
    logits.requires_grad_(True)
    loss = head.loss(SegmentationOutput(logits), target)["loss"]
    loss.backward()
    assert bool((logits.grad.permute(1, 0, 2, 3)[:, ignored] == 0).all())
    assert bool((logits.grad.permute(1, 0, 2, 3)[:, ~ignored] != 0).any())
    other = logits.detach().clone()
    other.permute(1, 0, 2, 3)[:, ignored] = 50 * torch.randn(num_classes, int(ignored.sum()), generator=g)
    torch.testing.assert_close(head.loss(SegmentationOutput(other), target)["loss"], loss.detach())
    # the same pixels labelled instead of ignored do change the loss
    relabelled = target.clone()
    relabelled[ignored] = 0
    assert not torch.allclose(head.loss(SegmentationOutput(other), relabelled)["loss"], loss.detach())
    with pytest.raises(ValueError, match="expected labels in"):
        head.loss(SegmentationOutput(logits), torch.full((2, 12, 16), 7))


# -- depth ----------------------------------------------------------------------------------


def sparse_depth(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    depth = 1 + 50 * torch.rand(shape, generator=g)
    return depth * (torch.rand(shape, generator=g) < 0.3)  # 70% without a measurement


def test_silog_scale_invariance():
    target = sparse_depth((3, 1, 10, 12))
    pred = 1 + 50 * torch.rand(3, 1, 10, 12, generator=torch.Generator().manual_seed(2))
    head = DepthHead({4: 8}, si_lambda=1.0)
    base = head.loss(DepthOutput(pred), target)["loss"]
    assert base > 0.01
    for k in (0.1, 3.0, 17.0):
        torch.testing.assert_close(head.loss(DepthOutput(k * pred), target[:, 0])["loss"], base)
    assert not torch.allclose(silog_loss(3 * pred, target, lam=0.85), silog_loss(pred, target, lam=0.85))
    # pixels without a measurement do not count
    other = torch.where(target > 0, pred, 1000.0)
    torch.testing.assert_close(silog_loss(other, target, lam=0.85), silog_loss(pred, target, lam=0.85))


def test_silog_matches_per_image_formula():
    pred = torch.tensor([[[1.0, 2.0, 4.0]], [[3.0, 3.0, 3.0]]])
    target = torch.tensor([[[2.0, 2.0, 0.0]], [[1.0, 0.0, 0.0]]])
    d0 = torch.log(torch.tensor([0.5, 1.0]))
    d1 = torch.log(torch.tensor([3.0]))
    expected = ((d0**2).mean() - 0.85 * d0.mean() ** 2 + (d1**2).mean() - 0.85 * d1.mean() ** 2) / 2
    torch.testing.assert_close(silog_loss(pred, target, lam=0.85), expected)


def test_depth_no_valid_pixels_gives_zero_loss_with_gradients():
    torch.manual_seed(0)
    channels = {4: 8, 8: 16}
    head = DepthHead(channels, decoder_channels=[16, 16])
    out = head(make_features(channels, (20, 24)))
    losses = head.loss(out, torch.zeros(2, 20, 24))
    assert losses["loss"].item() == 0.0 and losses["valid_fraction"].item() == 0.0
    losses["loss"].backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    # one image with measurements, one without: only the first counts
    target = torch.stack((sparse_depth((20, 24)), torch.zeros(20, 24)))
    both = head.loss(out, target)["loss"]
    torch.testing.assert_close(both, head.loss(DepthOutput(out.depth[:1]), target[:1])["loss"])


# -- arguments ------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    channels = {4: 16, 8: 32, 16: 48}
    with pytest.raises(ValueError, match="num_classes >= 1"):
        DetectionHead(channels, num_classes=0)
    with pytest.raises(ValueError, match=r"num_classes >= 1"):
        SegmentationHead(channels, num_classes=0)
    with pytest.raises(ValueError, match=r"available strides \(4, 8, 16\).*missing: \[32\]"):
        DetectionHead(channels, num_classes=2, strides=(8, 32))
    with pytest.raises(ValueError, match=r"one of the strides \(8, 16, 32\), available strides: \(4,\)"):
        DetectionHead({4: 16}, num_classes=2)
    with pytest.raises(ValueError, match=r"available strides \(4, 8, 16\)"):
        SegmentationHead(channels, num_classes=2, strides=(4, 64))
    with pytest.raises(ValueError, match="3 positive decoder_channels"):
        SegmentationHead(channels, num_classes=2, decoder_channels=[16, 16])
    with pytest.raises(ValueError, match="'sigmoid' or 'softplus'"):
        DepthHead(channels, activation="relu")
    with pytest.raises(ValueError, match="non-empty mapping"):
        DepthHead({})
    head = DetectionHead(channels, num_classes=2, width=16)
    with pytest.raises(ValueError, match=r"expects pyramid stride 16; the features have strides \(4, 8\)"):
        head(make_features({4: 16, 8: 32}, (32, 32)))
    out = head(make_features(channels, (32, 32), batch=1))
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        head.loss(out, [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([2])}])
    with pytest.raises(ValueError, match="one target dict per image"):
        head.loss(out, [])
    with pytest.raises(ValueError, match="max_detections >= 1"):
        head.decode(out, max_detections=0)

"""The CenterPoint-style BEV head: targets, exact decoding, loss, training signal, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlsdk_driving.plugin as driving_plugin
from vlsdk.models.features import EncoderFeatures
from vlsdk_driving.heads import BEVDetectionHead, BEVDetectionOutput, centernet_focal_loss, gaussian_radius
from vlsdk_driving.sample import Boxes3D

OPTS = dict(x_range=(-16, 16), y_range=(-16, 16), resolution=0.5)


def feats(b: int = 1) -> EncoderFeatures:
    return EncoderFeatures(torch.zeros(b, 4, 64), (2, 2),
                           {4: torch.randn(b, 16, 16, 16), 8: torch.randn(b, 32, 8, 8)}, (64, 64))


def gt_boxes() -> Boxes3D:
    return Boxes3D(np.array([[3.3, -5.1, -0.9, 4.5, 1.9, 1.6, 0.7], [-10.2, 8.6, -1.0, 0.7, 0.6, 1.8, -2.5],
                             [40.0, 0.0, -1.0, 4, 2, 1.5, 0.0]]),  # outside the grid: no target
                   np.array([0, 7, 0]), velocity=np.array([[1.0, 2.0], [np.nan, np.nan], [0, 0]]))


def perfect_output(head: BEVDetectionHead, boxes: Boxes3D, shape=(16, 16)) -> BEVDetectionOutput:
    t = head.build_targets([boxes], shape)
    heat = torch.full((1, head.num_classes, *shape), -20.0)
    heat[0, :, :, :] = torch.where(t["heatmap"][0] == 1, 20.0, -20.0)
    reg = torch.zeros(1, t["reg"].shape[1], *shape)
    reg[t["batch"], :, t["row"], t["col"]] = t["reg"]
    return BEVDetectionOutput(heat, reg[:, 0:2], reg[:, 2:3], reg[:, 3:6], reg[:, 6:8],
                              reg[:, 8:10] if head.velocity else None)


def test_shapes_and_bad_arguments():
    head = BEVDetectionHead({4: 16, 8: 32}, velocity=True, **OPTS)
    out = head(feats(2))
    assert out.heatmap.shape == (2, 10, 16, 16) and out.velocity.shape == (2, 2, 16, 16)
    assert head.cell == 2.0
    for bad, match in [(dict(num_classes=0), "num_classes"), (dict(x_range=(1, -1)), "x_range"),
                       (dict(resolution=0), "resolution"), (dict(score_threshold=1.0), "score_threshold")]:
        with pytest.raises(ValueError, match=match):
            BEVDetectionHead({4: 16}, **{**OPTS, **bad})


def test_targets_then_decoding_is_exact():
    head = BEVDetectionHead({4: 16, 8: 32}, velocity=True, **OPTS)
    boxes = gt_boxes()
    t = head.build_targets([boxes], (16, 16))
    assert len(t["batch"]) == 2  # the box at x = 40 m is off the map
    assert t["heatmap"].max() == 1 and int((t["heatmap"] == 1).sum()) == 2
    assert t["heatmap"][0, 0, int((-5.1 + 16) // 2), int((3.3 + 16) // 2)] == 1
    assert t["reg_mask"][1, 8:].sum() == 0  # unknown velocity is masked, not learned as 0
    dec = head.decode(perfect_output(head, boxes))[0]
    assert len(dec) == 2
    order = np.argsort(dec.labels)
    np.testing.assert_allclose(dec.boxes[order], boxes.boxes[:2], atol=1e-4)
    np.testing.assert_allclose(dec.velocity[order][0], [1.0, 2.0], atol=1e-5)
    assert (dec.scores > 0.99).all()


def test_loss_backward_and_focal_loss():
    head = BEVDetectionHead({4: 16, 8: 32}, **OPTS)
    out = head(feats(1))
    losses = head.loss(out, [gt_boxes()])
    assert set(losses) >= {"loss", "heatmap", "offset", "z", "size", "rot", "num_boxes"}
    losses["loss"].backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    perfect = perfect_output(head, gt_boxes())
    assert float(head.loss(perfect, [gt_boxes()])["loss"]) < 1e-3
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1, 1] = 1
    good = torch.where(target == 1, 8.0, -8.0)
    assert centernet_focal_loss(good, target) < 0.01 < centernet_focal_loss(-good, target)
    r = gaussian_radius(torch.tensor([2.3]), torch.tensor([1.0]))
    assert 0 < float(r) < 2.3
    with pytest.raises(ValueError, match="one per sample"):
        head.loss(out, [gt_boxes(), gt_boxes()])


def test_registered_head_trains_in_vlmodel_and_round_trips(register_plugin, tmp_path):
    import vlsdk

    register_plugin(driving_plugin, "driving")
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=3)
    model.add_expert("driving.lidar")
    model.add_head("bev", task="driving.bev_detection", num_classes=2, x_range=[-8, 8], y_range=[-8, 8],
                   resolution=0.5)
    boxes = Boxes3D(np.array([[3.0, -5.0, -0.9, 4.5, 1.9, 1.6, 0.7]]), np.array([0]))
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 4:9, 18:27] = 1.0  # a blob where the car is
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        loss = model.heads["bev"].loss(model(image, heads=["bev"])["bev"], [boxes])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < 0.5 * first
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    again = vlsdk.VLModel.from_pretrained(tmp_path / "ckpt").eval()  # from_pretrained returns train mode
    with torch.no_grad():
        a = model(image, heads=["bev"])["bev"].heatmap
        b = again(image, heads=["bev"])["bev"].heatmap
    torch.testing.assert_close(a, b)
    assert again.head_specs["bev"].task == "driving.bev_detection"


def test_circle_nms_drops_a_nearby_duplicate_of_the_same_class():
    head = BEVDetectionHead({4: 16, 8: 32}, **OPTS)
    boxes = Boxes3D(np.array([[3.3, -5.1, -0.9, 4.5, 1.9, 1.6, 0.7], [-10.2, 8.6, -1.0, 0.7, 0.6, 1.8, -2.5]]),
                    np.array([0, 7]))
    out = perfect_output(head, boxes)
    r, c = int((-5.1 + 16) // 2), int((3.3 + 16) // 2)
    out.heatmap[0, 0, r, c + 2] = 2.0  # a weaker car peak 4 m away: kept (radius 2 m)
    out.heatmap[0, 7, r, c] = 2.0  # a pedestrian on the car's cell: another class, kept
    assert len(head.decode(out)[0]) == 4
    out.offset[0, :, r, c + 2] = torch.tensor([-1.6, 0.0])  # now only 0.8 m away: suppressed
    dec = head.decode(out)[0]
    assert len(dec) == 3 and sorted(dec.labels.tolist()) == [0, 7, 7]
    head.circle_nms = False
    assert len(head.decode(out)[0]) == 4

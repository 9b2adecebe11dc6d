"""Resize and RandomFlip keep image, boxes and mask consistent."""

from __future__ import annotations

import numpy as np
import pytest

from vlsdk.data.transforms import Compose, RandomFlip, Resize


def _sample() -> dict:
    image = np.zeros((40, 60, 2), np.uint8)
    image[10:30, 5:25] = 200  # a bright object at the box
    mask = np.zeros((40, 60), np.int64)
    mask[10:30, 5:25] = 2
    return {"image": image, "boxes": np.array([[5, 10, 25, 30], [40, 0, 60, 8]], np.float32),
            "labels": np.array([1, 0]), "mask": mask, "size": (40, 60), "image_id": 3}


def test_resize_scales_boxes_and_keeps_mask_ids() -> None:
    out = Resize((80, 30))(_sample())
    assert out["image"].shape == (80, 30, 2) and out["image"].dtype == np.uint8
    np.testing.assert_allclose(out["boxes"], [[2.5, 20, 12.5, 60], [20, 0, 30, 16]])
    assert out["mask"].shape == (80, 30) and set(np.unique(out["mask"])) == {0, 2}
    # the object's pixels, in the image and the mask, sit inside the scaled box
    ys, xs = np.nonzero(out["mask"] == 2)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (20, 60, 2, 12)  # box: x 2.5..12.5
    assert out["image"][40, 7, 0] == 200 and out["image"][5, 20, 0] == 0
    assert out["size"] == (40, 60) and out["labels"].tolist() == [1, 0]
    same = Resize((40, 60))(_sample())
    np.testing.assert_array_equal(same["image"], _sample()["image"])


def test_flip_moves_boxes_with_the_pixels() -> None:
    out = RandomFlip(p=1.0)(_sample())
    np.testing.assert_array_equal(out["boxes"], [[35, 10, 55, 30], [0, 0, 20, 8]])
    x1, y1, x2, y2 = out["boxes"][0].astype(int)
    assert (out["image"][y1:y2, x1:x2] == 200).all() and (out["mask"][y1:y2, x1:x2] == 2).all()
    assert out["image"].flags.c_contiguous and out["mask"].flags.c_contiguous
    back = RandomFlip(p=1.0)(out)
    np.testing.assert_array_equal(back["boxes"], _sample()["boxes"])
    assert RandomFlip(p=0.0)(_sample())["boxes"][0, 0] == 5
    a, b = RandomFlip(0.5, seed=1), RandomFlip(0.5, seed=1)
    flips = [a(_sample())["boxes"][0, 0] for _ in range(20)]
    assert flips == [b(_sample())["boxes"][0, 0] for _ in range(20)] and set(flips) == {5, 35}  # seeded


def test_compose_and_bad_arguments() -> None:
    out = Compose([Resize(20), RandomFlip(1.0)])(_sample())
    assert out["image"].shape == (20, 20, 2)
    np.testing.assert_allclose(out["boxes"][1], [0, 0, 20 / 3, 4], rtol=1e-6)
    with pytest.raises(ValueError, match="size must be"):
        Resize((0, 4))
    with pytest.raises(ValueError, match="p must be in"):
        RandomFlip(1.5)
    with pytest.raises(ValueError, match="callables"):
        Compose([Resize(4), "flip"])

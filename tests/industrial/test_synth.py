"""Synthetic boards: defects at their boxes, the right kind of change per class, randomisation."""

from __future__ import annotations

import numpy as np
import pytest

from vlsdk_industrial.samples import DEEPPCB_CLASSES
from vlsdk_industrial.synth import BOX_MARGIN, BoardSynthesizer

#: +1: the defect adds copper, -1: it removes copper (DeepPCB class order).
ADDS_COPPER = {0: -1, 1: +1, 2: -1, 3: +1, 4: +1, 5: -1}


def test_defects_exactly_inside_their_boxes() -> None:
    synth = BoardSynthesizer(size=256, min_defects=3, max_defects=6, template=True, randomise=False)
    seen = set()
    for seed in range(12):
        s = synth(seed)
        image, temp = s["image"][..., 0].astype(int), s["image"][..., 1].astype(int)
        boxes, labels = s["boxes"].astype(int), s["labels"]
        assert s["image"].shape == (256, 256, 2) and s["image"].dtype == np.uint8
        assert len(labels) >= 1 and boxes.shape == (len(labels), 4)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes <= 256).all()
        diff = temp - image  # copper is dark (0) on a white board: adding copper lowers the pixel
        inside = np.zeros(diff.shape, bool)
        for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
            inside[y0:y1, x0:x1] = True
            patch = diff[y0:y1, x0:x1]
            assert patch.any(), f"seed {seed}: no change inside the {DEEPPCB_CLASSES[label]} box"
            # the change has the sign of the defect class (copper added or removed)
            assert (np.sign(patch[patch != 0]) == ADDS_COPPER[int(label)]).all(), (seed, DEEPPCB_CLASSES[label])
            seen.add(int(label))
        assert not diff[~inside].any(), f"seed {seed}: the image differs from its template outside the boxes"
        # defect boxes do not overlap each other
        a, b = boxes[:, None], boxes[None]
        overlap = (np.minimum(a[..., 2], b[..., 2]) > np.maximum(a[..., 0], b[..., 0])) & \
                  (np.minimum(a[..., 3], b[..., 3]) > np.maximum(a[..., 1], b[..., 1]))
        assert overlap.sum() == len(boxes)
    assert seen == set(range(6))


def test_deterministic_and_randomised() -> None:
    synth = BoardSynthesizer(size=128, binary_prob=0.0)
    a, b, c = synth(7), synth(7), synth(8)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    assert not np.array_equal(a["image"], c["image"])
    # randomised rendering: grey levels, not a binary board
    assert len(np.unique(a["image"])) > 10
    binary = BoardSynthesizer(size=128, randomise=False)(7)
    assert set(np.unique(binary["image"]).tolist()) <= {0, 255}


def test_class_subset_dataset_and_bad_arguments() -> None:
    synth = BoardSynthesizer(size=128, classes=["open", "pin-hole"], min_defects=2, max_defects=2)
    ds = synth.dataset(4, seed=3)
    assert len(ds) == 4
    labels = np.concatenate([ds[i]["labels"] for i in range(4)])
    assert set(labels.tolist()) <= {0, 5} and labels.size > 0
    with pytest.raises(IndexError):
        ds[4]
    for kwargs in ({"size": 10}, {"classes": ["scratch"]}, {"min_defects": 3, "max_defects": 1},
                   {"binary_prob": 2.0}):
        with pytest.raises(ValueError):
            BoardSynthesizer(**kwargs)
    with pytest.raises(ValueError, match="seed"):
        synth(-1)


def _dark_runs(dark: np.ndarray) -> np.ndarray:
    """Lengths of the runs of dark pixels along rows and columns (a trace's width, mostly)."""
    runs = []
    for m in (dark, dark.T):
        d = np.diff(np.pad(m.astype(np.int8), ((0, 0), (1, 1))), axis=1)
        runs.append(np.nonzero(d == -1)[1] - np.nonzero(d == 1)[1])
    return np.concatenate(runs)


def _modal_trace_width(dark: np.ndarray) -> int:
    runs = _dark_runs(dark)
    runs = runs[(runs >= 3) & (runs <= 30)]
    return int(np.bincount(runs).argmax())


def test_deeppcb_style_binary_boards_like_deeppcb() -> None:
    synth = BoardSynthesizer(size=640, style="deeppcb", template=True, min_defects=4, max_defects=10)
    dark, widths, sides, counts = [], [], [], np.zeros(6, int)
    for seed in range(16):
        s = synth(seed)
        image, temp = s["image"][..., 0].astype(int), s["image"][..., 1].astype(int)
        boxes, labels = s["boxes"].astype(int), s["labels"]
        # binarised like DeepPCB's scans: black copper on white, nothing else
        assert set(np.unique(s["image"]).tolist()) <= {0, 255}
        dark.append((temp == 0).mean())
        widths.append(_modal_trace_width(temp == 0))
        assert len(labels) >= 1 and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes <= 640).all()
        diff = temp - image
        inside = np.zeros(diff.shape, bool)
        for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
            inside[y0:y1, x0:x1] = True
            patch = diff[y0:y1, x0:x1]
            assert patch.any() and (np.sign(patch[patch != 0]) == ADDS_COPPER[int(label)]).all(), (seed, label)
        assert not diff[~inside].any(), f"seed {seed}: the image differs from its template outside the boxes"
        a, b = boxes[:, None], boxes[None]
        overlap = (np.minimum(a[..., 2], b[..., 2]) > np.maximum(a[..., 0], b[..., 0])) & \
                  (np.minimum(a[..., 3], b[..., 3]) > np.maximum(a[..., 1], b[..., 1]))
        assert overlap.sum() == len(boxes)
        for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):  # DeepPCB's convention, exactly
            if min(x0, y0) > 0 and max(x1, y1) < 640:  # (boxes at the border are clipped)
                ys, xs = np.nonzero(diff[y0:y1, x0:x1])
                margins = (xs.min(), ys.min(), x1 - x0 - 1 - xs.max(), y1 - y0 - 1 - ys.max())
                assert margins == (BOX_MARGIN, BOX_MARGIN, BOX_MARGIN - 1, BOX_MARGIN - 1), (seed, label, margins)
        sides.append(boxes[:, 2:] - boxes[:, :2])
        counts += np.bincount(labels, minlength=6)
    dark, sides = np.array(dark), np.concatenate(sides)
    # measured on DeepPCB trainval templates: dark fraction mean 0.35 (5-95 %: 0.0-0.7)
    assert 0.2 <= dark.mean() <= 0.45 and dark.max() <= 0.75, dark
    # trace width: DeepPCB's modal dark run is 6-12 px on most boards (8 on the skeleton)
    assert 7 <= np.median(widths) <= 12, widths
    # DeepPCB's boxes are 25-90 px a side, median 29-42 px per class
    assert sides.min() >= 2 * BOX_MARGIN and 25 <= np.median(sides) <= 45, np.percentile(sides, [0, 50, 100])
    # all six classes, roughly balanced like DeepPCB's (1,010-1,379 boxes a class)
    assert counts.min() >= counts.sum() / 6 / 2.5, counts


def test_deeppcb_boxes_are_the_changed_pixels_plus_the_margin(deeppcb) -> None:
    """The measurement behind BOX_MARGIN: a spurious-copper box is its changed pixels plus 10 px a side."""
    import cv2

    root = deeppcb / "PCBData"
    lines = [ln.split() for ln in (root / "trainval.txt").read_text().splitlines() if ln.strip()]
    margins = []
    for image, annotation in lines[::8]:
        test, temp = (cv2.imread(str(root / (image[:-4] + end)), 0) > 127 for end in ("_test.jpg", "_temp.jpg"))
        for row in (root / annotation).read_text().splitlines():
            x0, y0, x1, y1, cls = map(int, row.replace(",", " ").split())
            ys, xs = np.nonzero(test[y0:y1, x0:x1] != temp[y0:y1, x0:x1])
            if DEEPPCB_CLASSES[cls - 1] == "copper" and len(xs):
                margins.append((xs.min(), ys.min(), x1 - x0 - 1 - xs.max(), y1 - y0 - 1 - ys.max()))
    exact = np.mean([m == (BOX_MARGIN, BOX_MARGIN, BOX_MARGIN - 1, BOX_MARGIN - 1) for m in margins])
    assert len(margins) >= 50 and exact >= 0.75, (len(margins), exact)


def test_deeppcb_style_is_closer_to_deeppcb_than_default(deeppcb) -> None:
    import cv2

    root = deeppcb / "PCBData"
    lines = [ln.split() for ln in (root / "trainval.txt").read_text().splitlines() if ln.strip()]
    real = np.array([(cv2.imread(str(root / (ln[0][:-4] + "_temp.jpg")), 0) < 128).mean() for ln in lines[::50]])
    styled = BoardSynthesizer(size=640, style="deeppcb", template=True)
    default = BoardSynthesizer(size=640, randomise=False, template=True)
    ours = np.array([(styled(i)["image"][..., 1] == 0).mean() for i in range(12)])
    theirs = np.array([(default(i)["image"][..., 1] == 0).mean() for i in range(12)])
    assert abs(ours.mean() - real.mean()) < abs(theirs.mean() - real.mean()), (real.mean(), ours.mean(), theirs.mean())
    assert abs(ours.mean() - real.mean()) < 0.1, (real.mean(), ours.mean())


def test_style_argument() -> None:
    with pytest.raises(ValueError, match="style"):
        BoardSynthesizer(style="photo")
    a, b = BoardSynthesizer(size=128, style="deeppcb")(3), BoardSynthesizer(size=128, style="deeppcb")(3)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (128, 128, 1)

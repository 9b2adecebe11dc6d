"""DataError messages, Pillow image reading (pixel-identical to the OpenCV reader on DeepPCB and JPEGs), collate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlsdk.data.samples import DataError, SkipLog, collate, read_image


def test_error_names_file_record_and_field() -> None:
    e = DataError("a.json", "is nan; expected a finite number", record="annotation id 7 (index 3)", field="bbox")
    assert str(e) == "a.json: annotation id 7 (index 3): bbox: is nan; expected a finite number"
    assert (e.path, e.record, e.field, e.line) == ("a.json", "annotation id 7 (index 3)", "bbox", None)
    assert str(DataError("b.txt", "x2 is inf; expected a finite number", 4, field="x2")) == \
        "b.txt:4: x2 is inf; expected a finite number"  # the problem already names the field
    log = SkipLog("skip", "test")
    log.handle(e)
    assert str(log.skipped[0]) == str(e) and log.skipped[0].field == "bbox"
    with pytest.warns(UserWarning, match=r"test: skipped 1 bad sample\(s\): a\.json: annotation id 7"):
        log.warn()


def test_read_image_gray_rgb_and_refusals(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    got = read_image(tmp_path / "c.png", channels=3)
    np.testing.assert_array_equal(got, rgb)
    assert got.flags.writeable
    gray = read_image(tmp_path / "c.png")
    assert gray.shape == (12, 20, 1)
    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    Image.fromarray(np.full((5, 6), 1000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match=r"deep\.png: I;16 image: only 8-bit images are read"):
        read_image(tmp_path / "deep.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(DataError, match=r"nope\.png: image file does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="channels"):
        read_image(tmp_path / "c.png", channels=2)


def test_pillow_reads_deeppcb_exactly_as_the_industrial_opencv_reader(deeppcb: Path) -> None:
    pytest.importorskip("cv2")
    from vlsdk_industrial.deeppcb import read_deeppcb_list
    from vlsdk_industrial.samples import read_image as read_image_cv2

    pairs = read_deeppcb_list(deeppcb / "PCBData" / "test.txt")
    files = [f for _, board, temp, _ in pairs for f in (board, temp)]
    assert len(files) == 500
    for f in files:  # every board and template of the test split
        np.testing.assert_array_equal(read_image(f), read_image_cv2(f), err_msg=str(f))


def test_colour_jpeg_matches_opencv(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    from vlsdk_industrial.samples import read_image as read_image_cv2

    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack((xx * 4, yy * 5, (xx + yy) * 2), axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=85)
    for channels in (1, 3):
        np.testing.assert_array_equal(read_image(tmp_path / "c.jpg", channels), read_image_cv2(tmp_path / "c.jpg",
                                                                                                 channels))


def test_collate_stacks_images_and_targets() -> None:
    samples = [{"image": np.full((4, 6, 1), 255, np.uint8), "boxes": np.zeros((0, 4), np.float32),
                "labels": np.zeros(0, np.int64)},
               {"image": np.zeros((4, 6, 1), np.uint8), "boxes": [[1, 1, 3, 3]], "labels": [2]}]
    images, targets, back = collate(samples)
    assert tuple(images.shape) == (2, 1, 4, 6) and float(images[0].min()) == 1.0
    assert targets[1]["boxes"].tolist() == [[1, 1, 3, 3]] and targets[1]["labels"].tolist() == [2]
    assert back == samples
    with pytest.raises(ValueError, match="one shape"):
        collate([samples[0], {**samples[1], "image": np.zeros((5, 6, 1), np.uint8)}])

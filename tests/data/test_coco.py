"""The core COCO reader: config-style construction, non-finite values, repeated ids, wrong types."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlsdk.data.coco import COCODataset
from vlsdk.data.samples import DataError


def _write(root: Path, n_images: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n_images):
        Image.fromarray(np.full((40, 60), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": 60, "height": 40})
        anns.append({"id": 100 + 2 * i, "image_id": 10 + i, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0})
        anns.append({"id": 101 + 2 * i, "image_id": 10 + i, "category_id": 3, "bbox": [5, 5, 4.5, 3], "iscrowd": 0})
    cats = [{"id": 7, "name": "scratch"}, {"id": 3, "name": "dent"}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def _edit(root: Path, change) -> Path:
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # json writes NaN / Infinity literals, which Python's json reads
    return path


def test_config_form_and_positional_form_agree(tmp_path: Path) -> None:
    root = _write(tmp_path)
    a = COCODataset(root=str(root), annotations="annotations.json", images="images", channels=3)
    b = COCODataset(root / "annotations.json", root / "images", channels=3)
    assert a.classes == b.classes == ("dent", "scratch") and a.category_ids == (3, 7) and a.channels == 3
    s = a[1]
    assert s["image"].shape == (40, 60, 3) and s["size"] == (40, 60) and s["image_id"] == 11 and s["index"] == 1
    np.testing.assert_array_equal(s["boxes"], [[1, 2, 11, 22], [5, 5, 9.5, 8]])
    assert s["labels"].tolist() == [1, 0] and s["boxes"].dtype == np.float32 and s["labels"].dtype == np.int64
    np.testing.assert_array_equal(b[1]["boxes"], s["boxes"])
    _edit(root, lambda d: [im.__setitem__("file_name", "images/" + im["file_name"]) for im in d["images"]])
    c = COCODataset(root=root, annotations="annotations.json", images=None)  # file names relative to root
    np.testing.assert_array_equal(c[1]["boxes"], s["boxes"])
    with pytest.raises(ValueError, match="not both"):
        COCODataset(root / "annotations.json", root=root)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_bbox_is_named_or_skipped(tmp_path: Path, value: float) -> None:
    root = _write(tmp_path)
    _edit(root, lambda d: d["annotations"][3]["bbox"].__setitem__(2, value))
    with pytest.raises(DataError, match=r"annotations\.json: annotation id 103 \(index 3\): bbox must be four "
                                        r"finite numbers") as info:
        COCODataset(root=root, images="images")
    assert info.value.field == "bbox" and info.value.record == "annotation id 103 (index 3)"
    with pytest.warns(UserWarning, match=r"skipped 1 bad sample"):
        ds = COCODataset(root=root, images="images", on_error="skip")
    assert [ds[i]["image_id"] for i in range(len(ds))] == [10, 12]  # the board of the bad box is left out
    assert ds.skipped[0].field == "bbox" and "annotation id 103" in str(ds.skipped[0])


def test_non_finite_image_size_is_named(tmp_path: Path) -> None:
    root = _write(tmp_path)
    _edit(root, lambda d: d["images"][2].__setitem__("height", float("inf")))
    with pytest.raises(DataError, match=r"image id 12 \(index 2\): height: expected a finite positive number"):
        COCODataset(root=root, images="images")
    with pytest.warns(UserWarning, match="skipped 1"):
        assert len(COCODataset(root=root, images="images", on_error="skip")) == 2


@pytest.mark.parametrize(("where", "kind", "repeated"), [("images", "image", 10), ("annotations", "annotation", 100),
                                                         ("categories", "category", 7)])
def test_repeated_ids_are_errors_even_when_skipping(tmp_path: Path, where: str, kind: str, repeated: int) -> None:
    root = _write(tmp_path)
    _edit(root, lambda d: d[where][1].__setitem__("id", repeated))
    with pytest.raises(DataError, match=rf"annotations\.json: {kind} id {repeated} appears 2 times \(indexes "
                                        rf"\[0, 1\]\); {kind} ids must be unique") as info:
        COCODataset(root=root, images="images", on_error="skip")
    assert info.value.field == "id"


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["annotations"][0].__setitem__("bbox", ["1", 2, 10, 20]), r"annotation id 100 \(index 0\): bbox must"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [True, 2, 10, 20]), r"annotation id 100 \(index 0\): bbox must"),
    (lambda d: d["annotations"][0].__setitem__("iscrowd", "no"), r"annotation id 100 \(index 0\): iscrowd must be"),
    (lambda d: d["annotations"][0].__setitem__("image_id", [10]), r"annotation id 100 \(index 0\): unknown image_id"),
    (lambda d: d["images"][0].__setitem__("width", "60"), r"image id 10 \(index 0\): width: expected a finite"),
    (lambda d: d["images"][0].__setitem__("file_name", None), r"image id 10 \(index 0\): file_name: expected"),
    (lambda d: d["images"][0].__setitem__("id", 1.5), r"image index 0: id must be an integer or a string, got 1.5"),
    (lambda d: d["categories"][0].__setitem__("id", "7"), r"category index 0: id must be an integer, got '7'"),
])
def test_wrong_types_name_the_field(tmp_path: Path, change, message: str) -> None:
    root = _write(tmp_path)
    _edit(root, change)
    with pytest.raises(DataError, match=message):
        COCODataset(root=root, images="images")


def test_image_of_another_size_than_the_json_says(tmp_path: Path) -> None:
    root = _write(tmp_path)
    Image.fromarray(np.zeros((30, 60), np.uint8)).save(root / "images" / "1.png")
    ds = COCODataset(root=root, images="images")
    with pytest.raises(DataError, match=r"image id 11: width/height: says 60x40 but .*1\.png is 60x30"):
        ds[1]

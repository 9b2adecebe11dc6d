"""The core VOC reader: non-finite coordinates and sizes are named by file, line and field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlsdk.data.samples import DataError
from vlsdk.data.voc import VOCDataset

_XML = """<annotation>
  <filename>{name}.png</filename>
  <size><width>{width}</width><height>40</height><depth>1</depth></size>
  <object>
    <name>dent</name>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>11</xmax><ymax>22</ymax></bndbox>
  </object>
  <object>
    <name>scratch</name>
    <bndbox><xmin>5</xmin><ymin>{ymin}</ymin><xmax>9</xmax><ymax>8</ymax></bndbox>
  </object>
</annotation>
"""


def _write(root: Path, ymin: str = "5", width: str = "60", bad: int = 1) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 60), 50 * i, np.uint8)).save(root / "JPEGImages" / f"{i}.png")
        args = {"ymin": ymin, "width": width} if i == bad else {"ymin": "5", "width": "60"}
        (root / "Annotations" / f"{i}.xml").write_text(_XML.format(name=i, **args))
    return root


def test_samples_have_size_and_image_id(tmp_path: Path) -> None:
    ds = VOCDataset(_write(tmp_path), channels=3)
    s = ds[2]
    assert ds.classes == ("dent", "scratch") and s["image"].shape == (40, 60, 3)
    assert s["size"] == (40, 60) and s["image_id"] == 2 and s["index"] == 2
    np.testing.assert_array_equal(s["boxes"], [[1, 2, 11, 22], [5, 5, 9, 8]])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_coordinate_is_named_or_skipped(tmp_path: Path, value: str) -> None:
    root = _write(tmp_path, ymin=value)
    with pytest.raises(DataError, match=r"1\.xml:8: object 1 'scratch': <bndbox> ymin is (-?inf|nan); expected a "
                                        r"finite number") as info:
        VOCDataset(root)
    assert info.value.line == 8 and info.value.field == "ymin"
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        ds = VOCDataset(root, on_error="skip")
    assert [Path(ds[i]["path"]).name for i in range(len(ds))] == ["0.png", "2.png"]
    assert ds.skipped[0].line == 8 and ds.skipped[0].field == "ymin"


@pytest.mark.parametrize("value", ["nan", "inf", "0", "12.5", "wide"])
def test_bad_size_is_named(tmp_path: Path, value: str) -> None:
    root = _write(tmp_path, width=value)
    with pytest.raises(DataError, match=rf"1\.xml:3: <size> <width> must be a positive whole number of pixels, "
                                        rf"got '{value}'") as info:
        VOCDataset(root)
    assert info.value.field == "width"

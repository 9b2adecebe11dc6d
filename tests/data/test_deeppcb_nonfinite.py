"""DeepPCB annotations: a nan / inf value is an error naming the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlsdk.data.samples import DataError
from vlsdk_industrial.deeppcb import DeepPCBDataset, parse_deeppcb_annotation


@pytest.mark.parametrize(("text", "field"), [("1 2 nan 12 1\n", "x2"), ("1 inf 10 12 1\n", "y1"),
                                             ("1,2,10,12,-inf\n", "type")])
def test_non_finite_value_names_line_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "a.txt"
    path.write_text("3 4 20 30 6\n" + text)
    with pytest.raises(DataError, match=rf"a\.txt:2: {field} is -?(nan|inf); expected a finite number") as info:
        parse_deeppcb_annotation(path)
    assert info.value.line == 2 and info.value.field == field


def test_non_finite_pair_is_skipped_and_counted(tmp_path: Path) -> None:
    data = tmp_path / "PCBData"
    (data / "g" / "1").mkdir(parents=True)
    (data / "g" / "1_not").mkdir()
    for i, text in enumerate(["1 2 10 12 1\n", "1 2 nan 12 1\n"]):
        for suffix in ("_test", "_temp"):
            Image.fromarray(np.full((32, 32), 255, np.uint8)).save(data / "g" / "1" / f"{i}{suffix}.jpg")
        (data / "g" / "1_not" / f"{i}.txt").write_text(text)
    (data / "test.txt").write_text("g/1/0.jpg g/1_not/0.txt\ng/1/1.jpg g/1_not/1.txt\n")
    with pytest.warns(UserWarning, match=r"skipped 1 bad sample\(s\): .*1\.txt:1: x2 is nan"):
        ds = DeepPCBDataset(tmp_path, "test", on_error="skip")
    assert len(ds) == 1 and ds.skipped[0].field == "x2"
    sample = ds[0]
    assert sample["image_id"] == 1 and sample["size"] == (32, 32)  # the pair's line in test.txt

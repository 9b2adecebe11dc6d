"""DeepPCB adapter: the real files in ../shared/data/deeppcb and hand-made bad inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vlsdk_industrial.deeppcb import DeepPCBDataset, parse_deeppcb_annotation
from vlsdk_industrial.samples import DataError


def test_real_test_split_counts_and_classes(deeppcb: Path) -> None:
    ds = DeepPCBDataset(deeppcb, "test")
    assert len(ds) == 250 and ds.skipped == []
    labels = np.concatenate([r.labels for r in ds.records])
    # per-class box counts of the 250 test pairs (documented in deeppcb/SOURCE.txt)
    assert np.bincount(labels, minlength=6).tolist() == [335, 237, 294, 241, 235, 239]


def test_real_sample_with_template_channel(deeppcb: Path) -> None:
    ds = DeepPCBDataset(deeppcb, "test", template=True, max_samples=3)
    sample = ds[0]
    image = sample["image"]
    assert image.shape == (640, 640, 2) and image.dtype == np.uint8
    # the second channel really is the template file, and it differs from the defective board
    temp = cv2.imread(sample["template_path"], cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(image[..., 1], temp)
    assert (image[..., 0] != image[..., 1]).any()
    boxes = sample["boxes"]
    assert boxes.shape[1] == 4 and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes >= 0).all() and (boxes <= 640).all()
    # first line of the first test annotation: known from the file
    first = Path(sample["path"]).parent.parent / (Path(sample["path"]).parent.name + "_not")
    ann = first / (Path(sample["path"]).name.replace("_test.jpg", ".txt"))
    x1, y1, x2, y2, t = (int(v) for v in ann.read_text().split()[:5])
    assert boxes[0].tolist() == [x1, y1, x2, y2] and sample["labels"][0] == t - 1
    assert DeepPCBDataset(deeppcb, "test", max_samples=1)[0]["image"].shape == (640, 640, 1)


def _board(path: Path, size: tuple[int, int] = (64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(size, 255, np.uint8))


def _tree(tmp_path: Path, annotations: list[str], template_size: tuple[int, int] = (64, 64)) -> Path:
    data = tmp_path / "PCBData"
    lines = []
    for i, text in enumerate(annotations):
        _board(data / "g" / "1" / f"{i}_test.jpg")
        _board(data / "g" / "1" / f"{i}_temp.jpg", template_size)
        (data / "g" / "1_not").mkdir(parents=True, exist_ok=True)
        (data / "g" / "1_not" / f"{i}.txt").write_text(text)
        lines.append(f"g/1/{i}.jpg g/1_not/{i}.txt")
    (data / "test.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_comma_and_space_separated_and_empty_file(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["1,2,10,12,1\n3 4 20 30 6\n", ""])
    ds = DeepPCBDataset(root, "test")
    assert ds[0]["boxes"].tolist() == [[1, 2, 10, 12], [3, 4, 20, 30]]
    assert ds[0]["labels"].tolist() == [0, 5]
    assert ds[1]["boxes"].shape == (0, 4) and ds[1]["labels"].shape == (0,)  # defect-free board is valid


@pytest.mark.parametrize(("text", "line", "message"), [
    ("1 2 10 12 1\n1 2 10 12 7\n", 2, "unknown defect type 7"),
    ("10 2 5 12 1\n", 1, "x2 > x1"),
    ("\n1 2 10\n", 2, "expected 'x1 y1 x2 y2 type'"),
    ("1 2 a 12 1\n", 1, "five numbers"),
    ("-3 2 10 12 1\n", 1, "negative"),
])
def test_bad_annotation_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "a.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        parse_deeppcb_annotation(path)
    assert info.value.line == line and str(info.value).startswith(f"{path}:{line}:")


def test_box_outside_image_found_on_load(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["1 2 10 12 1\n5 5 70 20 2\n"])
    ds = DeepPCBDataset(root, "test")
    with pytest.raises(DataError, match=r"0\.txt:2: box outside the 64x64 image"):
        ds[0]


def test_template_of_another_size(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["1 2 10 12 1\n"], template_size=(32, 64))
    assert DeepPCBDataset(root, "test")[0]["image"].shape == (64, 64, 1)  # template unused
    with pytest.raises(DataError, match=r"0_temp\.jpg: template is 64x32"):
        DeepPCBDataset(root, "test", template=True)[0]


def test_skip_counts_and_warns(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["1 2 10 12 1\n", "1 2 10 12 9\n", "1 2 10 12 3\n", "1 1 100 10 2\n"])
    (root / "PCBData" / "g" / "1" / "2_test.jpg").write_bytes(b"not a jpeg")  # unreadable image
    with open(root / "PCBData" / "test.txt", "a") as f:
        f.write("g/1/9.jpg g/1_not/9.txt\n")  # missing files
    with pytest.warns(UserWarning, match="skipped 4 bad sample"):
        ds = DeepPCBDataset(root, "test", on_error="skip", check_images=True)
    assert len(ds) == 1 and ds[0]["labels"].tolist() == [0]
    problems = sorted(s.problem.split(":")[0] for s in ds.skipped)
    assert len(problems) == 4
    assert any("unknown defect type 9" in s.problem for s in ds.skipped)
    assert any("cannot decode" in s.problem for s in ds.skipped)
    assert any("does not exist" in s.problem and s.line == 5 for s in ds.skipped)
    assert any("outside" in s.problem and s.line == 1 for s in ds.skipped)
    with pytest.raises(DataError, match="unknown defect type 9"):
        DeepPCBDataset(root, "test")


def test_bad_list_line_and_arguments(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["1 2 10 12 1\n"])
    with open(root / "PCBData" / "test.txt", "a") as f:
        f.write("only-one-field\n")
    with pytest.raises(DataError, match=r"test\.txt:2: expected"):
        DeepPCBDataset(root, "test")
    with pytest.raises(ValueError, match="on_error"):
        DeepPCBDataset(root, "test", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a folder"):
        DeepPCBDataset(tmp_path / "nope")
    with pytest.raises(DataError, match="list file does not exist"):
        DeepPCBDataset(root, "trainval")

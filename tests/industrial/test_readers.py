"""VOC XML, COCO JSON and image-folder readers on files written from synthetic boards."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vlsdk_industrial.coco import COCODataset
from vlsdk_industrial.folder import ImageFolder
from vlsdk_industrial.samples import DEEPPCB_CLASSES, DataError
from vlsdk_industrial.synth import BoardSynthesizer
from vlsdk_industrial.voc import PKU_MARKET_PCB_TO_DEEPPCB, VOCDataset

PKU = {v: k for k, v in PKU_MARKET_PCB_TO_DEEPPCB.items()}  # DeepPCB name -> PKU name


@pytest.fixture(scope="module")
def boards() -> list[dict]:
    synth = BoardSynthesizer(size=128, min_defects=1, max_defects=4, randomise=False)
    return [synth(seed) for seed in range(5)]


def _voc_xml(name: str, sample: dict, names: list[str]) -> str:
    objects = "".join(
        f"""  <object>
    <name>{n}</name>
    <difficult>0</difficult>
    <bndbox><xmin>{b[0]:g}</xmin><ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox>
  </object>
""" for n, b in zip(names, sample["boxes"], strict=True))
    return f"""<annotation>
  <folder>x</folder>
  <filename>{name}</filename>
  <size><width>128</width><height>128</height><depth>1</depth></size>
{objects}</annotation>
"""


def _pku_tree(tmp_path: Path, boards: list[dict]) -> Path:
    root = tmp_path / "PCB_DATASET"
    for i, s in enumerate(boards):
        cls = "Open_circuit" if i % 2 else "Spur"
        (root / "Annotations" / cls).mkdir(parents=True, exist_ok=True)
        (root / "images" / cls).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / cls / f"{i:02d}.png"), s["image"][..., 0])
        names = [PKU[DEEPPCB_CLASSES[k]].upper() if j == 0 else PKU[DEEPPCB_CLASSES[k]]
                 for j, k in enumerate(s["labels"])]
        (root / "Annotations" / cls / f"{i:02d}.xml").write_text(_voc_xml(f"{i:02d}.png", s, names))
    return root


def test_voc_pku_layout_round_trip(tmp_path: Path, boards: list[dict]) -> None:
    root = _pku_tree(tmp_path, boards)
    ds = VOCDataset(root, PKU_MARKET_PCB_TO_DEEPPCB, target_classes=DEEPPCB_CLASSES)
    assert len(ds) == len(boards) and ds.classes == DEEPPCB_CLASSES
    by_name = {Path(ds[i]["path"]).stem: ds[i] for i in range(len(ds))}
    for i, s in enumerate(boards):
        got = by_name[f"{i:02d}"]
        np.testing.assert_array_equal(got["boxes"], s["boxes"])
        np.testing.assert_array_equal(got["labels"], s["labels"])
        np.testing.assert_array_equal(got["image"], s["image"])
    plain = VOCDataset(root)  # names found in the files, case folded, sorted
    assert plain.classes == tuple(sorted({PKU[DEEPPCB_CLASSES[k]] for s in boards for k in s["labels"]}))


def test_voc_bad_input_names_file_and_line(tmp_path: Path, boards: list[dict]) -> None:
    root = _pku_tree(tmp_path, boards[:3])
    xml = root / "Annotations" / "Spur" / "00.xml"
    text = xml.read_text()
    xml.write_text(text.replace("<xmax>", "<xmax>-", 1).replace("<xmax>--", "<xmax>-"))
    with pytest.raises(DataError, match=r"00\.xml:5: empty box"):
        VOCDataset(root)
    xml.write_text(text.replace("</annotation>", ""))
    with pytest.raises(DataError, match=r"00\.xml:\d+: malformed XML"):
        VOCDataset(root)
    xml.write_text(text.replace("<name>", "<name>scratch_", 1))
    with pytest.raises(DataError, match=r"00\.xml:5: unknown class 'scratch_"):
        VOCDataset(root, PKU_MARKET_PCB_TO_DEEPPCB)
    (root / "images" / "Open_circuit" / "01.png").unlink()
    with pytest.warns(UserWarning, match="skipped 2 bad sample"):
        ds = VOCDataset(root, PKU_MARKET_PCB_TO_DEEPPCB, on_error="skip")
    assert len(ds) == 1 and {s.line for s in ds.skipped} == {5, None}
    assert any("not found" in s.problem for s in ds.skipped)


def _coco(tmp_path: Path, boards: list[dict]) -> Path:
    images, anns = [], []
    for i, s in enumerate(boards):
        cv2.imwrite(str(tmp_path / f"b{i}.png"), s["image"][..., 0])
        images.append({"id": 10 + i, "file_name": f"b{i}.png", "width": 128, "height": 128})
        for b, lab in zip(s["boxes"].tolist(), s["labels"].tolist(), strict=True):
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": 100 + lab,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": 1.0, "iscrowd": 0})
    cats = [{"id": 100 + k, "name": n} for k, n in reversed(list(enumerate(DEEPPCB_CLASSES)))]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_coco_round_trip_and_pycocotools_agree(tmp_path: Path, boards: list[dict]) -> None:
    from pycocotools.coco import COCO

    path = _coco(tmp_path, boards)
    ds = COCODataset(path)
    assert ds.classes == DEEPPCB_CLASSES and len(ds) == len(boards)
    for i, s in enumerate(boards):
        np.testing.assert_allclose(ds[i]["boxes"], s["boxes"])
        np.testing.assert_array_equal(ds[i]["labels"], s["labels"])
    ref = COCO(str(path))
    assert sum(len(ds[i]["labels"]) for i in range(len(ds))) == len(ref.getAnnIds())


def test_coco_bad_input(tmp_path: Path, boards: list[dict]) -> None:
    path = _coco(tmp_path, boards)
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 7
    data["annotations"][1]["bbox"] = [5, 5, 0, 3]
    data["annotations"][2]["iscrowd"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"ann\.json: annotation id 1 \(index 0\): unknown category_id 7"):
        COCODataset(path)
    with pytest.warns(UserWarning, match="skipped 2 bad sample"):
        ds = COCODataset(path, on_error="skip")
    assert ds.num_crowd == 1 and len(ds.skipped) == 2
    path.write_text("{\n  'images': []\n}")
    with pytest.raises(DataError, match=r"ann\.json:2: malformed JSON"):
        COCODataset(path)


def test_image_folder(tmp_path: Path, boards: list[dict]) -> None:
    for i, s in enumerate(boards[:3]):
        cv2.imwrite(str(tmp_path / f"{i}_test.jpg"), s["image"][..., 0])
        cv2.imwrite(str(tmp_path / f"{i}_temp.jpg"), s["image"][..., 0])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.png").write_bytes(b"\x89PNG nope")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = ImageFolder(tmp_path, exclude=("_temp",), on_error="skip")
    assert [Path(f).name for f in ds.files] == ["0_test.jpg", "1_test.jpg", "2_test.jpg"]
    assert ds.num_excluded == 3 and ds[0]["image"].shape == (128, 128, 1) and ds[0]["boxes"].shape == (0, 4)
    with pytest.raises(DataError, match=r"broken\.png: cannot decode"):
        strict = ImageFolder(tmp_path)
        [strict[i] for i in range(len(strict))]


def test_image_folder_with_templates(tmp_path: Path, boards: list[dict]) -> None:
    for i, s in enumerate(boards[:2]):
        cv2.imwrite(str(tmp_path / f"{i}_test.png"), s["image"][..., 0])
        cv2.imwrite(str(tmp_path / f"{i}_temp.png"), 255 - s["image"][..., 0])
    cv2.imwrite(str(tmp_path / "2_test.png"), boards[2]["image"][..., 0])  # no template
    ds = ImageFolder(tmp_path, template=("_test", "_temp"))
    assert [Path(f).name for f in ds.files] == ["0_test.png", "1_test.png", "2_test.png"]
    sample = ds[1]
    assert sample["image"].shape == (128, 128, 2) and sample["size"] == (128, 128)
    np.testing.assert_array_equal(sample["image"][..., 1], 255 - boards[1]["image"][..., 0])
    with pytest.raises(DataError, match=r"2_temp\.png: image file does not exist"):
        ds[2]
    cv2.imwrite(str(tmp_path / "2_temp.png"), np.zeros((64, 128), np.uint8))
    with pytest.raises(DataError, match=r"2_temp\.png: template is 128x64"):
        ds[2]
    with pytest.raises(ValueError, match="template"):
        ImageFolder(tmp_path, template=("_test", "_temp"), channels=3)

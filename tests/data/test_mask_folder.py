"""MaskFolderDataset on PNG label maps written by the test: pairing, classes, and bad masks named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlsdk.data.mask_folder import MaskFolderDataset
from vlsdk.data.samples import DataError


def _write(root: Path, n: int = 3, classes_txt: bool = True) -> list[np.ndarray]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    masks = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.jpg")
        mask = rng.integers(0, 3, (24, 32)).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
        masks.append(mask)
    if classes_txt:
        (root / "classes.txt").write_text("background\ncrack\n\nstain\n")
    return masks


def test_pairs_by_stem_with_classes_from_file(tmp_path: Path) -> None:
    masks = _write(tmp_path)
    ds = MaskFolderDataset(str(tmp_path), channels=3)
    assert ds.classes == ("background", "crack", "stain") and len(ds) == 3 and ds.channels == 3
    s = ds[1]
    assert s["image"].shape == (24, 32, 3) and s["image"].dtype == np.uint8
    assert s["mask"].dtype == np.int64 and s["size"] == (24, 32) and s["image_id"] == "s1"
    np.testing.assert_array_equal(s["mask"], masks[1])
    palette = Image.fromarray(masks[2], mode="L").convert("P")  # a palette PNG: the indices are the ids
    palette.save(tmp_path / "masks" / "s2.png")
    np.testing.assert_array_equal(MaskFolderDataset(tmp_path, classes=["a", "b", "c"])[2]["mask"], masks[2])


def test_missing_classes_and_missing_partners(tmp_path: Path) -> None:
    _write(tmp_path, classes_txt=False)
    with pytest.raises(ValueError, match=r"no classes given and no .*classes\.txt"):
        MaskFolderDataset(tmp_path)
    (tmp_path / "masks" / "s1.png").unlink()
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "masks" / "orphan.png")
    with pytest.raises(DataError, match=r"orphan\.png: no image orphan\.\* in"):  # stems in sorted order
        MaskFolderDataset(tmp_path, classes=["a", "b", "c"])
    with pytest.warns(UserWarning, match="skipped 2 bad sample"):
        ds = MaskFolderDataset(tmp_path, classes=["a", "b", "c"], on_error="skip")
    assert [s["image_id"] for s in (ds[0], ds[1])] == ["s0", "s2"]
    assert any(s.path.endswith("s1.jpg") and "no mask" in s.problem for s in ds.skipped)


def test_size_mismatch_and_label_out_of_range_name_the_mask(tmp_path: Path) -> None:
    _write(tmp_path)
    Image.fromarray(np.zeros((24, 30), np.uint8)).save(tmp_path / "masks" / "s0.png")
    Image.fromarray(np.full((24, 32), 7, np.uint8)).save(tmp_path / "masks" / "s2.png")
    ds = MaskFolderDataset(tmp_path)
    with pytest.raises(DataError, match=r"s0\.png: mask is 30x24 but its image s0\.jpg is 32x24"):
        ds[0]
    with pytest.raises(DataError, match=r"s2\.png: label value\(s\) \[7\] >= the number of classes 3"):
        ds[2]
    with pytest.warns(UserWarning, match="skipped 2 bad sample"):
        assert len(MaskFolderDataset(tmp_path, on_error="skip")) == 1


def test_colour_and_non_finite_masks_are_refused(tmp_path: Path) -> None:
    _write(tmp_path)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "masks" / "s0.png")
    values = np.ones((24, 32), np.float32)
    values[0, :3] = np.nan
    (tmp_path / "masks" / "s1.png").unlink()
    Image.fromarray(values, mode="F").save(tmp_path / "masks" / "s1.tif")
    ds = MaskFolderDataset(tmp_path)
    with pytest.raises(DataError, match=r"s0\.png: a mask must be a single-channel label map .* got a RGB image"):
        ds[0]
    with pytest.raises(DataError, match=r"s1\.tif: 3 non-finite value\(s\) in the mask"):
        ds[1]

"""DeepPCB RAM cache and the uint8 training batch: same samples as decoding the JPEGs every time."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vlsdk_industrial.deeppcb import BINARY_THRESHOLD, DeepPCBDataset
from vlsdk.data.collate import collate_uint8, images_to_float
from vlsdk_industrial.samples import collate
from vlsdk_industrial.transforms import build_transforms


def test_uint8_cache_yields_the_uncached_samples_after_seeded_augmentation(deeppcb: Path) -> None:
    plain, cached = (DeepPCBDataset(deeppcb, "test", template=True, max_samples=6, cache=c,
                                    transform=build_transforms(train=True, size=320, seed=3))
                     for c in ("none", "uint8"))
    assert cached.cache_bytes == 6 * 640 * 640 * 2 and plain.cache_bytes == 0
    changed = 0
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        changed += int(not np.array_equal(a["boxes"], plain.records[i].boxes * 0.5))
    assert changed > 0  # the augmentation really moved boxes, so equal outputs mean equal random streams
    raw = DeepPCBDataset(deeppcb, "test", template=True, max_samples=2, cache="uint8")[1]["image"]
    np.testing.assert_array_equal(raw[..., 1], cv2.imread(str(cached.records[1].template), cv2.IMREAD_GRAYSCALE))
    with pytest.raises(ValueError, match="read-only"):
        raw[0, 0, 0] = 1  # a transform writing in place cannot corrupt the cache


def test_packed_cache_is_the_binarised_image_in_an_eighth_of_the_memory(deeppcb: Path) -> None:
    plain = DeepPCBDataset(deeppcb, "test", template=True, max_samples=3)
    packed = DeepPCBDataset(deeppcb, "test", template=True, max_samples=3, cache="packed")
    assert packed.cache_bytes == 3 * 640 * 640 * 2 // 8
    for i in range(3):
        want = np.where(plain[i]["image"] > BINARY_THRESHOLD, 255, 0).astype(np.uint8)
        got = packed[i]["image"]
        assert got.shape == (640, 640, 2) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
        # binarising only snaps JPEG ringing (levels near 0 or 255); mid-grey pixels are rare
        assert (np.abs(got.astype(int) - plain[i]["image"]) > 64).mean() < 0.005


def _pairs(tmp_path: Path, values: list[int], corrupt: int) -> Path:
    data = tmp_path / "PCBData"
    (data / "g" / "1_not").mkdir(parents=True)
    (data / "g" / "1").mkdir()
    lines = []
    for i, v in enumerate(values):
        image = np.full((32, 48), v, np.uint8)
        ok, jpg = cv2.imencode(".jpg", image)
        assert ok
        (data / "g" / "1" / f"{i}_test.jpg").write_bytes(b"not a jpeg" if i == corrupt else jpg.tobytes())
        (data / "g" / "1" / f"{i}_temp.jpg").write_bytes(jpg.tobytes())
        (data / "g" / "1_not" / f"{i}.txt").write_text(f"1 2 {10 + i} 20 {i % 6 + 1}\n")
        lines.append(f"g/1/{i}.jpg g/1_not/{i}.txt")
    (data / "trainval.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_cache_skips_bad_images_and_stays_aligned_with_the_records(tmp_path: Path) -> None:
    root = _pairs(tmp_path, [0, 60, 120, 180, 240], corrupt=1)
    with pytest.raises(ValueError, match="cannot decode"):
        DeepPCBDataset(root, cache="uint8")
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        ds = DeepPCBDataset(root, template=True, on_error="skip", cache="uint8")
    assert len(ds) == 4 and ds.cache_bytes == 4 * 32 * 48 * 2
    for i, v in enumerate([0, 120, 180, 240]):
        s = ds[i]
        assert abs(int(np.median(s["image"])) - v) <= 2 and s["boxes"][0, 2] == 10 + [0, 2, 3, 4][i]
    with pytest.raises(ValueError, match="cache must be one of"):
        DeepPCBDataset(root, cache="float16")  # type: ignore[arg-type]


def test_uint8_batch_converts_to_the_float_batch() -> None:
    rng = np.random.default_rng(0)
    samples = [{"image": rng.integers(0, 256, (16, 24, 2), dtype=np.uint8), "boxes": np.array([[1, 2, 5, 6]]),
                "labels": np.array([k]), "path": f"b{k}.jpg"} for k in range(3)]
    images, targets, meta = collate_uint8(samples)
    want, want_targets, _ = collate(samples)
    assert images.dtype == torch.uint8 and images.shape == (3, 16, 24, 2)
    torch.testing.assert_close(images_to_float(images), want, rtol=0, atol=0)
    assert images_to_float(want) is want  # float batches pass through
    for t, w in zip(targets, want_targets, strict=True):
        assert torch.equal(t["boxes"], w["boxes"]) and torch.equal(t["labels"], w["labels"])
    assert [m["path"] for m in meta] == ["b0.jpg", "b1.jpg", "b2.jpg"] and "image" not in meta[0]
    with pytest.raises(ValueError, match="uint8 images"):
        collate_uint8([{**samples[0], "image": samples[0]["image"].astype(np.float32)}])
    with pytest.raises(ValueError, match="one shape"):
        collate_uint8([samples[0], {**samples[1], "image": samples[1]["image"][:8]}])

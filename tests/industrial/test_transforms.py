"""Box-aware augmentation: boxes follow the pixels and stay valid after every transform."""

from __future__ import annotations

import numpy as np
import pytest

from vlsdk.data.mixing import MixedDataset
from vlsdk_industrial.synth import BoardSynthesizer
from vlsdk_industrial.transforms import build_transforms


@pytest.fixture(scope="module")
def boards() -> list[dict]:
    synth = BoardSynthesizer(size=192, min_defects=2, max_defects=5, template=True, randomise=False)
    return [synth(seed) for seed in range(6)]


def test_geometric_transforms_move_boxes_with_the_defects(boards: list[dict]) -> None:
    # flips and 90-degree rotations only: the board-template difference must stay inside the boxes
    t = build_transforms(flip=0.5, rot90=1.0, affine=0.0, photometric=0.0, seed=0)
    moved = 0
    for s in boards:
        out = t(s)
        assert out["image"].shape == s["image"].shape and len(out["boxes"]) == len(s["boxes"])
        moved += not np.array_equal(out["boxes"], s["boxes"])
        diff = out["image"][..., 0].astype(int) - out["image"][..., 1].astype(int)
        inside = np.zeros(diff.shape, bool)
        for x0, y0, x1, y1 in out["boxes"].round().astype(int):
            inside[y0:y1, x0:x1] = True
            assert diff[y0:y1, x0:x1].any()
        assert not diff[~inside].any()
        np.testing.assert_array_equal(out["labels"], s["labels"])
    assert moved >= 4  # rotations really happened


def test_full_pipeline_keeps_boxes_valid_and_resizes(boards: list[dict]) -> None:
    t = build_transforms(size=96, affine=1.0, photometric=1.0, seed=1)
    for _ in range(3):
        for s in boards:
            out = t(s)
            b = out["boxes"]
            assert out["image"].shape == (96, 96, 2) and out["image"].dtype == np.uint8
            assert b.dtype == np.float32 and len(b) == len(out["labels"])
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            assert (b >= 0).all() and (b <= 96).all()
    total = 3 * sum(len(s["boxes"]) for s in boards)
    kept = total - t.dropped
    assert 0 < kept <= total  # drops (boxes shifted out of the board) are counted, not hidden


def test_eval_transform_only_resizes(boards: list[dict]) -> None:
    s = boards[0]
    out = build_transforms(train=False, size=96)(s)
    np.testing.assert_allclose(out["boxes"], s["boxes"] / 2, atol=1e-4)
    assert build_transforms(train=False)(s)["image"] is not None
    with pytest.raises(ValueError, match="flip"):
        build_transforms(flip=1.5)
    with pytest.raises(ValueError, match="size"):
        build_transforms(size=3)


def test_mixed_dataset_ratio(boards: list[dict]) -> None:
    real = [dict(s, path="real") for s in boards]
    mixed = MixedDataset(real, BoardSynthesizer(size=64).dataset(2), ratio=3)
    sources = [mixed[i]["source"] for i in range(len(mixed))]
    assert sources == ["real"] * 3 + ["synthetic"] + ["real"] * 3 + ["synthetic"]
    assert [mixed[i]["path"] for i in range(4)][:3] == ["real"] * 3
    assert len(MixedDataset(real, [], ratio=float("inf"))) == 6
    with pytest.raises(ValueError, match="ratio"):
        MixedDataset(real, real, ratio=0)


def test_workers_get_their_own_augmentation_stream(boards: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import torch.utils.data

    s = boards[0]
    outputs = {}
    for seed in (11, 12, 11):
        t = build_transforms(flip=0.5, rot90=0.5, affine=0.0, photometric=0.0, seed=0)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda seed=seed: types.SimpleNamespace(seed=seed))
        outputs.setdefault(seed, []).append(np.stack([t(s)["boxes"] for _ in range(6)]))
    np.testing.assert_array_equal(outputs[11][0], outputs[11][1])  # same worker seed: same stream
    assert not np.array_equal(outputs[11][0], outputs[12][0])  # another worker: another stream
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: None)
    main = build_transforms(flip=0.5, rot90=0.5, affine=0.0, photometric=0.0, seed=0)
    assert not np.array_equal(np.stack([main(s)["boxes"] for _ in range(6)]), outputs[11][0])


def test_int16_noise_matches_gauss_noise_statistics_and_saturates() -> None:
    import albumentations as A

    from vlsdk_industrial.noise import Int16GaussNoise

    grey = np.full((256, 256, 2), 128, np.uint8)
    sigma = 0.03 * 255
    new, old = Int16GaussNoise(std_range=(0.03, 0.03), p=1.0), A.GaussNoise(std_range=(0.03, 0.03), p=1.0)
    new.set_random_seed(0)
    old.set_random_seed(0)
    n = new(image=grey)["image"].astype(float) - 128
    o = old(image=grey)["image"].astype(float) - 128
    # per-pixel, per-channel, zero-mean noise of the requested sigma (GaussNoise truncates toward 0: ~5 % less)
    assert abs(n.std() - sigma) < 0.05 * sigma and abs(n.mean()) < 0.1
    assert 0.9 * sigma < o.std() < n.std()
    assert abs(np.corrcoef(n[..., 0].ravel(), n[..., 1].ravel())[0, 1]) < 0.02  # board and template differ
    assert abs(np.corrcoef(n[:, :-1, 0].ravel(), n[:, 1:, 0].ravel())[0, 1]) < 0.02  # no spatial grain
    again = Int16GaussNoise(std_range=(0.03, 0.03), p=1.0)
    again.set_random_seed(0)
    np.testing.assert_array_equal(again(image=grey)["image"], n.astype(np.uint8) + 128)  # seeded: reproducible
    # black and white boards saturate instead of wrapping around
    bw = np.zeros((64, 64, 1), np.uint8)
    bw[:32] = 255
    out = Int16GaussNoise(std_range=(0.05, 0.05), p=1.0)(image=bw)["image"]
    assert out.shape == bw.shape and out.dtype == np.uint8
    assert out[:32].min() > 200 and out[32:].max() < 55 and out[:32].mean() < 255 and out[32:].mean() > 0

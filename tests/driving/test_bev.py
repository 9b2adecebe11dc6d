"""The vectorised BEV encoder against a per-point reference, on random and real clouds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlsdk_driving.bev import BEVGrid, PillarEncoder

FIELDS = ("x", "y", "z", "intensity", "time_lag")


def reference(points: np.ndarray, grid: BEVGrid, z_bins: int) -> np.ndarray:
    """A slow per-point loop computing the same channels (the test's independent oracle)."""
    h, w = grid.shape
    cells: dict[tuple[int, int], list[np.ndarray]] = {}
    for p in points:
        c = math.floor((p[0] - grid.x_range[0]) / grid.resolution)
        r = math.floor((p[1] - grid.y_range[0]) / grid.resolution)
        if 0 <= c < w and 0 <= r < h and grid.z_range[0] <= p[2] < grid.z_range[1]:
            cells.setdefault((r, c), []).append(p)
    out = np.zeros((6 + z_bins, h, w))
    span = grid.z_range[1] - grid.z_range[0]
    for (r, c), ps in cells.items():
        ps = np.array(ps)
        zn = (ps[:, 2] - grid.z_range[0]) / span
        out[0, r, c] = min(1.0, math.log1p(len(ps)) / math.log1p(32))
        out[1:6, r, c] = zn.max(), zn.mean(), zn.min(), ps[:, 3].mean() / 255, ps[:, 4].mean()
        for b in np.minimum((zn * z_bins).astype(int), z_bins - 1):
            out[6 + b, r, c] = 1
    return out


def test_matches_per_point_reference_and_batches():
    rng = np.random.default_rng(0)
    grid = BEVGrid((-4, 4), (-3, 5), (-2, 2), 0.5)
    clouds = [np.concatenate([rng.uniform([-5, -4, -3, 0, 0], [5, 6, 3, 255, 0.5], (n, 5)),
                              rng.uniform([-1, 0, -1, 0, 0], [-0.5, 0.5, 1, 255, 0.5], (20, 5))]).astype(np.float32)
              for n in (300, 50)]
    enc = PillarEncoder(grid, features=("occupancy", "max_z", "mean_z", "min_z", "mean_intensity",
                                        "mean_time_lag"), z_bins=3, point_fields=FIELDS)
    out = enc([torch.from_numpy(c) for c in clouds])
    assert out.shape == (2, 9, 16, 16) and enc.out_channels == 9
    for i, c in enumerate(clouds):
        np.testing.assert_allclose(out[i].numpy(), reference(c, grid, 3), atol=1e-5)
        np.testing.assert_allclose(enc(torch.from_numpy(c))[0].numpy(), out[i].numpy())  # batch of one


def test_real_sweep_default_grid(real_sample):
    enc = PillarEncoder(BEVGrid(), point_fields=real_sample.point_fields)
    out = enc(torch.from_numpy(real_sample.points))
    assert out.shape == (1, 9, 512, 512)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1.0 + 1e-6
    occupied = int((out[0, 0] > 0).sum())
    assert 5000 < occupied < 34688
    # 8,220 of the real returns sit within 1 m of the sensor (no-return echoes at the origin);
    # they land in the centre cells, which NuScenesDataset(min_distance=1.0) would drop
    assert float(out[0, 0, 255:257, 255:257].max()) == 1.0


def test_non_finite_and_outside_points_are_dropped():
    enc = PillarEncoder(BEVGrid((0, 2), (0, 2), (0, 2), 1.0), features=("occupancy",), z_bins=0)
    pts = torch.tensor([[0.5, 0.5, 1.0, 0], [float("nan"), 0.5, 1.0, 0], [5.0, 0.5, 1.0, 0], [1.5, 1.5, 9.0, 0]])
    out = enc(pts)
    assert out[0, 0, 0, 0] > 0 and int((out > 0).sum()) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(features=("speed",)), "features"),
    (dict(features=(), z_bins=0), "at least one"),
    (dict(z_bins=-1), "z_bins"),
    (dict(point_fields=("x", "y", "z")), "intensity"),
    (dict(point_fields=("y", "x", "z", "intensity")), "start with x, y, z"),
    (dict(grid="0.2"), "BEVGrid"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PillarEncoder(**kwargs)


def test_grid_checks_and_roundtrip():
    with pytest.raises(ValueError, match="x_range"):
        BEVGrid((1, 1))
    with pytest.raises(ValueError, match="resolution"):
        BEVGrid(resolution=0)
    grid = BEVGrid((-10, 10), (-5, 5), (-3, 1), 0.25)
    assert grid.shape == (40, 80)
    xy = np.array([[1.3, -2.2]])
    np.testing.assert_allclose(grid.cell_to_world(grid.world_to_cell(xy)), xy)
    assert BEVGrid(**{k: tuple(v) if isinstance(v, list) else v for k, v in grid.to_dict().items()}) == grid
    with pytest.raises(ValueError, match="shape"):
        PillarEncoder(grid)(torch.zeros(3, 5))

"""Synthetic lesions (registered as ``medical.lesions``) with domain randomisation.

Each sample is a smooth "tissue" background (a random low-frequency field) with a few
elliptical lesions of random size, count and contrast (brighter or darker than the tissue),
blurred edges and Gaussian noise, in the same format as :class:`~vlsdk_medical.dataset.LesionSliceDataset`:
``{"image": (C, *spatial) float32, "label": (1, *spatial) float32 in {0, 1}}``. All lesions of
a sample are drawn at once (one broadcast over lesions x voxels; no Python loop over voxels).

Example:
    >>> synth = LesionSynthesizer(size=(64, 64))
    >>> s = synth(0)
    >>> s["image"].shape, s["label"].shape
    (torch.Size([1, 64, 64]), torch.Size([1, 64, 64]))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LesionSynthesizer"]


def _pair(name: str, value: Sequence[float], lo: float = 0.0) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair, got {value!r}") from None
    if not lo <= a <= b:
        raise ValueError(f"{name} must satisfy {lo} <= min <= max, got {value!r}")
    return a, b


class LesionSynthesizer:
    """Make image/mask pairs with random lesions from a seed.

    Args:
        size: spatial size, 2 or 3 ints (``(H, W)`` or ``(D, H, W)``).
        channels: image channels (each gets its own contrast, like MRI sequences).
        count: ``(min, max)`` lesions per sample (0 allowed).
        radius: ``(min, max)`` lesion semi-axis in voxels.
        contrast: ``(min, max)`` absolute lesion contrast against the tissue (sign random per
            lesion and channel; small values make low-contrast lesions).
        noise: ``(min, max)`` standard deviation of the Gaussian noise.
        blur: ``(min, max)`` edge softness of the lesions in voxels.

    Raises:
        ValueError: bad sizes or ranges.
    """

    def __init__(self, size: Sequence[int] = (128, 128), *, channels: int = 1,
                 count: Sequence[int] = (1, 4), radius: Sequence[float] = (3.0, 12.0),
                 contrast: Sequence[float] = (0.15, 0.8), noise: Sequence[float] = (0.0, 0.2),
                 blur: Sequence[float] = (0.5, 2.0)) -> None:
        self.size = tuple(int(s) for s in size)
        if len(self.size) not in (2, 3) or min(self.size) < 4:
            raise ValueError(f"size must be 2 or 3 ints >= 4, got {size!r}")
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = int(channels)
        c0, c1 = _pair("count", count)
        if c0 != int(c0) or c1 != int(c1):
            raise ValueError(f"count must be integers, got {count!r}")
        self.count = (int(c0), int(c1))
        self.radius = _pair("radius", radius, lo=0.5)
        self.contrast = _pair("contrast", contrast)
        self.noise = _pair("noise", noise)
        self.blur = _pair("blur", blur, lo=1e-3)

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return len(self.size)

    def __call__(self, seed: int) -> dict[str, torch.Tensor]:
        """The sample for ``seed`` (the same seed gives the same sample).

        Args:
            seed: an int >= 0.
        """
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        nd, shape = self.spatial_dims, self.size
        # tissue: low-frequency random field, upsampled
        coarse = torch.from_numpy(rng.normal(0.0, 0.3, (1, self.channels) + (4,) * nd).astype(np.float32))
        mode = "bilinear" if nd == 2 else "trilinear"
        tissue = F.interpolate(coarse, size=shape, mode=mode, align_corners=False)[0]
        grids = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in shape), indexing="ij")
        coords = torch.stack(grids, -1)  # (*shape, nd)
        n = int(rng.integers(self.count[0], self.count[1] + 1))
        label = torch.zeros((1,) + shape)
        image = tissue.clone()
        if n:
            r0, r1 = self.radius
            centres = torch.from_numpy(rng.uniform(r1, np.array(shape) - r1, (n, nd)).astype(np.float32))
            radii = torch.from_numpy(rng.uniform(r0, r1, (n, nd)).astype(np.float32))
            q, _ = torch.linalg.qr(torch.from_numpy(rng.normal(size=(n, nd, nd)).astype(np.float32)))
            rel = coords.reshape(1, -1, nd) - centres[:, None]  # (n, V, nd)
            local = torch.einsum("nvd,nde->nve", rel, q) / radii[:, None]  # rotate, scale to unit sphere
            dist = local.norm(dim=-1)  # (n, V): 1 on the lesion boundary
            softness = float(rng.uniform(*self.blur)) / radii.mean(1, keepdim=True)
            profile = torch.sigmoid((1.0 - dist) / softness)  # soft lesion, ~1 inside
            sign = torch.from_numpy(rng.choice([-1.0, 1.0], (n, self.channels)).astype(np.float32))
            amp = torch.from_numpy(rng.uniform(*self.contrast, (n, self.channels)).astype(np.float32)) * sign
            image = image + (amp.T @ profile).reshape((self.channels,) + shape)
            label = (dist < 1.0).any(0).reshape((1,) + shape).float()
        sigma = float(rng.uniform(*self.noise))
        image = image + torch.from_numpy(rng.normal(0.0, sigma, image.shape).astype(np.float32))
        return {"image": image.float(), "label": label}

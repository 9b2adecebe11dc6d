"""``Int16GaussNoise``: albumentations' ``GaussNoise`` for uint8 images without float temporaries.

Imports albumentations at module level: import this module lazily (``build_transforms`` does).

``A.GaussNoise`` (albumentations 2.0.x) builds its noise map as a float64 array of the image's
shape (``np.zeros`` + ``cv2.randn``), copies it to float32, truncates it and adds it in float32
before clipping back to uint8: for a 640 x 640 board with its template that is ~20 MB of fresh
temporaries per call. Called in a loop on one 640 x 640 x 2 image it takes ~10 ms, most of it page
faults on those temporaries rather than random numbers; inside the whole augmentation pipeline,
where the allocator reuses more of that memory, much less (``benchmarks/data_loading.py``).
Its own speed option, ``noise_scale_factor < 1``, draws the noise at a lower resolution and
upsamples it bilinearly: faster, but the noise is then spatially correlated (neighbour
correlation ~0.5 at 0.75, ~0.75 at 0.5) and its per-pixel standard deviation drops to ~60 % of
the requested one, so the augmentation is no longer the same. ``per_channel=False`` would add the
same noise to the board and its template, where template differencing cancels it.

:class:`Int16GaussNoise` keeps the augmentation and its parameters (same ``std_range`` /
``mean_range`` fractions of 255, one sigma and mean drawn per call, independent noise per pixel
and per channel) and draws it with ``cv2.randn`` straight into an int16 array that ``cv2.add``
adds to the uint8 image with saturation (~2 ms at 640 x 640 x 2, in a loop or not). The noise is
rounded to whole grey levels where ``GaussNoise`` truncates it toward zero, so its standard
deviation is the requested one rather than ~5 % below it. Other dtypes fall back to ``GaussNoise``.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

__all__ = ["Int16GaussNoise"]


class Int16GaussNoise(A.GaussNoise):
    """Per-pixel Gaussian noise for uint8 images, drawn as int16 and added with saturation.

    Args:
        std_range: noise standard deviation as a fraction of 255, drawn uniformly per call.
        mean_range: noise mean as a fraction of 255, drawn uniformly per call.
        per_channel: independent noise per channel (``False``: one noise map for all channels).
        noise_scale_factor: as in ``A.GaussNoise``; only ``1`` (per-pixel noise) takes the int16
            path, anything else is ``A.GaussNoise``'s own.
        p: probability of applying the transform.

    Example:
        >>> t = Int16GaussNoise(std_range=(0.03, 0.03), p=1.0)
        >>> t.set_random_seed(0)
        >>> out = t(image=np.full((64, 64, 2), 128, np.uint8))["image"]
        >>> out.dtype, out.shape, 5 < float(out.std()) < 10
        (dtype('uint8'), (64, 64, 2), True)
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw sigma and mean (as ``GaussNoise`` does) and an int16 noise map of the image's shape."""
        image = data["image"] if "image" in data else data["images"][0]
        if image.dtype != np.uint8 or self.noise_scale_factor != 1:
            return super().get_params_dependent_on_data(params, data)
        sigma = self.py_random.uniform(*self.std_range) * 255
        mean = self.py_random.uniform(*self.mean_range) * 255
        # cv2.randn draws from OpenCV's global generator: seed it from ours (as GaussNoise does), so
        # a seeded Compose stays reproducible
        cv2.setRNGSeed(int(self.random_generator.integers(0, 2**31 - 1)))
        channels = image.shape[2] if image.ndim == 3 and self.per_channel else 1
        noise = np.empty(image.shape[:2] + ((channels,) if image.ndim == 3 else ()), np.int16)
        cv2.randn(noise, (mean,) * channels, (sigma,) * channels)  # rounded, saturated to int16
        if image.ndim == 3 and channels != image.shape[2]:
            noise = np.ascontiguousarray(np.broadcast_to(noise, image.shape))
        return {"noise_map": noise}

    def apply(self, img: np.ndarray, noise_map: np.ndarray, **params: Any) -> np.ndarray:
        """``img + noise_map`` saturated to uint8 (float noise maps: ``GaussNoise.apply``)."""
        if noise_map.dtype != np.int16:
            return super().apply(img, noise_map, **params)
        out = cv2.add(img, noise_map, dtype=cv2.CV_8U)
        return out.reshape(img.shape)  # OpenCV drops a trailing channel axis of 1

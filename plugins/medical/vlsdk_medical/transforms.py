"""The medical transform pipeline (registered as ``medical.default``): MONAI dictionary transforms.

Samples are dicts with ``"image"`` ``(C, *spatial)`` float and ``"label"`` ``(1, *spatial)``
(MONAI's channel-first convention). Training adds padding to the crop size, crops balanced
between lesion and background (``RandCropByPosNegLabeld``), flips along every spatial axis and a
random affine (rotation, scaling); evaluation only scales intensities, so full slices/volumes go
to sliding-window inference. The pipeline is deterministic once seeded
(:func:`seed_transforms` or ``seed=``).

Example:
    >>> t = default_transforms(spatial_dims=2, roi_size=(64, 64), seed=0)
    >>> out = t({"image": torch.rand(1, 96, 80), "label": torch.zeros(1, 96, 80)})
    >>> out[0]["image"].shape
    torch.Size([1, 64, 64])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from vlsdk_medical.dicom import window_bounds

if TYPE_CHECKING:
    from monai.transforms import Compose

__all__ = ["INTENSITY_MODES", "default_transforms", "seed_transforms"]

#: ``"none"`` (data already normalised, e.g. BraTS z-scores), ``"zscore"`` (per channel, over
#: non-zero voxels), ``"window"`` (clip HU to a window, scale to [0, 1]), ``"minmax"`` (percentiles).
INTENSITY_MODES = ("none", "zscore", "window", "minmax")


def _intensity(mode: str, window: str | tuple[float, float] | None, keys: str) -> list[Callable[..., Any]]:
    from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged, ScaleIntensityRangePercentilesd

    if mode == "none":
        return []
    if mode == "zscore":
        return [NormalizeIntensityd(keys=keys, nonzero=True, channel_wise=True)]
    if mode == "window":
        center, width = window_bounds(window if window is not None else "soft_tissue")
        return [ScaleIntensityRanged(keys=keys, a_min=center - width / 2, a_max=center + width / 2,
                                     b_min=0.0, b_max=1.0, clip=True)]
    return [ScaleIntensityRangePercentilesd(keys=keys, lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True,
                                            channel_wise=True)]


def default_transforms(*, train: bool = True, spatial_dims: int = 2, roi_size: Sequence[int] | int = 128,
                       intensity: str = "none", window: str | tuple[float, float] | None = None,
                       pos: float = 1.0, neg: float = 1.0, num_samples: int = 1, flip_prob: float = 0.5,
                       affine_prob: float = 0.3, rotate_deg: float = 15.0, scale: float = 0.1,
                       intensity_prob: float = 0.0, intensity_range: float = 0.1,
                       gamma: tuple[float, float] | None = None,
                       image_key: str = "image", label_key: str = "label", seed: int | None = None) -> Compose:
    """Build the domain's MONAI pipeline for lesion segmentation.

    Args:
        train: add the random spatial transforms (crop, flips, affine); ``False`` keeps only the
            intensity step.
        spatial_dims: 2 for slices, 3 for volumes.
        roi_size: crop size (an int is used for every axis).
        intensity: one of :data:`INTENSITY_MODES`.
        window: for ``intensity="window"``: a preset name (``"soft_tissue"``, ``"lung"``,
            ``"bone"``...) or ``(center, width)`` in HU.
        pos: weight of crops centred on a lesion voxel.
        neg: weight of crops centred on a background voxel.
        num_samples: crops per input (the pipeline then returns a list of that many samples).
        flip_prob: probability of a flip along each spatial axis.
        affine_prob: probability of the random affine.
        rotate_deg: rotation range (+-, degrees; in-plane for 2D, about each axis for 3D).
        scale: scaling range (+-, fraction).
        intensity_prob: probability of a random intensity scale, of a random shift (contrast
            randomisation for few training cases) and of the gamma.
        intensity_range: the scale factor is drawn from ``1 +- intensity_range`` and the shift
            from ``+- intensity_range`` (in the image's units).
        gamma: a random gamma (contrast) drawn from this range with ``intensity_prob``, image
            mean and standard deviation kept (MONAI ``RandAdjustContrastd``); ``None``: no gamma.
        image_key: the image's key.
        label_key: the label's key.
        seed: seed the random transforms (see :func:`seed_transforms`).

    Returns:
        A ``monai.transforms.Compose``. With ``train=True`` it returns a list of
        ``num_samples`` dicts (``RandCropByPosNegLabeld``); otherwise one dict.

    Raises:
        ValueError: bad dimensions, sizes, probabilities or intensity mode.
    """
    import math

    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    size = (roi_size,) * spatial_dims if isinstance(roi_size, int) else tuple(int(s) for s in roi_size)
    if len(size) != spatial_dims or min(size) < 1:
        raise ValueError(f"roi_size must be {spatial_dims} positive ints, got {roi_size!r}")
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    if window is not None and intensity != "window":
        raise ValueError(f"window={window!r} needs intensity='window' (got {intensity!r})")
    for name, p in (("flip_prob", flip_prob), ("affine_prob", affine_prob), ("intensity_prob", intensity_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if pos < 0 or neg < 0 or pos + neg <= 0:
        raise ValueError(f"pos and neg must be >= 0 and not both 0, got pos={pos}, neg={neg}")
    if intensity_range < 0 or (gamma is not None and not 0 < gamma[0] <= gamma[1]):
        raise ValueError(f"need intensity_range >= 0 and 0 < gamma[0] <= gamma[1], got {intensity_range}, {gamma}")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    keys = [image_key, label_key]
    steps: list[Callable[..., Any]] = list(_intensity(intensity, window, image_key))
    if train:
        rot = math.radians(rotate_deg)
        steps += [
            SpatialPadd(keys=keys, spatial_size=size),
            RandCropByPosNegLabeld(keys=keys, label_key=label_key, spatial_size=size, pos=pos, neg=neg,
                                   num_samples=int(num_samples)),
            *(RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in range(spatial_dims)),
            RandAffined(keys=keys, prob=affine_prob, rotate_range=(rot,) if spatial_dims == 2 else (rot,) * 3,
                        scale_range=(scale,) * spatial_dims, mode=("bilinear", "nearest"), padding_mode="zeros"),
        ]
        if intensity_prob > 0:
            steps += [RandScaleIntensityd(keys=image_key, factors=intensity_range, prob=intensity_prob),
                      RandShiftIntensityd(keys=image_key, offsets=intensity_range, prob=intensity_prob)]
            if gamma is not None:
                steps.append(RandAdjustContrastd(keys=image_key, gamma=tuple(gamma), prob=intensity_prob,
                                                 retain_stats=True))
    compose = Compose(steps)
    if seed is not None:
        seed_transforms(compose, seed)
    return compose


def seed_transforms(transform: Any, seed: int) -> Any:
    """Seed every random MONAI transform inside ``transform`` (in place) and return it.

    Args:
        transform: a MONAI ``Compose`` or ``Randomizable`` transform (others are returned as is).
        seed: the seed.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed)
    return transform

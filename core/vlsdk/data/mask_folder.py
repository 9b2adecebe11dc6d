"""Semantic segmentation from two folders: images and PNG label maps paired by file stem.

Layout (names configurable)::

    <root>/images/<stem>.<jpg|png|...>     the image
    <root>/masks/<stem>.png                its label map: pixel value = class id (0 background)
    <root>/classes.txt                     optional: one class name a line, in id order

Masks are single-channel (``L``, ``P``, ``I``, ``I;16`` or ``F`` with whole values); an RGB mask
is refused, since its colours are not class ids. Errors name the file: an image without a mask (or
a mask without an image), a mask of another size than its image, a label value ``>=`` the number
of classes, a non-finite or fractional value in a float mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlsdk.data.samples import DataError, OnError, SkipLog, read_image

__all__ = ["IMAGE_EXTENSIONS", "MaskFolderDataset", "read_mask"]

#: File name endings read as images or masks (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_MASK_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F"})


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label-map image as ``(H, W)`` ``int64`` class ids.

    Args:
        path: a single-channel image (PNG ``L``/``P``/16-bit, or a float TIFF of whole numbers).

    Raises:
        DataError: the file is missing or unreadable, has colour channels, or holds negative,
            fractional or non-finite values (their count is given).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "mask file does not exist")
    try:
        with Image.open(path) as image:
            if image.mode not in _MASK_MODES:
                raise DataError(path, f"a mask must be a single-channel label map (mode L, P, I;16, I or F), "
                                      f"got a {image.mode} image; its values are the class ids")
            values = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(path, f"cannot decode mask (corrupt or not an image): {exc}") from None
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(path, f"{int(bad.sum())} non-finite value(s) in the mask; expected class ids")
        if (values != np.round(values)).any():
            raise DataError(path, f"{int((values != np.round(values)).sum())} fractional value(s) in the mask; "
                                  "expected whole class ids")
    mask = values.astype(np.int64)
    if mask.size and mask.min() < 0:
        raise DataError(path, f"{int((mask < 0).sum())} negative value(s) in the mask; expected class ids >= 0")
    return mask


class MaskFolderDataset:
    """Images and PNG label maps paired by stem, as segmentation samples.

    Each sample is ``{"image": (H, W, channels) uint8, "mask": (H, W) int64, "path", "mask_path",
    "image_id", "index", "size"}`` (``image_id`` is the stem).

    Args:
        root: the dataset folder.
        images: image folder, relative to ``root``.
        masks: mask folder, relative to ``root``.
        classes: class names in id order; ``None`` reads ``<root>/classes.txt`` (one name a line).
        channels: 1 (grayscale) or 3 (RGB).
        transform: ``transform(sample) -> sample`` (e.g. :class:`vlsdk.data.transforms.Resize`).
        on_error: ``"raise"`` a :class:`DataError`, or ``"skip"`` bad pairs (counted in
            :attr:`skipped`, one warning); with ``"skip"`` every pair is read when the dataset is
            built, so size and label errors are found then rather than mid-epoch.

    Raises:
        ValueError: a folder is missing, no classes are given and there is no ``classes.txt``,
            or ``channels`` is not 1 or 3.
        DataError: with ``on_error="raise"``, an image without its mask or a mask without its image.

    Example:
        >>> ds = MaskFolderDataset("data/cracks", classes=["background", "crack"])  # doctest: +SKIP
        >>> ds[0]["mask"].dtype  # doctest: +SKIP
        dtype('int64')
    """

    def __init__(self, root: str | Path, images: str | Path = "images", masks: str | Path = "masks", *,
                 classes: Sequence[str] | None = None, channels: int = 1,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 on_error: OnError = "raise") -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.root = Path(root)
        self.image_dir, self.mask_dir = self.root / images, self.root / masks
        for folder, what in ((self.image_dir, "images"), (self.mask_dir, "masks")):
            if not folder.is_dir():
                raise ValueError(f"{what} folder {str(folder)!r} is not a folder")
        self.classes: tuple[str, ...] = self._classes(classes)
        self.channels, self.transform = channels, transform
        log = SkipLog(on_error, f"mask folder {self.root}")
        image_of, mask_of = self._by_stem(self.image_dir), self._by_stem(self.mask_dir)
        for stem in sorted(image_of.keys() ^ mask_of.keys()):
            if stem in image_of:
                log.handle(DataError(image_of[stem], f"no mask {stem}.* in {self.mask_dir}"))
            else:
                log.handle(DataError(mask_of[stem], f"no image {stem}.* in {self.image_dir}"))
        pairs = [(image_of[s], mask_of[s]) for s in sorted(image_of.keys() & mask_of.keys())]
        if on_error == "skip":
            good = []
            for pair in pairs:
                try:
                    self._read(*pair)
                    good.append(pair)
                except DataError as exc:
                    log.handle(exc)
            pairs = good
        self.pairs: list[tuple[Path, Path]] = pairs
        self.skipped = log.skipped
        log.warn()

    def _classes(self, classes: Sequence[str] | None) -> tuple[str, ...]:
        if classes is None:
            listing = self.root / "classes.txt"
            if not listing.is_file():
                raise ValueError(f"no classes given and no {listing} (one class name a line, id order); "
                                 "pass classes=[...]")
            classes = [c.strip() for c in listing.read_text().splitlines() if c.strip()]
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or len(classes) < 1:
            raise ValueError(f"classes must be a list of class names, got {classes!r}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be unique, got {list(classes)}")
        return tuple(classes)

    @staticmethod
    def _by_stem(folder: Path) -> dict[str, Path]:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        out: dict[str, Path] = {}
        for p in files:
            if p.stem in out:
                raise DataError(p, f"two files with the stem {p.stem!r} in {folder} ({out[p.stem].name} and "
                                   f"{p.name}); a stem must name one image or mask")
            out[p.stem] = p
        return out

    def _read(self, image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
        image, mask = read_image(image_path, self.channels), read_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} "
                                       f"is {image.shape[1]}x{image.shape[0]}")
        if mask.size and mask.max() >= len(self.classes):
            over = np.unique(mask[mask >= len(self.classes)])
            raise DataError(mask_path, f"label value(s) {over.tolist()} >= the number of classes "
                                       f"{len(self.classes)} {list(self.classes)}")
        return image, mask

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample at ``index``.

        Raises:
            DataError: an unreadable file, a size mismatch or a label value out of range.
        """
        image_path, mask_path = self.pairs[index]
        image, mask = self._read(image_path, mask_path)
        sample = {"image": image, "mask": mask, "path": str(image_path), "mask_path": str(mask_path),
                  "image_id": image_path.stem, "index": index, "size": image.shape[:2]}
        return self.transform(sample) if self.transform is not None else sample

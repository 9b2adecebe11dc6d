"""A folder of board images for inference (no annotations)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlsdk_industrial.samples import DataError, OnError, SkipLog, empty_targets, read_image

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder"]

#: File name endings read as images (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class ImageFolder:
    """Every image under a folder, sorted by path, as samples with empty targets.

    Args:
        root: the folder.
        channels: 1 (grayscale) or 3 (RGB).
        recursive: include subfolders.
        extensions: file endings to read.
        exclude: name suffixes to leave out before the extension, e.g. ``("_temp",)`` for DeepPCB
            templates (those are counted in :attr:`num_excluded`).
        transform: ``transform(sample) -> sample``.
        on_error: ``"raise"`` or ``"skip"`` unreadable images; with ``"skip"`` every image is
            decoded when the dataset is built (counted in :attr:`skipped`, one warning).
    """

    def __init__(self, root: str | Path, *, channels: int = 1, recursive: bool = True,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, exclude: Sequence[str] = (),
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 on_error: OnError = "raise") -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"image folder {str(root)!r} is not a folder")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        exts = tuple(e.lower() for e in extensions)
        files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir())
                       if p.is_file() and p.suffix.lower() in exts)
        kept = [p for p in files if not any(p.stem.endswith(s) for s in exclude)]
        self.num_excluded = len(files) - len(kept)
        self.root, self.channels, self.transform = root, channels, transform
        log = SkipLog(on_error, f"image folder {root}")
        if on_error == "skip":
            good = []
            for p in kept:
                try:
                    read_image(p, channels)
                    good.append(p)
                except DataError as exc:
                    log.handle(exc)
            kept = good
        self.files: list[Path] = kept
        self.skipped = log.skipped
        log.warn()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image", "boxes" (0, 4), "labels" (0,), "path", "index"}``."""
        path = self.files[index]
        boxes, labels = empty_targets()
        sample = {"image": read_image(path, self.channels), "boxes": boxes, "labels": labels, "path": str(path),
                  "index": index}
        return self.transform(sample) if self.transform is not None else sample

"""A folder of board images for inference (no annotations)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
        template: ``(board_suffix, template_suffix)``, e.g. ``("_test", "_temp")``: read only boards
            whose name ends with ``board_suffix`` and stack the file with ``template_suffix`` instead
            as a second channel (a missing template or one of another size is a :class:`DataError`).
        transform: ``transform(sample) -> sample``.
        on_error: ``"raise"`` or ``"skip"`` unreadable images; with ``"skip"`` every image is
            decoded when the dataset is built (counted in :attr:`skipped`, one warning).
    """

    def __init__(self, root: str | Path, *, channels: int = 1, recursive: bool = True,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, exclude: Sequence[str] = (),
                 template: tuple[str, str] | None = None,
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
        if template is not None:
            if channels != 1 or len(template) != 2 or not all(isinstance(t, str) and t for t in template):
                raise ValueError(f"template must be (board_suffix, template_suffix) with channels=1, got {template!r}")
            exclude = (*exclude, template[1])
        kept = [p for p in files if not any(p.stem.endswith(s) for s in exclude)]
        if template is not None:
            kept = [p for p in kept if p.stem.endswith(template[0])]
        self.template = template
        self.num_excluded = len(files) - len(kept)
        self.root, self.channels, self.transform = root, channels, transform
        log = SkipLog(on_error, f"image folder {root}")
        if on_error == "skip":
            good = []
            for p in kept:
                try:
                    self._read(p)
                    good.append(p)
                except DataError as exc:
                    log.handle(exc)
            kept = good
        self.files: list[Path] = kept
        self.skipped = log.skipped
        log.warn()

    def __len__(self) -> int:
        return len(self.files)

    def template_path(self, path: Path) -> Path:
        """The template file of board ``path`` (with ``template`` set)."""
        if self.template is None:
            raise ValueError("this folder was built without template=(board_suffix, template_suffix)")
        board, temp = self.template
        return path.with_name(path.stem[: -len(board)] + temp + path.suffix)

    def _read(self, path: Path) -> np.ndarray:
        image = read_image(path, self.channels)
        if self.template is None:
            return image
        temp = read_image(self.template_path(path))
        if temp.shape != image.shape:
            raise DataError(self.template_path(path), f"template is {temp.shape[1]}x{temp.shape[0]} but its board "
                                                      f"{path.name} is {image.shape[1]}x{image.shape[0]}")
        return np.concatenate((image, temp), axis=-1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image", "boxes" (0, 4), "labels" (0,), "path", "index", "size"}`` (``size``: ``(H, W)`` as read)."""
        path = self.files[index]
        boxes, labels = empty_targets()
        image = self._read(path)
        sample = {"image": image, "boxes": boxes, "labels": labels, "path": str(path), "index": index,
                  "size": image.shape[:2]}
        return self.transform(sample) if self.transform is not None else sample

"""A tiny synthetic dataset, made on the fly from a seed (no files, no downloads)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["CheckerboardDataset"]


class CheckerboardDataset(Dataset):
    """Noisy checkerboards; the label says whether the top-left square is bright (1) or dark (0).

    Sample ``i`` is the same on every call (seeded by ``seed`` and ``i``), so it can be used in
    tests and with several dataloader workers.

    Args:
        length: number of samples.
        image_size: ``(H, W)`` or one int.
        channels: image channels.
        square: side of one checkerboard square in pixels.
        noise: standard deviation of the added Gaussian noise.
        seed: base seed.

    Example:
        >>> ds = CheckerboardDataset(length=4, image_size=32)
        >>> sample = ds[0]
        >>> sample["image"].shape, sample["label"] in (0, 1)
        (torch.Size([3, 32, 32]), True)
    """

    def __init__(
        self,
        length: int = 64,
        image_size: int | tuple[int, int] = 64,
        channels: int = 3,
        square: int = 8,
        noise: float = 0.1,
        seed: int = 0,
    ) -> None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if height < 1 or width < 1 or channels < 1 or square < 1:
            raise ValueError(f"image_size, channels and square must be >= 1, got "
                             f"{(height, width)}, {channels}, {square}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.length, self.size, self.channels = length, (height, width), channels
        self.square, self.noise, self.seed = square, noise, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        index %= self.length
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(0, 2, (), generator=gen))
        height, width = self.size
        ys = torch.arange(height).unsqueeze(1) // self.square
        xs = torch.arange(width).unsqueeze(0) // self.square
        board = ((ys + xs + label) % 2).float()              # top-left square = label
        image = board.expand(self.channels, height, width)
        image = image + self.noise * torch.randn(self.channels, height, width, generator=gen)
        return {"image": image, "label": label}

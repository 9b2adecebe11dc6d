"""Mix real and synthetic samples at a fixed ratio (e.g. 3 real : 1 synthetic), for any task."""

from __future__ import annotations

import math
from typing import Any, Protocol

__all__ = ["MixedDataset"]


class _Dataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class MixedDataset:
    """Every real sample once plus ``ceil(len(real) / ratio)`` synthetic ones, interleaved.

    Index ``i`` maps to blocks of ``ratio`` real samples followed by one synthetic sample (for a
    whole-number ratio); synthetic samples cycle when the synthetic dataset is shorter. Each
    sample gets ``"source": "real" | "synthetic"``.

    Args:
        real: the real dataset.
        synthetic: the synthetic dataset (e.g. :meth:`BoardSynthesizer.dataset`).
        ratio: real samples per synthetic sample (``3.0`` = 3:1); ``float("inf")`` = real only.

    Example:
        >>> mixed = MixedDataset([{"i": 0}] * 6, [{"i": 1}] * 10, ratio=3)
        >>> len(mixed), [mixed[i]["source"] for i in range(4)]
        (8, ['real', 'real', 'real', 'synthetic'])
    """

    def __init__(self, real: _Dataset, synthetic: _Dataset, ratio: float = 3.0) -> None:
        if not ratio > 0:
            raise ValueError(f"ratio (real per synthetic) must be > 0, got {ratio!r}")
        if len(real) == 0:
            raise ValueError("the real dataset is empty")
        self.real, self.synthetic, self.ratio = real, synthetic, float(ratio)
        self.num_synthetic = 0 if math.isinf(ratio) else math.ceil(len(real) / ratio)
        if self.num_synthetic and len(synthetic) == 0:
            raise ValueError("the synthetic dataset is empty")
        # position of each synthetic sample in the mixed order: after every ``ratio`` real ones
        n = len(real) + self.num_synthetic
        self._synthetic_at = {min(n - 1, math.floor((k + 1) * ratio) + k): k for k in range(self.num_synthetic)}
        self._order: list[tuple[str, int]] = []
        r = 0
        for i in range(n):
            if i in self._synthetic_at:
                self._order.append(("synthetic", self._synthetic_at[i]))
            else:
                self._order.append(("real", r))
                r += 1

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, k = self._order[index]
        if source == "real":
            sample = dict(self.real[k])
        else:
            sample = dict(self.synthetic[k % len(self.synthetic)])
        sample["source"] = source
        return sample

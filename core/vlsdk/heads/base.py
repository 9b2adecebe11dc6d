"""The task-head contract (:class:`Head`) and the conv block the core heads are built from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from vlsdk.models.features import EncoderFeatures

__all__ = ["Head", "ConvNormAct", "resolve_strides"]


def _num_groups(channels: int) -> int:
    """GroupNorm groups: as many as possible (at most 32) with at least 4 channels each."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


class ConvNormAct(nn.Sequential):
    """``Conv2d -> GroupNorm -> SiLU``, "same" padding; GroupNorm so tiny batches train fine.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        stride: convolution stride (output size ``ceil(size / stride)``).

    Example:
        >>> ConvNormAct(8, 16, 3, stride=2)(torch.zeros(1, 8, 15, 10)).shape
        torch.Size([1, 16, 8, 5])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        if in_channels < 1 or out_channels < 1 or stride < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvNormAct needs positive channels and stride and an odd kernel_size, got "
                             f"in={in_channels}, out={out_channels}, kernel_size={kernel_size}, stride={stride}")
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.GroupNorm(_num_groups(out_channels), out_channels),
            nn.SiLU(inplace=True),
        )


def resolve_strides(channels: Mapping[int, int], strides: Sequence[int] | None,
                    default: Sequence[int] | None = None) -> tuple[int, ...]:
    """The sorted pyramid strides a head uses, checked against the encoder's ``channels``.

    Args:
        channels: stride -> channels of the encoder's pyramid.
        strides: the strides asked for; ``None`` takes ``default`` (or every level when ``default``
            is ``None``), keeping those the pyramid has.
        default: preferred strides when ``strides`` is ``None``.

    Raises:
        ValueError: a requested stride is missing, or none of the defaults exists.

    Example:
        >>> resolve_strides({4: 64, 8: 128, 16: 384}, None, default=(8, 16, 32))
        (8, 16)
    """
    available = tuple(sorted(channels))
    if strides is None:
        chosen = available if default is None else tuple(s for s in default if s in channels)
        if not chosen:
            raise ValueError(f"expected the pyramid to have one of the strides {tuple(default or ())}, "
                             f"available strides: {available}")
    else:
        chosen = tuple(int(s) for s in strides)
        missing = [s for s in chosen if s not in channels]
        if not chosen or missing or len(set(chosen)) != len(chosen):
            raise ValueError(f"expected distinct strides among the available strides {available}, got {tuple(strides)}"
                             + (f" (missing: {missing})" if missing else ""))
    return tuple(sorted(chosen))


class Head(nn.Module):
    """Base class of task heads: ``forward`` -> typed output, ``loss`` and ``decode`` on it.

    Subclasses set the class attribute :attr:`task`, and take ``(channels, **options)`` in their
    constructor, where ``channels`` maps each stride of the encoder's feature pyramid to its
    channel count (``HybridEncoder.channels``), so a registry can build any head the same way.

    - ``forward(features: EncoderFeatures)`` returns the head's output dataclass (raw
      predictions, differentiable).
    - ``loss(output, targets)`` returns a dict of scalar tensors: ``"loss"`` is the total to
      back-propagate, the other keys are its components, for logging.
    - ``decode(output, **kwargs)`` turns an output into user-facing predictions (no gradients).

    Args:
        channels: stride -> channels of the encoder's feature pyramid.

    Example:
        >>> class Mean(Head):
        ...     task = "mean"
        ...     def forward(self, features):
        ...         return features.pyramid[8].mean()
        >>> Mean({8: 16}).channels
        {8: 16}
    """

    #: The task this head solves (its registry name for the core heads).
    task: ClassVar[str] = ""

    def __init__(self, channels: Mapping[int, int]) -> None:
        if not isinstance(channels, Mapping) or not channels:
            raise ValueError(f"expected channels as a non-empty mapping stride -> channels, got {channels!r}")
        bad = {s: c for s, c in channels.items() if int(s) < 1 or int(c) < 1}
        if bad:
            raise ValueError(f"expected positive strides and channel counts, got {bad}")
        super().__init__()
        #: stride -> channels of the pyramid the head was built for.
        self.channels: dict[int, int] = {int(s): int(c) for s, c in channels.items()}

    def forward(self, features: EncoderFeatures) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, output: Any, targets: Any) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Loss of ``output`` against ``targets``: ``{"loss": total, <component>: ...}``."""
        raise NotImplementedError

    def decode(self, output: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        """User-facing predictions from ``output``."""
        raise NotImplementedError

    def levels(self, features: EncoderFeatures, strides: Sequence[int]) -> list[torch.Tensor]:
        """The pyramid maps at ``strides``, checked against the channels the head was built for."""
        maps = []
        for s in strides:
            if s not in features.pyramid:
                raise ValueError(f"{type(self).__name__} expects pyramid stride {s}; the features have strides "
                                 f"{tuple(sorted(features.pyramid))}")
            f = features.pyramid[s]
            if f.dim() != 4 or f.shape[1] != self.channels[s]:
                raise ValueError(f"{type(self).__name__} expects a (B, {self.channels[s]}, h, w) map at stride {s}, "
                                 f"got {tuple(f.shape)}")
            maps.append(f)
        return maps

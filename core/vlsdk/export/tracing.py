"""Tracer warnings during an ONNX export: caught with the code line that raised them, never silenced.

The TorchScript exporter traces one example input. A ``torch.jit.TracerWarning`` ("Converting a
tensor to a Python boolean / integer", "Iterating over a tensor", ...) or a ``UserWarning`` from
``torch.onnx`` says that a value was frozen into the graph: the file may be right for the example
and wrong for any other input. :func:`capture_tracer_warnings` records each such warning with the
innermost frame outside torch (the line of model code that caused it); :func:`to_onnx
<vlsdk.export.onnx.to_onnx>` fails on any that :data:`KNOWN_TRACER_WARNINGS` does not list, unless
the caller passes ``allow_tracer_warnings=True``.

Tracer warnings raised inside torch's own modules (other than ``torch.jit``) are dropped, as
torch itself does (``TracerWarning.ignore_lib_warnings``): ``F.group_norm``'s batch-size check is
one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import linecache
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["KNOWN_TRACER_WARNINGS", "TracerIssue", "TracerWarningError", "capture_tracer_warnings", "unexpected"]

_TORCH_DIR = str(Path(torch.__file__).parent) + "/"
_VLSDK_DIR = str(Path(__file__).resolve().parents[1]) + "/"
_HERE = str(Path(__file__).resolve())

#: Tracer warnings of the core's own model (tiny/edge/small, detection, segmentation and depth
#: heads, the domain experts) that do not make the graph wrong at the exported image size. Each
#: entry is ``(file under core/vlsdk, the source line as written, the message's opening words,
#: fixed_size_only)``: all three must match, so an edit of that line, or a new warning elsewhere,
#: fails the export again until it is reviewed. ``fixed_size_only`` entries freeze a size read
#: from a shape; they hold only while the image size is fixed (``dynamic_size=False``). None of
#: these files is owned by the export code; each is a shape check or a size read, not a branch
#: on data values.
KNOWN_TRACER_WARNINGS: tuple[tuple[str, str, str, bool], ...] = (
    # the encoder's input check: channels are static; the batch and size are not branched on
    ("models/encoder.py", "if images.dim() != 4 or images.shape[1] != self.config.in_chans:",
     "Converting a tensor to a Python boolean", False),
    # DynamicMoE.forward's token-width check (the width is a constant of the weights)
    ("models/moe.py", "if dim != self.dim:", "Converting a tensor to a Python boolean", False),
    # Head.levels: the pyramid map's channel check (static channels)
    ("heads/base.py", "if f.dim() != 4 or f.shape[1] != self.channels[s]:",
     "Converting a tensor to a Python boolean", False),
    # DetectionHead's PAN neck: resize only when the grids differ, decided at the traced size
    ("heads/detection.py", "if down.shape[-2:] != td[i].shape[-2:]:", "Converting a tensor to a Python boolean",
     True),
    # DetectionOutput.level_sizes: Python ints of the grid sizes (the anchors are constants of the size)
    ("heads/detection.py", "sizes.append((int(h), int(w)))", "Converting a tensor to a Python integer", True),
)


class TracerWarningError(RuntimeError):
    """The export traced code that froze a value into the graph (see :func:`capture_tracer_warnings`).

    Attributes:
        issues: the unexpected warnings, each with its source line.
    """

    def __init__(self, message: str, issues: list[TracerIssue]) -> None:
        super().__init__(message)
        self.issues = issues


@dataclasses.dataclass(frozen=True)
class TracerIssue:
    """One tracer warning and where it came from.

    Attributes:
        category: the warning class name (``"TracerWarning"``, ``"UserWarning"``).
        message: the warning text.
        file: the innermost file outside torch on the stack when it was raised.
        line: line number in ``file``.
        code: that source line, stripped.
        count: how many times the same warning came from the same line.
    """

    category: str
    message: str
    file: str
    line: int
    code: str
    count: int = 1

    def describe(self) -> str:
        """``file:line: Category: message (code: ...)`` on one line, with the repeat count."""
        times = f" ({self.count}x)" if self.count > 1 else ""
        return f"{self.file}:{self.line}: {self.category}: {self.message.strip()} [code: {self.code}]{times}"

    def known(self, dynamic_size: bool) -> bool:
        """Whether :data:`KNOWN_TRACER_WARNINGS` lists this warning (for this kind of export)."""
        if not self.file.startswith(_VLSDK_DIR):
            return False
        relative = self.file[len(_VLSDK_DIR):]
        return any(relative == path and self.code == code and self.message.startswith(opening)
                   and not (fixed_only and dynamic_size)
                   for path, code, opening, fixed_only in KNOWN_TRACER_WARNINGS)


def _origin(stack: list[traceback.FrameSummary], fallback: tuple[str, int]) -> tuple[str, int]:
    """The innermost frame that is neither torch, the warnings machinery, nor this module."""
    for frame in reversed(stack):
        name = frame.filename
        if name.startswith(_TORCH_DIR) or name == _HERE or name == warnings.__file__:
            continue
        return name, int(frame.lineno or 0)
    return fallback


def _is_torch_internal(category: type[Warning], filename: str) -> bool:
    return (issubclass(category, torch.jit.TracerWarning) and filename.startswith(_TORCH_DIR)
            and not filename.startswith(_TORCH_DIR + "jit/"))


def _is_tracer_warning(category: type[Warning], filename: str) -> bool:
    if issubclass(category, torch.jit.TracerWarning):
        return True
    return issubclass(category, UserWarning) and filename.startswith(_TORCH_DIR + "onnx/")


@contextlib.contextmanager
def capture_tracer_warnings() -> Iterator[list[TracerIssue]]:
    """Record tracer warnings raised in the block (whatever the active warning filters say).

    Yields a list, filled when the block ends, of :class:`TracerIssue` merged by (message, line).
    Other warnings go on to the previous handler; the legacy-exporter deprecation notices that
    ``torch.onnx.export(..., dynamo=False)`` always emits are dropped.

    Example:
        >>> with capture_tracer_warnings() as issues:  # doctest: +SKIP
        ...     torch.onnx.export(module, (x,), "m.onnx", dynamo=False)
        >>> [i.describe() for i in issues]  # doctest: +SKIP
    """
    raw: list[tuple[str, str, str, int]] = []
    issues: list[TracerIssue] = []
    with warnings.catch_warnings():
        previous = warnings.showwarning
        warnings.simplefilter("always", torch.jit.TracerWarning)
        warnings.filterwarnings("always", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="The feature will be removed")

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
            if _is_torch_internal(category, str(filename)):
                return  # what torch's own filter does with these (TracerWarning.ignore_lib_warnings)
            if not _is_tracer_warning(category, str(filename)):
                previous(message, category, filename, lineno, file, line)
                return
            where = _origin(traceback.extract_stack(sys._getframe(1)), (str(filename), int(lineno)))
            raw.append((category.__name__, str(message), *where))

        warnings.showwarning = show
        try:
            yield issues
        finally:
            counts: dict[tuple[str, str, str, int], int] = {}
            for key in raw:
                counts[key] = counts.get(key, 0) + 1
            issues.extend(TracerIssue(cat, msg, file, line, linecache.getline(file, line).strip(), n)
                          for (cat, msg, file, line), n in counts.items())


def unexpected(issues: list[TracerIssue], dynamic_size: bool) -> list[TracerIssue]:
    """The issues that :data:`KNOWN_TRACER_WARNINGS` does not list."""
    return [i for i in issues if not i.known(dynamic_size)]

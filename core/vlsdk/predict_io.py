"""What plugins give ``vlsdk predict``: input readers for their file types, output writers for their heads.

A plugin registers an :class:`InputReader` (hook ``vlsdk_register_input_readers``) to turn a file
the core cannot read (a NIfTI volume, a LiDAR sweep) into model inputs, and an
:class:`OutputWriter` (hook ``vlsdk_register_output_writers``) to write one head's predictions
(a mask as NIfTI with the input's affine, 3D boxes over the BEV picture). ``vlsdk predict`` picks,
per file, the first registered reader (by name) whose suffix and ``applies`` match, else reads
it as an image; per head, the first writer for the head's task and the input's kind, else the
core's picture/JSON writers. Importing this module imports no torch.

Example::

    from vlsdk.plugins import hookimpl
    from vlsdk.predict_io import InputReader, OutputWriter, PredictInput

    @hookimpl
    def vlsdk_register_input_readers(register):
        register("acme.raw", InputReader(suffixes=(".raw",), read=read_raw, description="ACME sensor dumps"))

    @hookimpl
    def vlsdk_register_output_writers(register):
        register("acme.mask", OutputWriter(task="segmentation", write=write_mask, inputs=("acme.raw",)))

A reader that gets fewer channels from its file than the model expects calls :func:`fit_channels`
(an error naming the missing channels by meaning, unless the user passed ``--repeat-channels``),
and :func:`check_finite` for non-finite values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["PredictInput", "HeadPrediction", "InputReader", "OutputWriter", "IMAGE_KIND", "fit_channels",
           "check_finite", "repeating_channels"]

#: :attr:`PredictInput.kind` of inputs read by the core (PNG/JPEG/``.npy`` images).
IMAGE_KIND = "image"

#: Whether the running ``vlsdk predict`` was asked to copy a one-channel file into every channel.
_REPEAT_CHANNELS: ContextVar[bool] = ContextVar("vlsdk_repeat_channels", default=False)


@contextmanager
def repeating_channels(repeat: bool) -> Iterator[None]:
    """Within the block, :func:`fit_channels` (``repeat=None``) copies one channel into all when ``repeat``.

    ``predict_files(..., repeat_channels=True)`` (``vlsdk predict --repeat-channels``) reads its
    inputs inside ``repeating_channels(True)``, so plugin readers honour the option too.
    """
    token = _REPEAT_CHANNELS.set(bool(repeat))
    try:
        yield
    finally:
        _REPEAT_CHANNELS.reset(token)


def fit_channels(data: Any, path: Path, expected: Sequence[str], *, repeat: bool | None = None) -> Any:
    """Check that ``data`` (channels first, numpy or torch) has the channels the model expects.

    Args:
        data: ``(C, ...)`` values read from ``path``.
        path: the file, for the error.
        expected: the meaning of each channel the model expects (``model.metadata.channels(in_chans)``).
        repeat: copy a one-channel ``data`` into every expected channel instead of failing;
            ``None``: as the running ``vlsdk predict --repeat-channels`` says (default no).

    Returns:
        ``data``, or its one channel repeated ``len(expected)`` times.

    Raises:
        ValueError: another channel count, naming the missing channels by meaning, e.g.
            ``this model expects 2 channels (board, template); a.png has 1: missing 'template'``.
    """
    have, want = int(data.shape[0]), len(expected)
    if have == want:
        return data
    repeat = _REPEAT_CHANNELS.get() if repeat is None else repeat
    if have == 1 and repeat:
        return data[[0] * want]
    head = f"this model expects {want} channel{'s' * (want != 1)} ({', '.join(expected)}); {path} has {have}"
    if have > want:
        raise ValueError(head)
    missing = ", ".join(repr(c) for c in expected[have:])
    hint = (f" (pass --repeat-channels, or repeat_channels=True, to copy its one channel into all {want})"
            if have == 1 else "")
    raise ValueError(f"{head}: missing {missing}{hint}")


def check_finite(values: Any, path: Path, what: str = "values") -> None:
    """Raise when ``values`` (a torch tensor) holds NaN or inf, naming ``path`` and how many.

    Raises:
        ValueError: ``a.npy: 3 of 2304 values are non-finite (NaN or inf)``.
    """
    import torch

    bad = int((~torch.isfinite(values)).sum()) if values.is_floating_point() else 0
    if bad:
        raise ValueError(f"{path}: {bad} of {values.numel()} {what} are non-finite (NaN or inf); "
                         "vlsdk predict does not guess values for them: fix or mask the input")


@dataclass
class PredictInput:
    """One input file, made ready for the model by a reader.

    Attributes:
        path: the file.
        images: ``(B, C, H, W)`` what the model takes (``B`` > 1 for a volume cut into slices).
        kind: the reader's name (``"image"`` for the core reader), matched by writers' ``inputs``.
        meta: what the reader learned that writers need (an affine, the raw points, ...).
    """

    path: Path
    images: torch.Tensor
    kind: str = IMAGE_KIND
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadPrediction:
    """What an :class:`OutputWriter` receives for one head and one input.

    Attributes:
        name: the head's name in the model.
        task: the head's task (``"segmentation"``, ``"driving.bev_detection"``, ...).
        model: the loaded :class:`~vlsdk.VLModel` (eval mode, on the chosen device).
        input: the :class:`PredictInput`.
        out_dir: the output folder.
        stem: file-name stem for this input and head (``"scan.lesion"``); write ``out_dir / (stem + ext)``.
        options: the command's options (``score_threshold``, ``device``).
        run: ``run()`` returns the model's output on ``input.images`` for every requested head
            (computed once per input, shared by the heads); a writer may predict its own way instead.
    """

    name: str
    task: str
    model: nn.Module
    input: PredictInput
    out_dir: Path
    stem: str
    options: Mapping[str, Any]
    run: Callable[[], Any]

    @property
    def head(self) -> nn.Module:
        """The head module."""
        return self.model.heads[self.name]

    def output(self) -> Any:
        """This head's raw output on the input (see :attr:`run`)."""
        return self.run()[self.name]

    def label_names(self, labels: Any) -> list[Any]:
        """The class name the model's metadata records for each label (the labels themselves when none are).

        Args:
            labels: integer labels of this head (a sequence, array or tensor).

        Raises:
            ValueError: a label past the names recorded for this head.
        """
        import numpy as np

        names = self.model.metadata.class_names.get(self.name)
        labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64)
        if names is None:
            return labels.tolist()
        if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < len(names):
            raise ValueError(f"head {self.name!r} predicted labels {sorted(set(labels.tolist()))}, but the model's "
                             f"metadata.class_names.{self.name} names only {len(names)}: {list(names)}")
        return np.asarray(names, dtype=object)[labels].tolist()


@dataclass(frozen=True)
class InputReader:
    """A file type ``vlsdk predict`` can read.

    Attributes:
        suffixes: file endings it reads, lower case (``(".nii", ".nii.gz")``).
        read: ``read(path: Path, model: VLModel, model_dir: Path) -> PredictInput``; raise
            ``ValueError`` naming the file for content it cannot use.
        applies: ``applies(path, model_dir) -> bool``, for a suffix shared with another reader
            (a LiDAR reader takes ``.npy`` only for models saved with a BEV encoder); ``None``: always.
        description: one line for ``vlsdk plugins``.
        directories: the reader also takes folders (a DICOM series); ``applies`` decides which.
    """

    suffixes: tuple[str, ...]
    read: Callable[..., PredictInput]
    applies: Callable[[Path, Path], bool] | None = None
    description: str = ""
    directories: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.suffixes, str) or not self.suffixes or not all(
                isinstance(s, str) and s.startswith(".") for s in self.suffixes):
            raise ValueError(f"suffixes must be a non-empty tuple of endings like '.nii.gz', got {self.suffixes!r}")
        if not callable(self.read) or (self.applies is not None and not callable(self.applies)):
            raise TypeError("read (and applies, when given) must be callable")
        object.__setattr__(self, "suffixes", tuple(s.lower() for s in self.suffixes))

    def matches(self, path: Path, model_dir: Path) -> bool:
        """Whether this reader takes ``path`` (a file, or a folder for a ``directories`` reader)."""
        if path.is_dir():
            if not self.directories:
                return False
        elif not path.name.lower().endswith(self.suffixes):
            return False
        return self.applies is None or bool(self.applies(path, model_dir))


@dataclass(frozen=True)
class OutputWriter:
    """Writes the predictions of heads of one task to files.

    Attributes:
        task: the head task it writes (a registered head name: ``"segmentation"``).
        write: ``write(prediction: HeadPrediction) -> dict`` writes the files and returns the
            JSON-ready entry for ``predictions.json`` (include ``"task"`` and, for people, a
            ``"picture"`` path).
        inputs: the :attr:`PredictInput.kind` values it handles (``("medical.nifti",)``);
            ``None``: any input.
        description: one line for ``vlsdk plugins``.
    """

    task: str
    write: Callable[[HeadPrediction], dict[str, Any]]
    inputs: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a head task name, got {self.task!r}")
        if not callable(self.write):
            raise TypeError("write must be callable")
        if self.inputs is not None:
            if isinstance(self.inputs, str):
                raise ValueError(f"inputs must be a tuple of input kinds, got the string {self.inputs!r}")
            object.__setattr__(self, "inputs", tuple(self.inputs))

    def handles(self, task: str, kind: str) -> bool:
        """Whether it writes heads of ``task`` on inputs of ``kind``."""
        return task == self.task and (self.inputs is None or kind in self.inputs)

"""An export is only kept when it holds at more than the traced shape, and tracer warnings fail it.

Real exports of the tiny model (onnxruntime on the CPU); the wrong models are real heads that
freeze the traced batch size into the graph, attached through a temporary plugin.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from vlsdk import VLModel  # noqa: E402
from vlsdk.export import OnnxModel, ParityError, TracerWarningError, read_metadata, to_onnx  # noqa: E402
from vlsdk.heads.base import Head  # noqa: E402
from vlsdk.plugins import hookimpl  # noqa: E402

SIZE = (32, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FrozenBatchHead(Head):
    """Flattens its map with the batch size read as a Python int: the trace keeps the traced batch."""

    task = "flat"

    def __init__(self, channels: dict[int, int]) -> None:
        super().__init__(channels)
        self.proj = nn.Conv2d(channels[16], 2, 1)

    def forward(self, features):  # noqa: ANN001, ANN201
        x = self.proj(features.pyramid[16])
        batch = int(x.shape[0])  # the bug: a constant of the example input once traced
        return x.reshape(batch, -1)


class _Heads:
    @hookimpl
    def vlsdk_register_heads(self, register):  # noqa: ANN001, ANN201
        register("probe.flat", FrozenBatchHead)


def _seg_depth_model() -> VLModel:
    torch.manual_seed(0)
    model = VLModel("tiny").eval()
    model.add_head("seg", task="segmentation", num_classes=3)
    model.add_head("depth", task="depth", max_depth=10.0)
    return model


def _cases(path: Path) -> dict[tuple[int, tuple[int, int]], list[str]]:
    table: dict[tuple[int, tuple[int, int]], list[str]] = {}
    for case in read_metadata(path)["parity"]["cases"]:
        assert case["passed"], case
        table.setdefault((case["batch"], tuple(case["image_size"])), []).append(case["output"])
    return table


def test_parity_is_checked_at_the_traced_and_another_batch_size(tmp_path: Path) -> None:
    path = to_onnx(_seg_depth_model(), tmp_path / "m.onnx", image_size=SIZE, batch_size=2)
    assert _cases(path) == {(2, SIZE): ["seg.logits", "depth.depth"], (1, SIZE): ["seg.logits", "depth.depth"]}
    traced_at_one = to_onnx(_seg_depth_model(), tmp_path / "one.onnx", image_size=SIZE, batch_size=1)
    assert sorted(_cases(traced_at_one)) == [(1, SIZE), (3, SIZE)]
    static = to_onnx(_seg_depth_model(), tmp_path / "static.onnx", image_size=SIZE, dynamic_batch=False)
    assert sorted(_cases(static)) == [(2, SIZE)]


def test_dynamic_size_is_checked_at_a_second_size_and_runs_there(tmp_path: Path) -> None:
    model = _seg_depth_model()
    path = to_onnx(model, tmp_path / "dyn.onnx", image_size=SIZE, dynamic_size=True)
    other = (SIZE[0] + 32, SIZE[1] + 64)  # the coarsest stride added, twice on W: not square
    assert sorted(_cases(path)) == sorted([(2, SIZE), (1, SIZE), (2, other), (1, other)])
    meta = read_metadata(path)
    assert meta["dynamic_size"] is True and meta["tracer_warnings"] == [] and not meta["allow_tracer_warnings"]
    images = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(3))  # a size never checked
    got = OnnxModel(path, threads=1)(images)["seg"].logits
    with torch.no_grad():
        ref = model(images, heads=["seg"])["seg"].logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_a_head_that_freezes_the_batch_fails_on_its_tracer_warning(register_plugin, tmp_path: Path) -> None:
    register_plugin(_Heads(), "probeheads")
    model = VLModel("tiny").eval()
    model.add_head("flat", task="probe.flat")
    out = tmp_path / "flat.onnx"
    with pytest.raises(TracerWarningError, match="Converting a tensor to a Python integer") as info:
        to_onnx(model, out, image_size=SIZE)
    (issue,) = info.value.issues
    assert issue.file == __file__ and issue.code.startswith("batch = int(x.shape[0])  # the bug")
    assert f"{Path(__file__).name}:{issue.line}" in str(info.value) and "--allow-tracer-warnings" in str(info.value)
    assert not out.exists()


def test_allowing_the_warning_still_fails_parity_at_the_other_batch(register_plugin, tmp_path: Path) -> None:
    register_plugin(_Heads(), "probeheads")
    model = VLModel("tiny").eval()
    model.add_head("flat", task="probe.flat")
    out = tmp_path / "flat.onnx"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ParityError) as info:
            to_onnx(model, out, image_size=SIZE, batch_size=2, allow_tracer_warnings=True)
    assert any("allow_tracer_warnings=True" in str(w.message) and "int(x.shape[0])" in str(w.message) for w in seen)
    message = str(info.value)
    assert "output 'flat' shape (1, 8) at batch 1, image 32x32: onnxruntime gave shape (2, 4)" in message
    failed = [c for c in info.value.cases if not c.passed]
    assert [(c.output, c.batch) for c in failed] == [("flat", 1)]
    assert all(c.passed for c in info.value.cases if c.batch == 2)  # right at the traced batch only
    assert not out.exists()


def test_allowed_warnings_are_recorded_in_a_file_that_passes(tmp_path: Path) -> None:
    """A detection head with dynamic spatial axes: its neck decides a resize at the traced size."""
    torch.manual_seed(0)
    model = VLModel("tiny").eval()
    model.add_head("det", task="detection", num_classes=2, width=16)
    with pytest.raises(TracerWarningError, match=r"heads/detection\.py:\d+.*if down\.shape"):
        to_onnx(model, tmp_path / "det.onnx", image_size=SIZE, dynamic_size=True)
    with pytest.warns(UserWarning, match="tracer warning"):
        path = to_onnx(model, tmp_path / "det.onnx", image_size=SIZE, dynamic_size=True, allow_tracer_warnings=True)
    meta = read_metadata(path)
    assert meta["allow_tracer_warnings"] is True
    assert any("if down.shape[-2:] != td[i].shape[-2:]:" in w for w in meta["tracer_warnings"])
    assert len(_cases(path)) == 4  # and it holds at the second size, which the table shows
    fixed = to_onnx(model, tmp_path / "fixed.onnx", image_size=SIZE)  # reviewed as harmless at a fixed size
    assert read_metadata(fixed)["tracer_warnings"] == []

"""OnnxModel: an exported file called like a VLModel, through the medical sliding-window predictor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlsdk
from vlsdk.export import OnnxModel, to_onnx


@pytest.fixture(scope="module")
def seg_model_and_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[vlsdk.VLModel, Path]:
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=2)
    model.add_head("lesion", task="segmentation", num_classes=1)
    model.add_expert("medical.lesion", init_bias=0.0)
    model.eval()
    path = to_onnx(model, tmp_path_factory.mktemp("onnx") / "seg.onnx", heads=["lesion"], image_size=(32, 32))
    return model, path


def test_called_like_a_vlmodel(seg_model_and_file: tuple[vlsdk.VLModel, Path]) -> None:
    model, path = seg_model_and_file
    onnx_model = OnnxModel(path, threads=1)
    assert onnx_model.heads == {"lesion": "segmentation"} and onnx_model.image_size == (32, 32)
    assert onnx_model.eval() is onnx_model  # what evaluation loops call on a model
    x = torch.randn(3, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x, heads=["lesion"])["lesion"].logits
    got = onnx_model(x, heads=["lesion"])["lesion"].logits
    assert got.shape == ref.shape == (3, 1, 32, 32)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_sliding_window_predictor_matches_pytorch(seg_model_and_file: tuple[vlsdk.VLModel, Path]) -> None:
    pytest.importorskip("monai")
    from vlsdk_medical.inference import model_predictor, predict_slices

    model, path = seg_model_and_file
    images = torch.randn(2, 2, 56, 48, generator=torch.Generator().manual_seed(2))  # windows of 32, padded edges
    ref = predict_slices(model_predictor(model, "lesion"), images, 32, sw_batch_size=3)
    got = predict_slices(model_predictor(OnnxModel(path, threads=1), "lesion"), images, 32, sw_batch_size=3)
    assert got.shape == (2, 1, 56, 48)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_bad_arguments(seg_model_and_file: tuple[vlsdk.VLModel, Path], tmp_path: Path) -> None:
    _, path = seg_model_and_file
    with pytest.raises(ValueError, match="no ONNX model"):
        OnnxModel(tmp_path / "missing.onnx")
    onnx_model = OnnxModel(path, threads=1)
    with pytest.raises(ValueError, match="exported heads"):
        onnx_model(torch.zeros(1, 2, 32, 32), heads=["det"])
    with pytest.raises(ValueError, match="exported at"):
        onnx_model(torch.zeros(1, 2, 64, 64))

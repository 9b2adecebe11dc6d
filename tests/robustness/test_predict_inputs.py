"""Inputs that must match the model at predict time: channels by meaning, scaling, trained size, NaN/inf, names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vlsdk
from vlsdk.cli import main
from vlsdk.models.metadata import InputSpec, ModelMetadata
from vlsdk.plugins import hookimpl
from vlsdk.predict import predict_files, read_image
from vlsdk.predict_io import HeadPrediction, InputReader, PredictInput, fit_channels


def _save(directory, in_chans, channels, image_size=None, scaling="divide_255", class_names=True):
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=in_chans, text=None)
    model.add_head("det", task="detection", num_classes=2)
    model.add_head("seg", task="segmentation", num_classes=3)
    model.add_head("depth")
    names = {"det": ("open", "short"), "seg": ("background", "open", "short")} if class_names else {}
    model.metadata = ModelMetadata(task="pcb defects", class_names=names,
                                   input=InputSpec(channels, scaling, image_size))
    model.save_pretrained(directory)
    return vlsdk.VLModel.from_pretrained(directory)


def _png(path, h=48, w=64, seed=0, channels=None):
    shape = (h, w) if channels is None else (h, w, channels)
    arr = (np.random.default_rng(seed).random(shape) * 255).astype("uint8")
    Image.fromarray(arr).save(path)
    return arr


def test_fewer_channels_than_the_model_expects_names_the_missing_ones(tmp_path, capsys):
    _save(tmp_path / "model", 2, ("board", "template"))
    _png(tmp_path / "board.png")
    message = f"this model expects 2 channels (board, template); {tmp_path / 'board.png'} has 1: missing 'template'"
    with pytest.raises(ValueError) as err:
        predict_files(tmp_path / "model", [tmp_path / "board.png"], tmp_path / "out")
    assert str(err.value).startswith(message) and "--repeat-channels" in str(err.value)
    assert main(["predict", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                 str(tmp_path / "board.png")]) == 1
    assert message in capsys.readouterr().err
    _png(tmp_path / "rgb.png", channels=3)
    with pytest.raises(ValueError, match=r"expects 2 channels \(board, template\); \S+rgb.png has 3$"):
        predict_files(tmp_path / "model", [tmp_path / "rgb.png"], tmp_path / "out")


def test_repeat_channels_copies_the_one_channel_when_asked(tmp_path, capsys):
    model = _save(tmp_path / "model", 2, ("board", "template"))
    arr = _png(tmp_path / "board.png")
    assert main(["predict", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--repeat-channels",
                 "--score-threshold", "0", str(tmp_path / "board.png")]) == 0
    entry = json.loads((tmp_path / "out" / "predictions.json").read_text())["inputs"][0]
    board = torch.from_numpy(arr / np.float32(255)).float()
    with torch.no_grad():
        out = model(torch.stack([board, board])[None])
    depth = np.load(entry["depth"]["array"])
    np.testing.assert_allclose(depth, out["depth"].depth[0, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_class_names_replace_integer_labels_in_json_pictures_and_output(tmp_path, capsys):
    model = _save(tmp_path / "model", 1, ("gray",))
    arr = _png(tmp_path / "a.png")
    assert main(["predict", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                 "--score-threshold", "0", str(tmp_path / "a.png")]) == 0
    entry = json.loads((tmp_path / "out" / "predictions.json").read_text())["inputs"][0]
    with torch.no_grad():
        out = model(torch.from_numpy(arr / np.float32(255)).float()[None, None])
    det = model.heads["det"].decode(out["det"], score_threshold=0.0)[0]
    assert entry["det"]["label_ids"] == det.labels.tolist() and len(det.labels) > 0
    assert entry["det"]["labels"] == [("open", "short")[i] for i in det.labels.tolist()]
    counts = entry["seg"]["pixels_per_label"]
    assert len(counts) == 3 and sum(counts) == 48 * 64
    assert entry["seg"]["pixels_per_class"] == dict(zip(("background", "open", "short"), counts, strict=True))
    stdout = capsys.readouterr().out
    assert f"det: {len(det.labels)} boxes (" in stdout and ("open" in stdout or "short" in stdout)


def test_the_trained_image_size_is_the_default_and_predictions_come_back_in_file_pixels(tmp_path):
    model = _save(tmp_path / "model", 1, ("gray",), image_size=(32, 48))
    arr = _png(tmp_path / "a.png", h=48, w=64)
    entry = predict_files(tmp_path / "model", [tmp_path / "a.png"], tmp_path / "out", score_threshold=0.0)["inputs"][0]
    assert entry["size"] == [48, 64] and entry["model_size"] == [32, 48]
    image = torch.from_numpy(arr / np.float32(255)).float()[None, None]
    fed = F.interpolate(image, size=(32, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        out = model(fed)
    det = model.heads["det"].decode(out["det"], score_threshold=0.0)[0]
    expected = det.boxes * torch.tensor([64 / 48, 48 / 32, 64 / 48, 48 / 32])
    np.testing.assert_allclose(np.array(entry["det"]["boxes"]).reshape(-1, 4), expected.numpy(), rtol=1e-5, atol=1e-4)
    assert np.array(Image.open(entry["seg"]["labels"])).shape == (48, 64)
    assert np.load(entry["depth"]["array"]).shape == (48, 64)
    native = predict_files(tmp_path / "model", [tmp_path / "a.png"], tmp_path / "native", image_size=None)["inputs"][0]
    assert native["size"] == [48, 64] and "model_size" not in native
    assert predict_files(tmp_path / "model", [tmp_path / "a.png"], tmp_path / "o",
                         image_size=(40, 40))["inputs"][0]["model_size"] == [40, 40]
    with pytest.raises(ValueError, match=r"image_size must be 'model', None or \(height, width\)"):
        predict_files(tmp_path / "model", [tmp_path / "a.png"], tmp_path / "o", image_size=(0, 40))


def test_non_finite_pixels_are_an_error_naming_the_file_and_count(tmp_path):
    _save(tmp_path / "model", 1, ("gray",))
    arr = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    arr[3, :3] = np.nan
    arr[5, 7] = -np.inf
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(ValueError, match=r"bad.npy: 4 of 1920 pixel values are non-finite \(NaN or inf\)"):
        predict_files(tmp_path / "model", [tmp_path / "bad.npy"], tmp_path / "out")
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(ValueError, match=r"cut.png: not a readable image"):
        predict_files(tmp_path / "model", [tmp_path / "cut.png"], tmp_path / "out")
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00")
    with pytest.raises(ValueError, match=r"cut.npy: not a readable .npy array"):
        predict_files(tmp_path / "model", [tmp_path / "cut.npy"], tmp_path / "out")


def test_recorded_scaling_is_applied(tmp_path):
    arr = _png(tmp_path / "a.png", channels=3)
    raw = read_image(tmp_path / "a.png", ("r", "g", "b"), scaling="none")
    np.testing.assert_allclose(raw[0].permute(1, 2, 0).numpy(), arr.astype(np.float32), atol=1e-4)
    z = read_image(tmp_path / "a.png", ("r", "g", "b"), scaling="zscore_per_image")[0]
    np.testing.assert_allclose(z.mean((1, 2)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(z.std((1, 2)).numpy(), 1, atol=1e-5)
    grey = read_image(tmp_path / "a.png", ("gray",))  # RGB to a one-channel model: averaged, as before
    np.testing.assert_allclose(grey[0, 0].numpy(), arr.mean(-1) / 255, atol=1e-5)
    with pytest.raises(ValueError, match="scaling must be one of"):
        read_image(tmp_path / "a.png", ("gray",), scaling="percent")
    model = _save(tmp_path / "model", 3, ("r", "g", "b"), scaling="none", class_names=False)
    entry = predict_files(tmp_path / "model", [tmp_path / "a.png"], tmp_path / "out")["inputs"][0]
    with torch.no_grad():
        depth = model(torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1)[None])["depth"].depth[0, 0]
    np.testing.assert_allclose(np.load(entry["depth"]["array"]), depth.numpy(), rtol=1e-5, atol=1e-5)


class RawReader:
    """A third-party reader of one-channel ``.raw1`` files (float32 32x32) that uses fit_channels."""

    @hookimpl
    def vlsdk_register_input_readers(self, register):
        def read(path, model, model_dir):
            data = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(1, 32, 32).copy())
            data = fit_channels(data, path, model.metadata.channels(model.config.in_chans))
            return PredictInput(path, data[None], "acme.raw1")

        register("acme.raw1", InputReader(suffixes=(".raw1",), read=read))


def test_plugin_readers_honour_repeat_channels_and_the_finite_check(plugin_host, register_plugin, tmp_path):
    register_plugin(RawReader(), name="acme")
    _save(tmp_path / "model", 2, ("board", "template"))
    np.random.default_rng(0).random((32, 32)).astype(np.float32).tofile(tmp_path / "a.raw1")
    with pytest.raises(ValueError, match=r"expects 2 channels \(board, template\); \S+a.raw1 has 1: missing 'templ"):
        predict_files(tmp_path / "model", [tmp_path / "a.raw1"], tmp_path / "out")
    entry = predict_files(tmp_path / "model", [tmp_path / "a.raw1"], tmp_path / "out", repeat_channels=True)
    assert entry["inputs"][0]["reader"] == "acme.raw1"
    np.full((32, 32), np.nan, np.float32).tofile(tmp_path / "nan.raw1")
    with pytest.raises(ValueError, match=r"nan.raw1: 2048 of 2048 values of the model input \(acme.raw1 reader\)"):
        predict_files(tmp_path / "model", [tmp_path / "nan.raw1"], tmp_path / "out", repeat_channels=True)


def test_a_label_past_the_recorded_class_names_is_an_error_not_a_wrong_name(tmp_path):
    model = _save(tmp_path / "model", 1, ("gray",))
    item = PredictInput(tmp_path / "a.png", torch.zeros(1, 1, 32, 32))
    prediction = HeadPrediction("det", "detection", model, item, tmp_path, "a.det", {}, lambda: {})
    assert prediction.label_names(torch.tensor([1, 0])) == ["short", "open"]
    with pytest.raises(ValueError, match=r"head 'det' predicted labels \[0, 2\].*names only 2: \['open', 'short'\]"):
        prediction.label_names([0, 2])
    unnamed = HeadPrediction("depth", "depth", model, item, tmp_path, "a.depth", {}, lambda: {})
    assert unnamed.label_names([3]) == [3]

"""``vlsdk predict``: machine-readable outputs that parse, pictures of the input's size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vlsdk
from vlsdk.cli import main


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("det", task="detection", num_classes=2)
    model.add_head("seg", task="segmentation", num_classes=3)
    model.add_head("depth")
    model.save_pretrained(tmp_path / "model")
    images = []
    for i, (h, w) in enumerate([(48, 64), (40, 40)]):
        arr = (np.random.default_rng(i).random((h, w)) * 255).astype("uint8")
        Image.fromarray(arr).save(tmp_path / f"img{i}.png")
        images.append(tmp_path / f"img{i}.png")
    return tmp_path / "model", images


def test_predict_writes_parsable_outputs(saved, tmp_path, capsys):
    model_dir, images = saved
    assert main(["predict", "--model", str(model_dir), "--out", str(tmp_path / "out"), "--score-threshold", "0.0",
                 *map(str, images)]) == 0
    index = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [e["input"] for e in index["inputs"]] == [str(p) for p in images]
    first = index["inputs"][0]
    assert first["size"] == [48, 64]
    det = first["det"]
    assert len(det["boxes"]) == len(det["scores"]) == len(det["labels"]) > 0
    assert all(0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 48 for x1, y1, x2, y2 in det["boxes"])
    labels = np.array(Image.open(first["seg"]["labels"]))
    assert labels.shape == (48, 64) and labels.max() < 3
    assert sum(first["seg"]["pixels_per_label"]) == 48 * 64
    depth = np.load(first["depth"]["array"])
    assert depth.shape == (48, 64) and np.isfinite(depth).all()
    for head in ("det", "seg", "depth"):
        assert Image.open(first[head]["picture"]).size[0] > 100
    assert "boxes" in capsys.readouterr().out


def test_predict_errors_name_the_problem(saved, tmp_path):
    model_dir, images = saved
    from vlsdk.predict import predict_files

    with pytest.raises(FileNotFoundError, match="no image file"):
        predict_files(model_dir, [tmp_path / "missing.png"], tmp_path / "o")
    with pytest.raises(ValueError, match="not in the model"):
        predict_files(model_dir, images, tmp_path / "o", heads=["lesion"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        predict_files(tmp_path, images, tmp_path / "o")


def test_predictions_match_the_models_own_output(saved, tmp_path):
    model_dir, images = saved
    from vlsdk.inspect.routing import load_image
    from vlsdk.predict import predict_files

    index = predict_files(model_dir, images[:1], tmp_path / "o", score_threshold=0.0)
    model = vlsdk.VLModel.from_pretrained(model_dir)
    with torch.no_grad():
        out = model(load_image(images[0], 1))
    det = model.heads["det"].decode(out["det"], score_threshold=0.0)[0]
    entry = index["inputs"][0]
    np.testing.assert_allclose(np.array(entry["det"]["boxes"]).reshape(-1, 4), det.boxes.numpy(), rtol=1e-6)
    assert entry["det"]["labels"] == det.labels.tolist()
    labels = np.array(Image.open(entry["seg"]["labels"]))
    assert (labels == out["seg"].logits.argmax(1)[0].numpy()).all()
    depth = np.load(entry["depth"]["array"])
    np.testing.assert_allclose(depth, out["depth"].depth[0, 0].numpy(), rtol=1e-6)

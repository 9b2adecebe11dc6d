"""Model metadata: round trips through config.json, errors naming the field, create_model / list_models."""

from __future__ import annotations

import json

import pytest

import vlsdk
from vlsdk.models.checkpoint import read_config
from vlsdk.models.metadata import InputSpec, ModelMetadata


def _meta() -> ModelMetadata:
    return ModelMetadata(task="pcb defect detection", class_names={"det": ("open", "short")},
                         input=InputSpec(("board", "template"), "none", (640, 640), None),
                         training={"data": "DeepPCB trainval", "data_licence": "MIT", "metrics": {"mAP": 0.99},
                                   "command": "vlsdk pcb --steps 1000", "seed": 1},
                         intended_use="research", limitations="binarised boards only")


def test_metadata_round_trips_through_a_dict():
    meta = _meta()
    assert ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert ModelMetadata.from_dict(None) == ModelMetadata()


@pytest.mark.parametrize(("change", "field"), [
    ({"input": {"channels": ["gray"], "scaling": "divide_256"}}, r"metadata\.input\.scaling: expected one of"),
    ({"input": {"channels": ["gray"], "image_size": [64, float("nan")]}}, r"metadata\.input\.image_size"),
    ({"input": {"channels": ["gray"], "image_size": [64, -1]}}, r"metadata\.input\.image_size.*> 0"),
    ({"input": {"channels": ["gray"], "voxel_spacing": [1, 1, float("inf")]}}, r"metadata\.input\.voxel_spacing"),
    ({"input": {"channels": "gray"}}, r"metadata\.input\.channels: expected a non-empty list"),
    ({"input": {"scaling": "none"}}, r"metadata\.input\.channels: missing"),
    ({"class_names": {"det": "open"}}, r"metadata\.class_names\.det: expected a non-empty list"),
    ({"training": ["x"]}, r"metadata\.training: expected an object"),
    ({"task": 3}, r"metadata\.task: expected a string"),
    ({"tasks": "typo"}, r"metadata: unknown field\(s\) \['tasks'\]"),
])
def test_from_dict_errors_name_the_field_and_what_was_expected(change, field):
    with pytest.raises(ValueError, match=field):
        ModelMetadata.from_dict(_meta().to_dict() | change)


def test_default_metadata_names_each_channel():
    model = vlsdk.VLModel("tiny", in_chans=2)
    assert model.metadata.input.channels == ("channel_0", "channel_1")
    assert model.metadata.task is None and model.metadata.class_names == {}
    assert ModelMetadata().channels(3) == ("channel_0", "channel_1", "channel_2")


def test_save_and_load_restore_the_metadata(tmp_path):
    model = vlsdk.VLModel("tiny", in_chans=2, text=None)
    model.add_head("det", task="detection", num_classes=2)
    model.metadata = _meta()
    model.save_pretrained(tmp_path)
    assert read_config(tmp_path)["metadata"] == _meta().to_dict()
    assert json.loads((tmp_path / "config.json").read_text())["metadata"] == _meta().to_dict()
    assert vlsdk.VLModel.from_pretrained(tmp_path).metadata == _meta()


def test_a_checkpoint_saved_without_metadata_still_loads(tmp_path):
    vlsdk.VLModel("tiny", in_chans=3, text=None).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["metadata"], config["weights_sha256"]  # as written before metadata and digests existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert read_config(tmp_path)["metadata"]["input"]["channels"] == ["channel_0", "channel_1", "channel_2"]
    loaded = vlsdk.VLModel.from_pretrained(tmp_path)
    assert loaded.metadata.input.channels == ("channel_0", "channel_1", "channel_2")


def test_metadata_that_does_not_fit_the_model_is_refused_at_save_and_load(tmp_path):
    model = vlsdk.VLModel("tiny", in_chans=1, text=None)
    model.add_head("seg", task="segmentation", num_classes=1)
    model.metadata = ModelMetadata(input=InputSpec(("flair", "t1c")))
    with pytest.raises(ValueError, match=r"names 2 channels \['flair', 't1c'\], but the model takes in_chans=1"):
        model.save_pretrained(tmp_path)
    model.metadata = ModelMetadata(class_names={"lesion": ("background", "tumour")})
    with pytest.raises(ValueError, match=r"head\(s\) \['lesion'\] the model does not have; heads: \['seg'\]"):
        model.save_pretrained(tmp_path)
    model.metadata = ModelMetadata(class_names={"seg": ("tumour",)})
    with pytest.raises(ValueError, match="names 1 classes but head 'seg' outputs 2 labels.*background is label 0"):
        model.save_pretrained(tmp_path)
    model.metadata = ModelMetadata(class_names={"seg": ("background", "tumour")})
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["metadata"]["input"] = {"channels": ["flair", "t1c"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: metadata.input.channels names 2 channels.*in_chans is 1"):
        vlsdk.VLModel.from_pretrained(tmp_path)


def test_list_models_is_sorted_and_filtered():
    assert vlsdk.list_models() == sorted(vlsdk.CONFIGS) == ["base", "edge", "small", "tiny"]
    assert vlsdk.list_models("*e*") == ["base", "edge"]
    assert vlsdk.list_models("nothing*") == []


def test_create_model_builds_named_configs_with_overrides(tmp_path):
    model = vlsdk.create_model("tiny@depths=2,", in_chans=1)
    assert isinstance(model, vlsdk.VLModel)
    assert model.config.depths == (2,) and model.config.in_chans == 1
    with pytest.raises(ValueError, match=r"unknown config 'huge'; expected one of \['base', 'edge', 'small', 'tiny'\]"):
        vlsdk.create_model("huge")
    model.add_head("seg", task="segmentation", num_classes=2)
    model.save_pretrained(tmp_path)
    loaded = vlsdk.create_model("tiny@depths=2,", pretrained_dir=tmp_path, in_chans=1)
    assert "seg" in loaded.heads and not loaded.training
    with pytest.raises(ValueError, match=r"another config than 'tiny'.*depths \(saved \[2\], asked \[1, 1\]\)"):
        vlsdk.create_model("tiny", pretrained_dir=tmp_path, in_chans=1)

"""Damaged checkpoints on disk: short errors naming the file and the field or tensors, never a raw dump."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import vlsdk
from vlsdk.models.checkpoint import file_sha256


class Scale(nn.Module):
    """An expert added as a factory (not registered), so config.json records it with 'registered': false."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1, text=None)
    model.add_expert("custom.scale", Scale)
    model.add_head("det", task="detection", num_classes=2)
    model.save_pretrained(tmp_path)
    return tmp_path


def _load(directory, **kwargs):
    return vlsdk.VLModel.from_pretrained(directory, experts={"custom.scale": Scale}, **kwargs)


def _edit_config(directory, edit):
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))


def test_an_intact_checkpoint_records_its_digest_and_loads(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["weights_sha256"] == file_sha256(saved / "model.safetensors")
    model = _load(saved)
    assert "custom.scale" in model.expert_specs and "det" in model.heads


def test_truncated_weights_are_refused_naming_both_files(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ValueError, match="changed or damaged since it was saved") as err:
        _load(saved)
    assert str(weights) in str(err.value) and str(saved / "config.json") in str(err.value)
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file.*truncated"):
        _load(saved, verify=False)
    weights.write_bytes(b"\x10")  # shorter than the 8-byte header length
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        _load(saved, verify=False)


def test_bytes_overwritten_in_the_middle_are_caught_by_the_digest_then_as_non_finite_weights(saved):
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle - 64: middle + 64] = b"\xff" * 128  # 0xffffffff is a float32 NaN: 32 values of one tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="changed or damaged since it was saved"):
        _load(saved)
    with pytest.raises(ValueError, match=r"1 tensor\(s\) hold 32 non-finite values \(NaN or inf\): \S+ \(32 of \d+\)"):
        _load(saved, verify=False)
    model = _load(saved, verify=False, check_finite=False)  # both opt-outs: loads what is there
    assert sum(int(torch.isnan(p).sum()) for p in model.state_dict().values() if p.is_floating_point()) == 32


def test_non_finite_weights_saved_by_a_diverged_run_are_named_at_load(tmp_path):
    model = vlsdk.VLModel("tiny", in_chans=1, text=None)
    model.add_head("det", task="detection", num_classes=2)
    with torch.no_grad():
        model.heads["det"].cls_pred.bias[0] = float("inf")
        model.heads["det"].cls_pred.weight[0, :3] = float("nan")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError) as err:
        vlsdk.VLModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert "2 tensor(s) hold 4 non-finite values" in message
    assert "heads.det.cls_pred.bias (1 of 2)" in message and "heads.det.cls_pred.weight (3 of" in message
    assert "check_finite=False" in message


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda c: c["experts"][0].pop("layers"),
     r"config.json: experts\[0\] \('custom.scale'\): field 'layers' is missing; expected a list of MoE layer"),
    (lambda c: c["experts"][0].update(layers="all"),
     r"experts\[0\] \('custom.scale'\): field 'layers': expected a list of MoE layer indices, got 'all'"),
    (lambda c: c["experts"][0].update(layers=[0, "1"]), r"field 'layers': expected a list of MoE layer indices"),
    (lambda c: c["heads"][0].pop("task"), r"heads\[0\] \('det'\): field 'task' is missing; expected a registered"),
    (lambda c: c["heads"][0].update(options=[2]), r"heads\[0\] \('det'\): field 'options': expected an object"),
    (lambda c: c.update(experts={"custom.scale": {}}), r"field 'experts': expected a list, got dict"),
    (lambda c: c.update(backbone=[1]), r"field 'backbone': expected an object"),
    (lambda c: c.update(weights_sha256=12), r"field 'weights_sha256': expected a 64-character hex SHA-256"),
    (lambda c: c["metadata"]["input"].update(scaling="percent"), r"config.json: metadata.input.scaling: expected one"),
    (lambda c: c["backbone"].pop("embed_dim") and c["backbone"].update(embed_dims=64),
     r"field 'backbone' is not a valid BackboneConfig"),
    (lambda c: c["experts"][0].update(layers=[7]), r"expert 'custom.scale' cannot be rebuilt.*layers must be MoE"),
    (lambda c: c["heads"][0]["options"].update(colour="red"), r"head 'det' \(task 'detection'\) cannot be rebuilt"),
])
def test_edited_config_fields_are_named(saved, edit, expected):
    _edit_config(saved, edit)
    with pytest.raises(ValueError, match=expected) as err:
        _load(saved)
    assert str(saved / "config.json") in str(err.value)
    assert len(str(err.value)) < 600


def test_weights_that_do_not_fit_the_config_list_a_few_tensors_and_count_the_rest(saved):
    _edit_config(saved, lambda c: c["heads"][0]["options"].update(num_classes=5))
    with pytest.raises(ValueError, match=r"does not match .*config.json: 2 tensor\(s\) of another shape: "
                                         r"heads.det.cls_pred.weight \(file \(2, 64, 1, 1\), model \(5, 64, 1, 1\)\)"):
        _load(saved)
    _edit_config(saved, lambda c: c["heads"][0]["options"].update(num_classes=2))
    weights = saved / "model.safetensors"
    state = load_file(weights)
    kept = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    save_file(kept | {"encoder.extra": torch.zeros(1)}, weights)
    _edit_config(saved, lambda c: c.update(weights_sha256=file_sha256(weights)))
    with pytest.raises(ValueError) as err:
        _load(saved)
    message = str(err.value)
    missing = len(state) - len(kept)
    assert f"{missing} tensor(s) missing" in message and f"({missing - 5} more)" in message
    assert "1 unexpected tensor(s): encoder.extra" in message
    assert len(message) < 1000

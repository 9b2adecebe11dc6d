"""VLModel: runtime heads, registered domain experts, freezing, and checkpoint round trips."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import vlsdk
from vlsdk.models.checkpoint import load_head_weights, save_head
from vlsdk.plugins import hookimpl
from vlsdk.plugins.manager import PluginHost, use_host


class Scale(nn.Module):
    """A toy domain expert: a learnable per-channel scale."""

    def __init__(self, dim: int, init: float = 2.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ToyDomain:
    """An in-process plugin object registering one expert."""

    @hookimpl
    def vlsdk_register_experts(self, register):
        register("toy.scale", Scale)


@pytest.fixture
def toy_host(plugin_host, register_plugin):
    register_plugin(ToyDomain(), name="toy")
    return plugin_host


@pytest.fixture
def model():
    torch.manual_seed(0)
    return vlsdk.VLModel("tiny").eval()


def test_heads_attach_run_and_detach(toy_host, model):
    model.add_head("det", task="detection", num_classes=3)
    model.add_head("seg", task="segmentation", num_classes=4)
    model.add_head("depth")
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(images)
    assert set(out.heads) == {"det", "seg", "depth"}
    assert out["seg"].logits.shape == (2, 4, 64, 96)
    assert out["depth"].depth.shape == (2, 1, 64, 96)
    assert len(model.heads["det"].decode(out["det"])) == 2
    with torch.no_grad():
        only = model(images, heads=["seg"])
    assert list(only.heads) == ["seg"]
    model.remove_head("det")
    assert "det" not in model.heads and "det" not in model.head_specs


def test_head_errors_are_clear(toy_host, model):
    with pytest.raises(KeyError, match="segmentation"):
        model.add_head("seg", task="segmentaton", num_classes=2)
    model.add_head("seg", task="segmentation", num_classes=2)
    with pytest.raises(ValueError, match="already exists"):
        model.add_head("seg", task="segmentation", num_classes=2)
    with pytest.raises(ValueError, match="identifiers"):
        model.add_head("my-head", task="segmentation", num_classes=2)
    with pytest.raises(ValueError, match=r"unknown head\(s\) \['nope'\]"):
        model(torch.randn(1, 3, 32, 32), heads=["nope"])


def test_registered_expert_keeps_outputs_and_round_trips(toy_host, model, tmp_path):
    model.add_head("seg", task="segmentation", num_classes=2)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(images)["seg"].logits
    model.add_expert("toy.scale", layers=[0], init=3.0)
    assert "toy.scale" in model.moe_layers[0].expert_names
    assert "toy.scale" not in model.moe_layers[1].expert_names
    assert model.expert_specs["toy.scale"].plugin == "toy"
    with torch.no_grad():
        torch.testing.assert_close(model(images)["seg"].logits, before, rtol=0, atol=0)
        model.moe_layers[0].set_router_bias("toy.scale", 40.0)  # open it: now it changes outputs
        opened = model(images)["seg"].logits
    assert not torch.allclose(opened, before)

    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["experts"][0]["name"] == "toy.scale" and config["experts"][0]["options"] == {"init": 3.0}
    assert not list((tmp_path / "ckpt").glob("*.bin")) and not list((tmp_path / "ckpt").glob("*.pt"))
    loaded = vlsdk.VLModel.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)["seg"].logits, opened, rtol=0, atol=0)


def test_missing_plugin_is_named_on_load(toy_host, model, tmp_path):
    model.add_expert("toy.scale")
    model.save_pretrained(tmp_path)
    with use_host(PluginHost(discover=False)), pytest.raises(LookupError, match="plugin 'toy'"):
        vlsdk.VLModel.from_pretrained(tmp_path)


def test_module_object_experts_need_a_factory_to_reload(model, tmp_path):
    model.add_expert("custom.scale", Scale(model.config.embed_dim))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="experts="):
        vlsdk.VLModel.from_pretrained(tmp_path)
    loaded = vlsdk.VLModel.from_pretrained(tmp_path, experts={"custom.scale": Scale}).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).features.tokens, model(x).features.tokens)


def test_add_remove_and_freeze_experts(toy_host, model):
    model.add_expert("toy.scale", layers=[-1])
    with pytest.raises(ValueError, match="already"):
        model.add_expert("toy.scale")
    with pytest.raises(ValueError, match="MoE layer indices"):
        model.add_expert("custom.x", Scale(64), layers=[7])
    frozen = model.freeze_experts("toy")
    assert frozen == ["toy.scale"]
    assert not model.moe_layers[-1].expert("toy.scale").scale.requires_grad
    model.freeze_experts("generic", "shared")
    assert not any(p.requires_grad for layer in model.moe_layers for p in layer.experts["generic"].parameters())
    assert model.unfreeze_experts("all")[-1] == "shared"
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no expert matches 'medical'"):
        model.freeze_experts("medical")
    model.remove_expert("toy.scale")
    assert model.moe_layers[-1].router.num_experts == model.config.moe.num_experts


def test_head_checkpoint_restores_weights(toy_host, model, tmp_path):
    model.add_head("seg", task="segmentation", num_classes=2)
    save_head(model, "seg", tmp_path)
    other = vlsdk.VLModel("tiny")
    other.add_head("seg", task="segmentation", num_classes=2, checkpoint=tmp_path)
    for a, b in zip(model.heads["seg"].state_dict().values(), other.heads["seg"].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="head.safetensors"):
        load_head_weights(other, "seg", tmp_path / "missing")


def test_bad_checkpoints_say_what_is_wrong(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="no vlsdk model directory"):
        vlsdk.VLModel.from_pretrained(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        vlsdk.VLModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        vlsdk.VLModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="field 'format'"):
        vlsdk.VLModel.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "new")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    config.update(format_version=99, vlsdk_version="9.0.0")
    (tmp_path / "new" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="written by vlsdk 9.0.0"):
        vlsdk.VLModel.from_pretrained(tmp_path / "new")


def test_model_rejects_bad_config():
    with pytest.raises(ValueError, match="unknown config"):
        vlsdk.VLModel("gigantic")
    with pytest.raises(ValueError, match="BackboneConfig"):
        vlsdk.VLModel(42)

"""The plain-ViT backbone (``BackboneConfig(stem="patch")``): pyramid, heads, checkpoints, ``vlsdk pcb``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import vlsdk_driving.plugin as driving_plugin
from vlsdk import VLModel
from vlsdk.models.config import get_config
from vlsdk.models.encoder import HybridEncoder
from vlsdk.models.model import count_parameters
from vlsdk.models.patch_stem import SimpleFeaturePyramid

SIZES = [(64, 64), (70, 96), (37, 53)]  # square, non-square, odd (the hybrid's test sizes and smaller)


def encoders(in_chans: int, **changes: object) -> tuple[HybridEncoder, HybridEncoder]:
    torch.manual_seed(0)
    hybrid = HybridEncoder(get_config("tiny", in_chans=in_chans, **changes)).eval()
    plain = HybridEncoder(get_config("tiny", in_chans=in_chans, stem="patch", **changes)).eval()
    return hybrid, plain


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("size", SIZES)
def test_pyramid_has_the_hybrid_strides_channels_and_sizes(in_chans, size):
    hybrid, plain = encoders(in_chans)
    assert plain.stem is None and plain.pyramid_up is not None and hybrid.pyramid_up is None
    assert plain.channels == hybrid.channels
    images = torch.randn(2, in_chans, *size)
    with torch.no_grad():
        want, got = hybrid.forward_features(images), plain.forward_features(images)
    assert list(got.pyramid) == [4, 8, 16, 32]
    for stride, fmap in got.pyramid.items():
        assert fmap.shape == want.pyramid[stride].shape, stride
        assert fmap.shape[-2:] == (math.ceil(size[0] / stride), math.ceil(size[1] / stride)), stride
    assert got.tokens.shape == want.tokens.shape and got.grid == want.grid
    assert len(got.router_stats) == len(plain.moe_layers) > 0


def test_patches_are_16_pixels_straight_from_the_image():
    _, plain = encoders(1)
    proj = plain.patch_embed.proj
    assert proj.in_channels == 1 and proj.kernel_size == (16, 16) and proj.stride == (16, 16)
    assert not any(n.startswith("stem.") for n, _ in plain.named_parameters())


def test_other_patch_size_keeps_the_pyramid():
    hybrid, plain = encoders(3, patch_size=4)  # tokens at stride 32
    assert plain.patch_embed.proj.kernel_size == (32, 32)
    images = torch.randn(1, 3, 70, 96)
    with torch.no_grad():
        want, got = hybrid.forward_features(images), plain.forward_features(images)
    assert {s: f.shape for s, f in got.pyramid.items()} == {s: f.shape for s, f in want.pyramid.items()}


def test_gradients_reach_the_patch_embedding_and_both_upsampled_levels():
    _, plain = encoders(3)
    plain.train()
    feats = plain.forward_features(torch.randn(2, 3, 64, 64))
    (feats.pyramid[4].pow(2).mean() + feats.pyramid[8].pow(2).mean()).backward()
    assert plain.patch_embed.proj.weight.grad.abs().sum() > 0
    assert plain.pyramid_up.up8[0].weight.grad.abs().sum() > 0
    assert plain.pyramid_up.up4[0].weight.grad.abs().sum() > 0


def add_every_head(model: VLModel) -> None:
    model.add_head("det", task="detection", num_classes=3)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.add_head("depth", task="depth")
    model.add_head("bev", task="driving.bev_detection", num_classes=2, x_range=[-8, 8], y_range=[-8, 8],
                   resolution=0.5)


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("size", [(64, 64), (37, 53)])
def test_every_head_runs_on_the_patch_stem(register_plugin, in_chans, size):
    register_plugin(driving_plugin, "driving")
    outputs = {}
    for stem in ("cnn", "patch"):
        torch.manual_seed(0)
        model = VLModel("tiny", in_chans=in_chans, stem=stem).eval()
        add_every_head(model)
        with torch.no_grad():
            outputs[stem] = model(torch.randn(2, in_chans, *size))
    want, got = outputs["cnn"], outputs["patch"]
    assert got["seg"].logits.shape == (2, 2, *size)
    assert got["depth"].depth.shape == (2, 1, *size)
    n = sum(math.ceil(size[0] / s) * math.ceil(size[1] / s) for s in (8, 16, 32))
    assert got["det"].cls_logits.shape == want["det"].cls_logits.shape == (2, n, 3)
    assert got["det"].boxes.shape == (2, n, 4)
    assert got["bev"].heatmap.shape == want["bev"].heatmap.shape
    for out in (got["seg"].logits, got["depth"].depth, got["det"].boxes, got["bev"].heatmap):
        assert torch.isfinite(out).all()


def test_checkpoint_round_trips_the_stem(tmp_path: Path):
    torch.manual_seed(0)
    model = VLModel("tiny", in_chans=1, stem="patch").eval()
    model.add_head("seg", task="segmentation", num_classes=2)
    model.add_head("det", task="detection", num_classes=3)
    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["backbone"]["stem"] == "patch"
    again = VLModel.from_pretrained(tmp_path / "ckpt")
    assert again.config.stem == "patch" and again.encoder.stem is None
    images = torch.randn(2, 1, 37, 53)
    with torch.no_grad():
        a, b = model(images), again(images)
    torch.testing.assert_close(a["seg"].logits, b["seg"].logits)
    torch.testing.assert_close(a["det"].boxes, b["det"].boxes)


def test_checkpoint_without_the_field_loads_as_the_hybrid(tmp_path: Path):
    VLModel("tiny", in_chans=1, text=None).save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    config = json.loads(path.read_text())
    del config["backbone"]["stem"]  # as written before the option existed
    path.write_text(json.dumps(config))
    again = VLModel.from_pretrained(tmp_path / "old")
    assert again.config.stem == "cnn" and again.encoder.stem is not None


def test_parameter_counts_differ_by_the_stem_only():
    hybrid, plain = count_parameters(get_config("small")), count_parameters(get_config("small", stem="patch"))
    assert hybrid.total != plain.total
    assert hybrid.total - hybrid.active == plain.total - plain.active  # same MoE, same idle experts


def test_invalid_stem_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match=r"stem must be one of \('cnn', 'patch'\).*got 'vit'"):
        get_config("tiny", stem="vit")
    with pytest.raises(ValueError, match="stem must be one of"):
        VLModel("tiny", stem="")
    VLModel("tiny", in_chans=1, text=None, stem="patch").save_pretrained(tmp_path / "bad")
    path = tmp_path / "bad" / "config.json"
    config = json.loads(path.read_text())
    config["backbone"]["stem"] = "resnet"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"field 'backbone' is not a valid BackboneConfig: stem must be one of"):
        VLModel.from_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match="multiple of 8"):
        SimpleFeaturePyramid(64, (16, 32), stride=12)
    with pytest.raises(ValueError, match="two positive widths"):
        SimpleFeaturePyramid(64, (16, 0))


# -- vlsdk pcb --backbone -----------------------------------------------------------------------


def pcb_args(*argv: str):
    import argparse

    from vlsdk_industrial.cli import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def test_backbone_option_maps_to_the_stem(capsys):
    from vlsdk_industrial.cli import config_from_args

    assert config_from_args(pcb_args("--quick")).stem == "cnn"
    assert config_from_args(pcb_args("--quick", "--backbone", "vit")).stem == "patch"
    with pytest.raises(SystemExit):
        pcb_args("--backbone", "resnet")
    assert "invalid choice: 'resnet' (choose from" in capsys.readouterr().err


def test_build_detector_with_the_patch_stem():
    from vlsdk_industrial.task import HEAD, build_detector

    model = build_detector("tiny", in_chans=2, stem="patch").eval()
    assert model.config.stem == "patch" and model.encoder.stem is None
    with torch.no_grad():
        out = model(torch.zeros(1, 2, 64, 64), heads=[HEAD])[HEAD]
    assert out.cls_logits.shape == (1, 8 * 8 + 4 * 4 + 2 * 2, 6)


@pytest.mark.vlsdk_entry_points
def test_pcb_quick_with_the_plain_vit(shared_data: Path, tmp_path: Path, capsys, plugin_host,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from vlsdk.cli import main

    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "industrial")
    data = shared_data / "deeppcb"
    if not (data / "PCBData").is_dir():
        pytest.skip(f"{data} holds no PCBData/")
    out = tmp_path / "run"
    assert main(["pcb", "--quick", "--backbone", "vit", "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    assert "F-score" in capsys.readouterr().out
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["settings"]["stem"] == "patch" and summary["steps"] == 3
    assert math.isfinite(summary["first_loss"]) and math.isfinite(summary["last_loss"])
    model = VLModel.from_pretrained(out / "model")
    assert model.config.stem == "patch" and model.encoder.stem is None and "pcb" in model.heads

"""Routing inspection: per-layer routing maps, utilisation, domain x expert table, plots, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vlsdk import VLModel
from vlsdk.inspect import (
    ROUTING_COMMAND,
    domain_expert_table,
    expert_utilisation,
    load_image,
    plot_domain_expert_table,
    plot_routing_map,
    plot_utilisation,
    routing_maps,
    top_experts,
)
from vlsdk.models.config import MoEConfig
from vlsdk.plugins import hookimpl


def _diverse(model: VLModel, scale: float = 20.0) -> VLModel:
    """Sharpen the random routers and spread their biases so several experts win patches."""
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.moe_layers:
            layer.router.weight.mul_(scale)
            layer.router.bias.copy_(torch.linspace(-1.0, 1.0, layer.router.num_experts))
    return model.eval()


def _images(b: int = 2, h: int = 64, w: int = 96, c: int = 3) -> torch.Tensor:
    torch.manual_seed(2)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    ramp = torch.stack([xx, yy, xx * yy][:c]) if c <= 3 else torch.rand(c, h, w)
    return (ramp + 0.5 * torch.rand(b, c, h, w)).float()


@pytest.fixture
def model() -> VLModel:
    torch.manual_seed(0)
    return _diverse(VLModel("tiny"))


@pytest.mark.parametrize("size", [(64, 96), (72, 40)])
def test_maps_have_each_layers_grid(model, size):
    images = _images(2, *size)
    maps = routing_maps(model, images)
    feats = model.forward_features(images)
    assert len(maps) == len(model.moe_layers) == 2
    for layer, stride in zip(maps, (16, 32), strict=True):
        h, w = feats.pyramid[stride].shape[-2:]  # the stage's token grid, padding included
        assert layer.grid == (h, w) and layer.stride == stride and layer.stage == layer.layer
        assert layer.expert.shape == layer.weight.shape == (2, h, w, 2)
        assert layer.top1.shape == (2, h, w)
        assert layer.upsampled(1, size).shape == size
        assert torch.all(layer.weight[..., 0] >= layer.weight[..., 1])  # best expert first
        assert torch.allclose(layer.weight.sum(-1), torch.ones(2, h, w), atol=1e-5)
    assert maps[0].grid != maps[1].grid


def test_topk_counts_match_router_stats(model):
    maps = routing_maps(model, _images(3))
    for layer, stats in zip(maps, maps.stats, strict=True):
        assert torch.equal(layer.counts(), stats.tokens_per_expert.cpu())
        assert int((layer.counts() > 0).sum()) >= 2, "routing should be diverse here"
    # the map is the router's decision in token order: row-major over (batch, h, w)
    first = maps[0]
    assert torch.equal(first.expert.reshape(-1, 2), maps.stats[0].topk_idx)


def test_top1_counts_match_router_stats_when_k_is_1():
    torch.manual_seed(0)
    model = _diverse(VLModel("tiny", moe=MoEConfig(num_experts=4, top_k=1, expert_hidden=32)))
    maps = routing_maps(model, _images(2))
    for layer, stats in zip(maps, maps.stats, strict=True):
        assert layer.top_k == 1
        assert torch.equal(layer.counts(top1=True), stats.tokens_per_expert.cpu())
        assert torch.allclose(layer.top1_weight, torch.ones_like(layer.top1_weight))


def test_maps_restore_training_mode_and_follow_inserted_experts(model):
    model.train()
    model.add_expert("toy.x", nn.Linear(64, 64), layers=[1], init_bias=50.0)
    maps = routing_maps(model.eval(), _images(1))
    assert maps[0].expert_names == [f"generic.{i}" for i in range(4)]
    assert maps[1].expert_names[-1] == "toy.x"
    assert torch.all(maps[1].top1 == 4)  # the open expert takes every patch of layer 1
    assert maps.expert_names[-1] == "toy.x"
    model.train()
    routing_maps(model, _images(1))
    assert model.training


def test_utilisation_shares_sum_to_one_and_entropy(model):
    stats = [model.forward_features(_images(2)).router_stats for _ in range(2)]
    one = expert_utilisation(stats[0])
    both = expert_utilisation(stats)
    names = [f"generic.{i}" for i in range(4)]
    for rows in (one, both):
        assert [r["layer"] for r in rows] == [0, 1]
        for r in rows:
            assert sum(r[n] for n in names) == pytest.approx(1.0)
            assert 0.0 <= r["entropy"] <= r["max_entropy"] + 1e-6
            assert r["max_entropy"] == pytest.approx(math.log(4))
            assert 0.0 <= r["load_entropy"] <= r["max_entropy"] + 1e-6
    assert both[0]["assignments"] == 2 * one[0]["assignments"]
    assert one[0]["entropy"] == pytest.approx(float(stats[0][0].entropy))
    # the features object and the maps are accepted as they are
    assert expert_utilisation(routing_maps(model, _images(2))) == [pytest.approx(r) for r in one]


def test_domain_table_shows_a_forced_expert(model):
    model.add_expert("toy.x", nn.Linear(64, 64), init_bias=50.0)  # takes every token
    model.add_expert("other.y", nn.Linear(64, 64))  # closed: -30
    images = {"medical": _images(2), "driving": [_images(1, 48, 48)[0], _images(1, 64, 64)]}
    table = domain_expert_table(model, images)
    assert table.domains == ["medical", "driving"]
    assert table.experts == ["toy.x", "other.y", "generic"]
    assert table.share.shape == (2, 3) and table.per_layer.shape == (2, 2, 3)
    assert np.allclose(table.share[:, 0], 1.0, atol=1e-4)
    assert np.allclose(table.share[:, 1], 0.0, atol=1e-6)
    assert np.allclose(table.share.sum(1), 1.0)
    assert np.all(table.share[:, :2].sum(1) <= 1.0 + 1e-9)
    assert table.tokens["medical"] == 2 * (4 * 6 + 2 * 3)
    assert table.own_share("medical") == 0.0
    rows = table.rows()
    assert rows[0]["domain"] == "medical" and rows[0]["toy.x"] == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(domain_expert_table(model, images, by="top1").share[:, 0], 1.0)
    assert np.allclose(domain_expert_table(model, images, by="assignments").share[:, 0], 0.5)  # 1 of k=2
    with pytest.raises(ValueError, match="by must be"):
        domain_expert_table(model, images, by="votes")


def test_domain_table_own_share_follows_the_domain():
    torch.manual_seed(0)
    model = _diverse(VLModel("tiny"))
    model.add_expert("medical.lesion", nn.Linear(64, 64), layers=[0], init_bias=50.0)
    table = domain_expert_table(model, {"medical": _images(2), "driving": _images(1)})
    # open in one of two layers: at most the share of layer 0's tokens (24 of 30 per image)
    assert table.own_share("medical") == pytest.approx(24 / 30, abs=1e-3)
    assert table.own_share("driving") == 0.0
    assert table.per_layer[0, 0, 0] == pytest.approx(1.0, abs=1e-4)
    assert table.per_layer[1, 0, 0] == 0.0


def test_top_experts_per_layer(model):
    rows = top_experts(model, _images(1)[0], n=2)
    assert {r["layer"] for r in rows} == {0, 1}
    for layer in (0, 1):
        mine = [r for r in rows if r["layer"] == layer]
        assert 1 <= len(mine) <= 2 and [r["rank"] for r in mine] == list(range(1, len(mine) + 1))
        assert all(a["weight"] >= b["weight"] for a, b in zip(mine, mine[1:], strict=False))
        assert sum(r["weight"] for r in mine) <= 1.0 + 1e-6
        assert all(0.0 < r["mean_gate"] <= 1.0 + 1e-6 for r in mine)
    model.add_expert("toy.x", nn.Linear(64, 64), init_bias=50.0)
    rows = top_experts(model, _images(1), n=1)
    assert [r["expert"] for r in rows] == ["toy.x", "toy.x"]
    assert rows[0]["weight"] == pytest.approx(1.0, abs=1e-4) and rows[0]["top1"] == 1.0
    with pytest.raises(ValueError, match="one image"):
        top_experts(model, _images(2))


def _check_png(path, min_bytes=5_000):
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > min_bytes
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert float(pixels[..., :3].std()) > 0.05  # not a blank canvas
    return pixels


def test_plots_are_written_and_not_blank(model, tmp_path):
    images = _images(2)
    maps = routing_maps(model, images)
    _check_png(plot_routing_map(maps, images, tmp_path / "map.png", index=1))
    _check_png(plot_routing_map(maps, None, tmp_path / "map_only.png", layers=[1]))
    _check_png(plot_utilisation(maps.stats, tmp_path / "util.png"))
    model.add_expert("toy.x", nn.Linear(64, 64), init_bias=2.0)
    table = domain_expert_table(model, {"a": images, "b": _images(1)})
    _check_png(plot_domain_expert_table(table, tmp_path / "domains.png"))
    with pytest.raises(ValueError, match="PNG"):
        plot_utilisation(maps, tmp_path / "util.jpg")


def test_load_image_png_and_npy(tmp_path):
    from matplotlib.image import imsave

    rgb = np.random.default_rng(0).random((20, 30, 3))
    imsave(tmp_path / "a.png", rgb)
    assert load_image(tmp_path / "a.png", 3).shape == (1, 3, 20, 30)
    grey = load_image(tmp_path / "a.png", 1)
    assert grey.shape == (1, 1, 20, 30) and 0.0 <= float(grey.min()) and float(grey.max()) <= 1.0
    np.save(tmp_path / "b.npy", rgb.transpose(2, 0, 1).astype(np.float32))
    assert load_image(tmp_path / "b.npy", 3).shape == (1, 3, 20, 30)
    np.save(tmp_path / "c.npy", rgb[..., 0])
    assert load_image(tmp_path / "c.npy", 3).shape == (1, 3, 20, 30)
    with pytest.raises(ValueError, match="channels"):
        load_image(tmp_path / "b.npy", 5)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "x.nii").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported image type"):
        load_image(tmp_path / "x.nii")


class _RoutingPlugin:
    @hookimpl
    def vlsdk_register_commands(self, register):
        register("routing", ROUTING_COMMAND)


def test_cli_routing_on_a_saved_model(tmp_path, plugin_host, register_plugin, capsys):
    from matplotlib.image import imsave

    from vlsdk.cli import main

    if "routing" not in plugin_host.registry("commands").names():
        register_plugin(_RoutingPlugin(), "routing-test")
    torch.manual_seed(0)
    _diverse(VLModel("tiny")).save_pretrained(tmp_path / "model")
    imsave(tmp_path / "board.png", _images(1, 64, 80)[0].permute(1, 2, 0).clamp(0, 1).numpy())
    out = tmp_path / "out"
    status = main(["routing", str(tmp_path / "board.png"), "--model", str(tmp_path / "model"), "--out", str(out)])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "EXPERT" in printed.out and f"report: {out / 'report.html'}" in printed.out
    for name in ("report.html", "metrics.json", "routing_map.png", "utilisation.png"):
        assert (out / name).is_file(), name
    _check_png(out / "routing_map.png")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["routing/layer0/entropy"] <= math.log(4) + 1e-6
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2 and "Top experts" in html
    # errors a person can act on
    status = main(["routing", str(tmp_path / "missing.png"), "--model", str(tmp_path / "model")])
    assert status == 1 and "missing.png" in capsys.readouterr().err
    status = main(["routing", str(tmp_path / "board.png"), "--model", str(tmp_path / "nomodel")])
    assert status == 1 and "nomodel" in capsys.readouterr().err

"""HybridEncoder shapes for every named config, input channels, MoE placement, stem entries, the upsampled
stride-16 level, config overrides by name and bad arguments."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vlsdk.models.config import CONFIGS, BackboneConfig, MoEConfig, get_config
from vlsdk.models.encoder import HybridEncoder
from vlsdk.models.model import count_parameters


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pyramid_and_tokens_for_every_config(name):
    cfg = get_config(name)
    enc = HybridEncoder(cfg).eval()
    with torch.no_grad():
        feats = enc.forward_features(torch.randn(1, 3, 70, 96))
    assert sorted(feats.pyramid) == [4, 8, 16, 32]
    assert feats.channels == enc.channels
    for stride, fmap in feats.pyramid.items():
        assert fmap.shape[-2:] == (-(-70 // stride), -(-96 // stride)), stride
    h, w = feats.grid
    assert feats.tokens.shape == (1, h * w, cfg.embed_dim)
    moe_blocks = sum(cfg.is_moe_block(i) for i in range(sum(cfg.depths)))
    assert len(feats.router_stats) == moe_blocks == len(enc.moe_layers)


@pytest.mark.parametrize("in_chans", [1, 3, 5])
def test_input_channels(in_chans):
    enc = HybridEncoder(get_config("tiny", in_chans=in_chans))
    feats = enc.forward_features(torch.randn(2, in_chans, 64, 64))
    assert feats.tokens.shape[0] == 2
    with pytest.raises(ValueError, match=rf"\(B, {in_chans}, H, W\)"):
        enc.forward_features(torch.randn(2, in_chans + 1, 64, 64))


def test_moe_every_other_block_and_dense_config():
    cfg = get_config("tiny", depths=(2, 2), moe=MoEConfig(num_experts=4, top_k=1, expert_hidden=32, every=2))
    enc = HybridEncoder(cfg)
    assert [b.is_moe for s in enc.stages for b in s.blocks] == [False, True, False, True]
    dense = HybridEncoder(get_config("tiny", moe=None))
    assert dense.moe_layers == []
    assert dense.forward_features(torch.randn(1, 3, 32, 32)).router_stats == []


def test_gradients_reach_stem_and_experts():
    enc = HybridEncoder(get_config("tiny"))
    feats = enc.forward_features(torch.randn(2, 3, 64, 64))
    loss = feats.tokens.pow(2).mean() + sum(s.aux_loss for s in feats.router_stats)
    loss.backward()
    assert enc.stem.conv1.weight.grad.abs().sum() > 0
    assert enc.moe_layers[0].router.weight.grad.abs().sum() > 0


def test_parameter_counts_total_vs_active():
    for name in CONFIGS:
        counts = count_parameters(name)
        assert 0 < counts.active <= counts.total
    base = count_parameters("base")
    assert base.active < 0.6 * base.total  # sparse: most expert weights idle per token


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"in_chans": 0}, "in_chans"),
        ({"embed_dim": 100, "num_heads": 3}, "divisible by num_heads"),
        ({"depths": ()}, "depths"),
        ({"moe": MoEConfig(num_experts=4, top_k=5)}, "top_k"),
        ({"moe": MoEConfig(every=0)}, "every"),
        ({"stem_widths": (8,)}, "stem_widths"),
        ({"stem_entry": "pixel"}, "stem_entry"),
    ],
)
def test_bad_config_raises_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        get_config("tiny", **changes)


def test_unknown_config_name_lists_choices():
    with pytest.raises(ValueError, match="base"):
        get_config("huge")


def test_config_round_trips_through_dict():
    cfg = get_config("small", in_chans=1)
    assert BackboneConfig(**cfg.to_dict()) == cfg


def test_cached_position_embedding_follows_the_grid_and_serves_training_after_inference_mode():
    torch.manual_seed(0)
    enc = HybridEncoder(get_config("tiny")).eval()
    fresh = copy.deepcopy(enc)
    small, tall = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 96, 64)
    with torch.inference_mode():
        enc(small)
        tall_tokens = enc(tall).tokens  # a second grid: its own embedding
        assert torch.equal(enc(small).tokens, fresh(small).tokens)
    with torch.no_grad():
        assert torch.equal(tall_tokens, fresh(tall).tokens)
    enc.train()
    feats = enc(tall)  # the embedding cached under inference_mode is a normal tensor
    (feats.tokens.pow(2).mean() + sum(s.aux_loss for s in feats.router_stats)).backward()
    assert enc.stem.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stem", ["cnn", "patch"])
def test_max_stride_skips_the_later_stages_and_keeps_the_levels_bit_identical(stem):
    torch.manual_seed(0)
    enc = HybridEncoder(get_config("tiny", stem=stem, depths=(1, 2, 1))).eval()  # strides 4 ... 64
    images = torch.randn(2, 3, 128, 96)
    calls = [0] * len(enc.stages)
    hooks = [block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, stage in enumerate(enc.stages) for block in stage.blocks]
    try:
        with torch.no_grad():
            full = enc.forward_features(images)
            assert calls == [len(s.blocks) for s in enc.stages]
            for max_stride, ran in ((4, 1), (8, 1), (16, 1), (32, 2), (64, 3)):
                calls[:] = [0] * len(enc.stages)
                part = enc(images, max_stride=max_stride)
                assert calls == [len(s.blocks) if i < ran else 0 for i, s in enumerate(enc.stages)], max_stride
                assert sorted(part.pyramid) == list(enc.strides[:2 + ran])
                for s, fmap in part.pyramid.items():
                    assert torch.equal(fmap, full.pyramid[s]), (max_stride, s)
                assert len(part.router_stats) == sum(len(s.blocks) for s in enc.stages[:ran])
                assert part.grid == tuple(part.pyramid[enc.strides[1 + ran]].shape[-2:])
            assert torch.equal(part.tokens, full.tokens)  # all stages ran: the final norm too
    finally:
        for h in hooks:
            h.remove()
    for bad in (2, 12, 128):
        with pytest.raises(ValueError, match="max_stride must be one of"):
            enc.forward_features(images, max_stride=bad)


SIZES = [(64, 64), (70, 96), (37, 53)]  # square, non-square, odd


def test_patchify_stem_entry_reaches_stride_4_in_one_4x4_convolution():
    torch.manual_seed(0)
    enc = HybridEncoder(get_config("tiny", stem_entry="patchify")).eval()
    assert enc.stem.conv1.kernel_size == (4, 4) and enc.stem.conv1.stride == (4, 4)
    assert isinstance(enc.stem.pool, nn.Identity)
    for size in SIZES:
        with torch.no_grad():
            feats = enc(torch.randn(1, 3, *size))
        for stride, fmap in feats.pyramid.items():
            assert fmap.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride)), (size, stride)
    x = torch.randn(1, 3, 16, 16)
    y = x.clone()
    y[..., 5, 6] += 1.0  # a pixel of the second 4x4 patch on each axis
    with torch.no_grad():
        change = (enc.stem.conv1(y) - enc.stem.conv1(x)).abs().sum(1)[0]
    assert change[1, 1] > 0 and change.count_nonzero() == 1  # non-overlapping patches: only its own position
    resnet = HybridEncoder(get_config("tiny")).eval()
    assert resnet.stem.conv1.kernel_size == (7, 7) and isinstance(resnet.stem.pool, nn.MaxPool2d)


@pytest.mark.parametrize("stem", ["cnn", "patch"])
def test_stride_16_level_is_upsampled_from_stride_32_tokens(stem):
    torch.manual_seed(0)
    enc = HybridEncoder(get_config("tiny", stem=stem, patch_size=4, depths=(2,))).eval()
    assert enc.strides == (4, 8, 16, 32) and enc.channels[16] == enc.config.embed_dim
    assert isinstance(enc.up16[0], nn.ConvTranspose2d) and enc.up16[0].stride == (2, 2)
    assert HybridEncoder(get_config("tiny", stem=stem)).up16 is None  # stride-16 tokens need none
    for size in SIZES:
        with torch.no_grad():
            feats = enc(torch.randn(2, 3, *size))
        assert list(feats.pyramid) == [4, 8, 16, 32]
        for stride, fmap in feats.pyramid.items():
            assert fmap.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride)), (size, stride)
        assert feats.grid == tuple(feats.pyramid[32].shape[-2:])
        h, w = feats.pyramid[16].shape[-2:]
        with torch.no_grad():
            assert torch.allclose(enc.up16(feats.pyramid[32])[..., :h, :w], feats.pyramid[16])
    enc.train()
    enc(torch.randn(2, 3, 64, 64)).pyramid[16].pow(2).mean().backward()
    assert enc.up16[0].weight.grad.abs().sum() > 0
    assert enc.stages[0].blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # through the tokens


def test_base_runs_every_block_on_stride_32_tokens():
    cfg = get_config("base")
    assert cfg.token_strides == (32,) and sum(cfg.depths) == 12 and cfg.embed_dim == 768
    assert cfg.strides == (4, 8, 16, 32) and cfg.stem_entry == "patchify"


def test_config_name_carries_field_overrides():
    cfg = get_config("base@depths=4,8@patch_size=2@top_k=2@stem_entry=resnet")
    assert (cfg.depths, cfg.patch_size, cfg.moe.top_k, cfg.stem_entry) == ((4, 8), 2, 2, "resnet")
    assert cfg.strides == (4, 8, 16, 32) and cfg.name == "base"
    assert get_config("tiny@depths=3,").depths == (3,)
    assert get_config("tiny@mlp_ratio=3.5@jitter=0.1").mlp_ratio == 3.5
    assert get_config("tiny@jitter=0.1").moe.jitter == 0.1
    assert get_config("tiny@embed_dim=128", embed_dim=96).embed_dim == 96  # keyword overrides come last


@pytest.mark.parametrize(("name", "message"), [
    ("tiny@colour=3", "no field 'colour'"),
    ("tiny@depths", "field=value"),
    ("tiny@stem_entry=pixel", "stem_entry"),
    ("huge@depths=1,", "unknown config 'huge'"),
])
def test_bad_config_override_names_the_problem(name, message):
    with pytest.raises(ValueError, match=message):
        get_config(name)

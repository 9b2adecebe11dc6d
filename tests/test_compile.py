"""torch.compile(fullgraph=True) of the encoder's inference forward, and the grouped path's weight cache."""

from __future__ import annotations

import pytest
import torch

from vlsdk.models.config import MoEConfig, get_config
from vlsdk.models.encoder import HybridEncoder
from vlsdk.models.experts import ExpertMLP
from vlsdk.models.moe import DynamicMoE
from vlsdk.models.text import TextFeatures

pytestmark = pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="this torch has no torch._grouped_mm")


@pytest.fixture(autouse=True, scope="module")
def _own_inductor_cache(tmp_path_factory: pytest.TempPathFactory):
    """A private inductor cache: a compile killed mid-write elsewhere leaves a truncated .so in the shared
    /tmp/torchinductor_<user>, which would fail every later compile that hashes to it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    yield
    mp.undo()


def _encoder(name: str) -> HybridEncoder:
    torch.manual_seed(0)
    enc = HybridEncoder(get_config(name)).eval()
    with torch.no_grad():  # spread the routing so every expert gets tokens
        for moe in enc.moe_layers:
            moe.router.weight.normal_(std=1.0)
    return enc


def _text(enc: HybridEncoder, batch: int) -> TextFeatures | None:
    if enc.config.text is None:
        return None
    tokens = torch.randn(batch, 5, enc.config.text.dim)
    return TextFeatures(tokens=tokens, mask=torch.ones(batch, 5, dtype=torch.bool), pooled=tokens.mean(1))


def _assert_features_close(a, b) -> None:
    torch.testing.assert_close(a.tokens, b.tokens, rtol=1e-4, atol=1e-4)
    assert a.grid == b.grid and sorted(a.pyramid) == sorted(b.pyramid)
    for s in a.pyramid:
        torch.testing.assert_close(a.pyramid[s], b.pyramid[s], rtol=1e-4, atol=1e-4)
    for sa, sb in zip(a.router_stats, b.router_stats, strict=True):
        torch.testing.assert_close(sa.tokens_per_expert, sb.tokens_per_expert)


@pytest.mark.parametrize("name", ["tiny", pytest.param("edge", marks=pytest.mark.slow),
                                  pytest.param("small", marks=pytest.mark.slow),
                                  pytest.param("base", marks=pytest.mark.slow)])
def test_fullgraph_compile_matches_eager(name):
    """One graph for images alone and for images + text through closed gates, equal to eager."""
    torch._dynamo.reset()
    enc = _encoder(name)
    images = torch.randn(2, 3, 64, 64)
    text = _text(enc, 2)
    compiled = torch.compile(enc, fullgraph=True)  # raises on any graph break
    with torch.no_grad():
        for moe in enc.moe_layers:
            moe.grouped = False  # eager reference: the per-expert loop
        expected = enc(images)
        for moe in enc.moe_layers:
            moe.grouped = None  # compiled: picks the grouped GEMM by itself
        got = compiled(images)
        _assert_features_close(got, expected)
        if text is not None:
            assert all(not g.open_at_eval for g in enc.gates)
            _assert_features_close(compiled(images, text), expected)  # closed gates skip the text


def test_compiled_gate_opens_after_refresh():
    """A gate opened in place is seen by the compiled encoder after refresh() (a recompile)."""
    torch._dynamo.reset()
    enc = _encoder("tiny")
    images, text = torch.randn(1, 3, 32, 32), _text(enc, 1)
    compiled = torch.compile(enc, fullgraph=True)
    with torch.no_grad():
        closed = compiled(images, text).tokens
        for gate in enc.gates:
            gate.alpha.fill_(0.5)
            gate.refresh()
        opened = compiled(images, text).tokens
        eager = enc(images, text).tokens
    assert not torch.allclose(opened, closed)
    torch.testing.assert_close(opened, eager, rtol=1e-4, atol=1e-4)


def test_frozen_rows_need_no_host_read():
    """The router's frozen-row mask is a tensor op: it traces in one graph and still freezes the row."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    moe = DynamicMoE(16, MoEConfig(num_experts=4, top_k=2, expert_hidden=16, num_shared=0))
    moe.set_frozen("generic.1", True)
    routing = torch.compile(moe.router, fullgraph=True)(torch.randn(12, 16))
    routing.logits.pow(2).sum().backward()
    grad = moe.router.weight.grad
    assert grad[1].abs().sum() == 0 and grad[0].abs().sum() > 0 and moe.router.bias.grad[1] == 0


def _grouped_moe() -> tuple[DynamicMoE, torch.Tensor]:
    torch.manual_seed(0)
    moe = DynamicMoE(16, MoEConfig(num_experts=4, top_k=2, expert_hidden=32, num_shared=0))
    with torch.no_grad():
        moe.router.weight.normal_(std=1.0)
    moe.grouped = True
    return moe, torch.randn(2, 10, 16)


def _loop_output(moe: DynamicMoE, x: torch.Tensor) -> torch.Tensor:
    moe.grouped = False
    try:
        with torch.no_grad():
            return moe(x)[0]
    finally:
        moe.grouped = True


def test_weight_cache_follows_optimizer_steps():
    moe, x = _grouped_moe()
    opt = torch.optim.SGD(moe.parameters(), lr=0.5)
    with torch.no_grad():
        before = moe(x)[0]  # fills the cache
    torch.testing.assert_close(before, _loop_output(moe, x), rtol=1e-5, atol=1e-6)
    for _ in range(2):
        opt.zero_grad()
        moe(x)[0].pow(2).sum().backward()
        opt.step()
        with torch.no_grad():
            after = moe(x)[0]
        assert not torch.allclose(after, before)
        torch.testing.assert_close(after, _loop_output(moe, x), rtol=1e-5, atol=1e-6)
        before = after


def test_weight_cache_follows_in_place_edits_and_loading():
    moe, x = _grouped_moe()
    with torch.no_grad():
        moe(x)
        moe.expert("generic.2").fc1.bias.add_(1.0)  # only the folded fc1 bias
        torch.testing.assert_close(moe(x)[0], _loop_output(moe, x), rtol=1e-5, atol=1e-6)
        moe.expert("generic.0").fc2.bias.fill_(3.0)  # only the fc2 bias
        torch.testing.assert_close(moe(x)[0], _loop_output(moe, x), rtol=1e-5, atol=1e-6)
    other, _ = _grouped_moe()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.0)
        moe.load_state_dict(other.state_dict())
        torch.testing.assert_close(moe(x)[0], other(x)[0], rtol=1e-5, atol=1e-6)


def test_weight_cache_follows_add_and_remove_expert():
    moe, x = _grouped_moe()
    with torch.no_grad():
        moe(x)
        moe.add_expert("medical.extra", ExpertMLP(16, 32))
        moe.set_router_bias("medical.extra", 0.0)
        torch.testing.assert_close(moe(x)[0], _loop_output(moe, x), rtol=1e-5, atol=1e-6)  # cache rebuilt
        moe.expert("generic.1").fc2.weight.mul_(2.0)
        moe.remove_expert("medical.extra")
        assert moe._use_grouped(x.reshape(-1, 16))
        torch.testing.assert_close(moe(x)[0], _loop_output(moe, x), rtol=1e-5, atol=1e-6)

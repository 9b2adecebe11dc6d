"""The MoE layer's Triton inference kernels (vlsdk.models.moe_kernels) against the aten path.

Without a GPU they run in Triton's CPU interpreter (tests/conftest.py sets ``TRITON_INTERPRET``
before Triton is imported); on a GPU machine the same tests run the compiled kernels on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("triton", reason="the MoE kernels are Triton kernels (pip install triton; CUDA torch ships it)")

from vlsdk.models import moe_kernels  # noqa: E402
from vlsdk.ops import triton_launch  # noqa: E402
from vlsdk.models.config import MoEConfig  # noqa: E402
from vlsdk.models.moe import DynamicMoE  # noqa: E402
from vlsdk.models.router import Router  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

if DEVICE == "cpu" and not triton_launch.interpreted():
    pytest.skip("no GPU and Triton's interpreter is off (TRITON_INTERPRET was not set before triton was imported)",
                allow_module_level=True)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize(("n_tok", "n_exp", "k"), [(37, 17, 4), (5, 8, 1), (64, 40, 8)])
def test_route_picks_the_routers_experts_with_its_weights(score: str, n_tok: int, n_exp: int, k: int) -> None:
    router = Router(24, n_exp, k, score=score).to(DEVICE)
    x = torch.randn(n_tok, 24, generator=torch.Generator().manual_seed(n_exp)).to(DEVICE)
    with torch.no_grad():
        ref = router(x)
        got = router(x, fused=True)
    assert torch.equal(got.topk_idx, ref.topk_idx)
    assert got.key is not None and got.key.dtype == torch.uint8
    assert torch.equal(got.key.long(), ref.topk_idx.reshape(-1))
    torch.testing.assert_close(got.topk_weight, ref.topk_weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.topk_weight.sum(1), torch.ones(n_tok, device=DEVICE))


def test_gather_rows_adds_the_bias_column_shared_rows_and_the_inverse() -> None:
    n_tok, k, dim, pad = 9, 3, 20, 16
    x = torch.randn(n_tok, dim, device=DEVICE)
    order = torch.randperm(n_tok * k, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    for source, dtype in ((x, torch.float32), (x.bfloat16(), torch.bfloat16), (x, torch.bfloat16)):
        rows, inverse = moe_kernels.gather_rows(source, order, k, pad, dtype, shared=True)
        assert rows.shape == (n_tok * k + n_tok, dim + pad) and rows.dtype == dtype
        expect = torch.cat([source[order // k], source]).to(dtype)
        if source.dtype == dtype:
            assert torch.equal(rows[:, :dim], expect)
        else:  # cast on the way (autocast); Triton's CPU interpreter truncates where CUDA rounds to nearest
            torch.testing.assert_close(rows[:, :dim], expect, rtol=2**-7, atol=0)
        assert (rows[:, dim] == 1).all() and (rows[:, dim + 1:] == 0).all()
        assert torch.equal(order[inverse], torch.arange(n_tok * k, device=DEVICE))


def test_combine_is_the_gate_weighted_sum_of_biased_rows() -> None:
    gen = torch.Generator().manual_seed(2)
    n_tok, k, dim, n_generic = 11, 2, 24, 4
    idx = torch.randint(0, n_generic + 1, (n_tok, k), generator=gen)  # id 4: a domain expert's slot
    weight = torch.rand(n_tok, k, generator=gen)
    order = torch.randperm(n_tok * k, generator=gen)
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(n_tok * k))
    ys = torch.randn(n_tok * k + n_tok, dim, generator=gen)
    bias = torch.randn(n_generic + 1, dim, generator=gen)  # the shared expert's last
    got = moe_kernels.combine(*(t.to(DEVICE) for t in (ys, inverse, idx, weight, bias)), n_generic,
                              torch.float32, shared=True)
    slots = ys[inverse].view(n_tok, k, dim).double()
    generic = (idx < n_generic).double() * weight.double()
    expect = (generic[..., None] * (slots + bias.double()[idx.clamp(max=n_generic - 1)])).sum(1)
    expect += ys[n_tok * k:].double() + bias[n_generic].double()
    torch.testing.assert_close(got.cpu().double(), expect, rtol=1e-5, atol=1e-5)


class _Scale(nn.Module):
    """A domain expert that needs no context."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@pytest.mark.parametrize("num_shared", [0, 1, 2])
@pytest.mark.parametrize("domain", [False, True])
def test_fused_layer_matches_the_grouped_path(num_shared: int, domain: bool) -> None:
    torch.manual_seed(0)
    moe = DynamicMoE(32, MoEConfig(num_experts=6, top_k=2, expert_hidden=16, num_shared=num_shared)).to(DEVICE).eval()
    if domain:
        moe.add_expert("test.scale", _Scale(32), init_bias=0.5)
    moe.grouped = True
    x = torch.randn(2, 12, 32, device=DEVICE)
    with torch.no_grad():
        moe.fused = False
        ref, ref_stats = moe(x, grid=(3, 4))
        moe.fused = True
        assert moe_kernels.available(x)  # (on CUDA: the one-time check runs here, with launches of its own)
        before = sum(triton_launch.LAUNCHES.values())
        out, stats = moe(x, grid=(3, 4))
        launched = sum(triton_launch.LAUNCHES.values()) - before
    assert launched == 3  # route, gather, combine
    assert torch.equal(stats.topk_idx, ref_stats.topk_idx)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.tokens_per_expert, ref_stats.tokens_per_expert)


def test_fused_bf16_is_as_close_to_float32_as_the_grouped_path() -> None:
    torch.manual_seed(0)
    moe = DynamicMoE(64, MoEConfig(num_experts=8, top_k=2, expert_hidden=32, num_shared=1)).to(DEVICE).eval()
    moe.grouped = True
    x = torch.randn(4, 16, 64, device=DEVICE)
    with torch.no_grad():
        exact, _ = moe(x)
        moe.to(torch.bfloat16)
        moe.fused = False
        grouped, _ = moe(x.bfloat16())
        moe.fused = True
        fused, _ = moe(x.bfloat16())
    err = {name: ((y.float() - exact).norm() / exact.norm()).item() for name, y in (("grouped", grouped),
                                                                                    ("fused", fused))}
    # One rounding of a float32 sum on CUDA, not several in bf16; Triton's CPU interpreter truncates
    # its bf16 stores instead of rounding them, which costs up to twice the rounding error.
    slack = 1.05 if DEVICE == "cuda" else 2.0
    assert err["fused"] <= err["grouped"] * slack, err
    assert err["fused"] < 1e-2, err


def test_training_and_compiling_keep_the_aten_path() -> None:
    moe = DynamicMoE(32, MoEConfig(num_experts=4, top_k=2, expert_hidden=16)).to(DEVICE)
    moe.grouped, moe.fused = True, True
    before = sum(triton_launch.LAUNCHES.values())
    out, stats = moe(torch.randn(1, 8, 32, device=DEVICE, requires_grad=True))
    out.sum().backward()
    assert sum(triton_launch.LAUNCHES.values()) == before  # gradients on: no kernel (they have no backward)
    assert stats.probs is not None
    moe.fused = False
    with torch.no_grad():
        moe(torch.randn(1, 8, 32, device=DEVICE))
    assert sum(triton_launch.LAUNCHES.values()) == before


def test_empty_input_launches_nothing() -> None:
    idx, key, weight = moe_kernels.route(torch.empty(0, 5, device=DEVICE), 2)
    assert idx.shape == (0, 2) and key.shape == (0,) and weight.shape == (0, 2)
    rows, inverse = moe_kernels.gather_rows(torch.empty(0, 8, device=DEVICE), torch.empty(0, dtype=torch.long,
                                                                                            device=DEVICE),
                                            2, 16, torch.float32)
    assert rows.shape == (0, 24) and inverse.shape == (0,)


def test_the_check_passes_here() -> None:
    """The check the layer runs once per CUDA device before using the kernels (here on this device)."""
    assert moe_kernels.check(torch.device(DEVICE)) is None


def test_a_kernel_that_cannot_build_is_reported_and_left_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(*args: object, **kwargs: object) -> None:
        raise RuntimeError("ptxas not found")

    monkeypatch.setattr(moe_kernels, "route", no_compiler)
    assert "ptxas not found" in moe_kernels.check(torch.device(DEVICE))
    monkeypatch.setattr(moe_kernels, "_disabled", {})
    monkeypatch.setattr(moe_kernels, "_checked", set())
    calls = []
    monkeypatch.setattr(moe_kernels, "check", lambda device: calls.append(device) or "ptxas not found")
    device = torch.device("cuda", 97)  # (only a key here: the check is replaced)
    with pytest.warns(UserWarning, match="(?s)Triton kernels failed on cuda:97.*aten path"):
        assert moe_kernels.self_check(device) == "ptxas not found"
    assert moe_kernels.self_check(device) == "ptxas not found"  # no second check, no second warning
    assert calls == [device]


def test_a_launch_that_fails_falls_back_to_the_aten_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that fails at a real call (a new shape) warns once and the layer answers with aten."""
    torch.manual_seed(0)
    moe = DynamicMoE(32, MoEConfig(num_experts=4, top_k=2, expert_hidden=16, num_shared=1)).to(DEVICE).eval()
    moe.grouped = True
    x = torch.randn(1, 8, 32, device=DEVICE)
    with torch.no_grad():
        moe.fused = False
        ref, _ = moe(x)
        moe.fused = True
        assert moe_kernels.available(x)
        monkeypatch.setattr(moe_kernels, "_disabled", {})
        broken = moe_kernels._kernels()
        monkeypatch.setattr(moe_kernels, "_kernels", lambda: type(broken)(**{**vars(broken), "combine": None}))
        with pytest.warns(UserWarning, match="(?s)combine.*aten path"):
            out, _ = moe(x)
        torch.testing.assert_close(out, ref)
        assert not moe_kernels.available(x)


def test_the_launch_cost_benchmark_cases_run() -> None:
    """benchmarks/launch_cost.py times these calls on a GPU; here each runs once (three launch kernels)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from launch_cost import cases

    before = sum(triton_launch.LAUNCHES.values())
    with torch.no_grad():
        for fn in cases(torch.device(DEVICE)).values():
            fn()
    assert sum(triton_launch.LAUNCHES.values()) - before == 2 + 3  # cases() routes and gathers once, then three cases

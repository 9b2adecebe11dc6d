"""The expert contract is checked at several token counts and dtypes, with real bad experts.

``vlsdk.models.experts.check_expert`` runs when an expert enters a MoE layer (1, 7 and 64 tokens
in the parameters' dtype); ``vlsdk.testing.check_expert`` is the plugin author's stricter helper
(7, 1, 64 and 0 tokens, float32 and bfloat16, gradients).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlsdk import VLModel
from vlsdk.models.experts import ExpertMLP
from vlsdk.models.experts import check_expert as core_check_expert
from vlsdk.testing import check_expert

DIM = 16


class ToDouble(nn.Module):
    """Changes the dtype: computes in float64 and forgets to cast back."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).double()


class SixteenPositions(nn.Module):
    """Adds a learned table of 16 token positions: right for up to 16 tokens only."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.pos = nn.Parameter(torch.zeros(16, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.pos[: x.shape[0]]


class TokenStandardised(nn.Module):
    """Standardises over the routed tokens: the unbiased std of one token is NaN."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj((x - x.mean(0)) / x.std(0))  # (torch also warns about the one-token std)


class FloatOut(nn.Module):
    """Right in float32; in bfloat16 it hands back float32."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).float()


class MaxPooled(nn.Module):
    """Mixes in the max over the routed tokens: ``max`` of zero tokens raises."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + x.max(0).values


def test_good_experts_pass_both_checks() -> None:
    assert isinstance(core_check_expert("generic.x", ExpertMLP(DIM, 32), DIM), ExpertMLP)
    assert isinstance(check_expert(ExpertMLP, dim=DIM, hidden=32), ExpertMLP)


@pytest.mark.parametrize(
    ("expert", "message"),
    [
        (ToDouble, r"expert 'probe\.bad': for n=1 tokens of dtype torch\.float32 it returned dtype torch\.float64"),
        (SixteenPositions, r"expert 'probe\.bad': forward failed on \(n=64, 64\) tokens: RuntimeError: The size"),
        (TokenStandardised, r"expert 'probe\.bad': for n=1 finite tokens it returned 64 non-finite value\(s\)"),
    ],
)
@pytest.mark.filterwarnings("ignore:std\\(\\).*degrees of freedom:UserWarning")
def test_adding_a_bad_expert_names_it_the_token_count_and_the_fault(expert: type[nn.Module], message: str) -> None:
    model = VLModel("tiny")
    with pytest.raises(ValueError, match=message):
        model.add_expert("probe.bad", expert(model.moe_layers[0].dim))
    assert all("probe.bad" not in layer.expert_names for layer in model.moe_layers)


def test_core_check_runs_in_the_experts_dtype_and_leaves_the_random_state() -> None:
    expert = ExpertMLP(DIM, 32).to(torch.bfloat16).train()
    state = torch.random.get_rng_state()
    assert core_check_expert("generic.x", expert, DIM) is expert and expert.training
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match="for n=1 tokens of dtype torch.bfloat16 it returned dtype torch.float32"):
        core_check_expert("probe.float_out", FloatOut(DIM).to(torch.bfloat16), DIM)


@pytest.mark.parametrize(
    ("expert", "message"),
    [
        (ToDouble, r"output dtype torch\.float64 != input dtype torch\.float32 \(n=7\)"),
        (SixteenPositions, r"forward on \(64, 16\) tokens raised RuntimeError: .*\(n=64, dtype torch\.float32\)"),
        (TokenStandardised, r"output has 16 NaN or inf value\(s\) of 16 \(n=1, dtype torch\.float32\)"),
        (FloatOut, r"output dtype torch\.float32 != input dtype torch\.bfloat16 \(n=7\)"),
        (MaxPooled, r"forward on \(0, 16\) tokens raised IndexError: .*\(n=0, dtype torch\.float32\)"),
    ],
)
@pytest.mark.filterwarnings("ignore:std\\(\\).*degrees of freedom:UserWarning")
def test_testing_helper_names_the_token_count_and_dtype(expert: type[nn.Module], message: str) -> None:
    with pytest.raises(AssertionError, match=rf"expert {expert.__qualname__}: .*{message}"):
        check_expert(expert, dim=DIM)


def test_testing_helper_counts_and_dtypes_can_be_narrowed() -> None:
    assert isinstance(check_expert(FloatOut, dim=DIM, dtypes=[torch.float32]), FloatOut)
    assert isinstance(check_expert(MaxPooled, dim=DIM, token_counts=[7, 1, 64]), MaxPooled)
    with pytest.raises(AssertionError, match="token_counts must be in 0..64"):
        check_expert(ExpertMLP, dim=DIM, token_counts=[65])

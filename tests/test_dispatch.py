"""The MoE's gather-only dispatch: values and gradients equal to plain indexing."""

import pytest
import torch

from vlsdk.models.dispatch import gather_slots, inverse_permutation, unsort_slots


@pytest.fixture
def routing():
    g = torch.Generator().manual_seed(0)
    n_tok, k, experts = 7, 3, 5
    idx = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(n_tok)])
    order = torch.argsort(idx.reshape(-1), stable=True)
    return n_tok, k, order


def test_inverse_permutation_undoes_the_order(routing):
    _, _, order = routing
    inverse = inverse_permutation(order)
    assert torch.equal(order[inverse], torch.arange(order.numel()))
    assert torch.equal(inverse[order], torch.arange(order.numel()))


def test_gather_slots_equals_indexing_with_its_gradient(routing):
    n_tok, k, order = routing
    x = torch.randn(n_tok, 4, dtype=torch.float64, requires_grad=True)
    inverse = inverse_permutation(order)
    torch.testing.assert_close(gather_slots(x, order, inverse, k), x[order // k])
    assert torch.autograd.gradcheck(lambda t: gather_slots(t, order, inverse, k), (x,))


def test_unsort_slots_restores_slot_order_with_its_gradient(routing):
    n_tok, k, order = routing
    y = torch.randn(n_tok * k, 4, dtype=torch.float64, requires_grad=True)
    inverse = inverse_permutation(order)
    out = unsort_slots(y, order, inverse)
    torch.testing.assert_close(out[order], y)
    assert torch.autograd.gradcheck(lambda t: unsort_slots(t, order, inverse), (y,))

"""Generic experts share one stacked layout; the encoder publishes routing once per forward."""

from __future__ import annotations

import copy

import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode

import vlsdk
from vlsdk.models.collector import routing_collectors
from vlsdk.models.config import MoEConfig
from vlsdk.models.experts import ExpertMLP
from vlsdk.models.moe import DynamicMoE
from vlsdk.train.routing_log import RoutingLog
from vlsdk.train.specialise import router_probs


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _layer(seed: int = 0) -> DynamicMoE:
    torch.manual_seed(seed)
    return DynamicMoE(16, MoEConfig(num_experts=4, top_k=2, expert_hidden=32))


def _stacks(moe: DynamicMoE):
    return moe._stack.get(moe._generic_params())


def test_generic_parameters_are_slices_of_the_stacks():
    moe = _layer()
    fc1_w, fc1_b, fc2_w, fc2_b = _stacks(moe)
    assert fc1_w.shape == (4, 32, 16) and fc2_b.shape == (4, 16)
    for i in range(4):
        e = moe.expert(f"generic.{i}")
        assert e.fc1.weight.data_ptr() == fc1_w[i].data_ptr() and e.fc2.bias.data_ptr() == fc2_b[i].data_ptr()
    with torch.no_grad():
        moe.expert("generic.2").fc2.weight.mul_(2.0)  # an edit of the module is an edit of the stack
    assert torch.equal(fc2_w[2], moe.expert("generic.2").fc2.weight)


def test_grouped_training_step_reads_the_stacks_without_restacking_and_matches_stacking():
    x = torch.randn(2, 9, 16)
    tied, untied = _layer(), _layer()
    untied._stack.clear()
    untied._stack.tie = lambda params: False  # the previous layout: stacked per call
    for moe in (tied, untied):
        moe.grouped = True
    ops = _Ops()
    with ops:
        y_tied, st = tied(x)
    assert "stack" not in ops.names
    y_untied, st_untied = untied(x)
    assert torch.equal(y_tied, y_untied)
    (y_tied.square().sum() + st.aux_loss).backward()
    (y_untied.square().sum() + st_untied.aux_loss).backward()
    for (name, a), (_, b) in zip(tied.named_parameters(), untied.named_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def test_frozen_generic_expert_gets_no_gradient_on_the_grouped_path():
    moe = _layer()
    moe.grouped = True
    moe.set_frozen("generic.1", True)
    y, _ = moe(torch.randn(1, 12, 16))
    y.sum().backward()
    assert moe.expert("generic.1").fc1.weight.grad is None
    assert moe.expert("generic.0").fc1.weight.grad is not None


def test_conversions_and_copies_are_laid_out_again_with_the_same_outputs():
    moe = _layer().eval()
    x = torch.randn(1, 10, 16)
    moe.grouped = True
    with torch.no_grad():
        ref = moe(x)[0]
        double = moe.double()  # .to() gives every parameter storage of its own: laid out again
        assert _stacks(double) is not None and _stacks(double)[0].dtype == torch.float64
        back = double.float()
        assert _stacks(back) is not None and torch.equal(back(x)[0], ref)
        clone = copy.deepcopy(back)  # tied again on its first grouped call
        assert torch.equal(clone(x)[0], ref) and _stacks(clone) is not None
    fresh = _layer(seed=1).eval()
    fresh.load_state_dict({k: v.clone() for k, v in back.state_dict().items()}, assign=True)
    fresh.grouped = True
    with torch.no_grad():
        assert _stacks(fresh) is not None and torch.equal(fresh(x)[0], ref)


def test_checkpoint_of_the_per_expert_layout_loads_bit_identical(tmp_path):
    """A state dict written tensor by tensor (how checkpoints were saved before the stacks) loads."""
    torch.manual_seed(0)
    src = vlsdk.VLModel("tiny", in_chans=1).eval()
    src.add_expert("medical.lesion", ExpertMLP(64, 32), init_bias=0.0)
    state = {k: v.detach().clone().contiguous() for k, v in src.encoder.state_dict().items()}
    assert "stages.0.blocks.0.ffn.experts.generic.3.fc1.weight" in state  # the per-expert key names
    save_file(state, str(tmp_path / "old.safetensors"))
    torch.manual_seed(7)
    dst = vlsdk.VLModel("tiny", in_chans=1).eval()
    dst.add_expert("medical.lesion", ExpertMLP(64, 32), init_bias=0.0)
    dst.encoder.load_state_dict(load_file(str(tmp_path / "old.safetensors")))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst.forward_features(x).tokens, src.forward_features(x).tokens)
        for moe in dst.encoder.moe_layers:
            moe.grouped = True
            assert _stacks(moe) is not None
        for moe in src.encoder.moe_layers:
            moe.grouped = True
        assert torch.equal(dst.forward_features(x).tokens, src.forward_features(x).tokens)


def test_encoder_publishes_layer_grid_and_stride_once_per_forward():
    model = vlsdk.VLModel("tiny").eval()
    seen = []
    (encoder, collector), = routing_collectors(model)
    handle = collector.subscribe(lambda enc, stats: seen.append((enc, [(s.layer, s.grid, s.stride) for s in stats])))
    with torch.no_grad():
        model.forward_features(torch.zeros(1, 3, 64, 96))
        model.encoder(torch.zeros(1, 3, 64, 64), max_stride=16)
    handle.remove()
    with torch.no_grad():
        model.forward_features(torch.zeros(1, 3, 64, 64))
    assert seen == [(encoder, [(0, (4, 6), 16), (1, (2, 3), 32)]), (encoder, [(0, (4, 4), 16)])]
    assert len(copy.deepcopy(model).encoder.routing) == 0  # a copy does not feed this model's subscribers


def test_router_probs_and_routing_log_come_from_the_collector(tmp_path):
    model = vlsdk.VLModel("tiny").train()
    log = RoutingLog(model, tmp_path)
    with router_probs(model) as seen:
        feats = model.forward_features(torch.rand(2, 3, 64, 64))
    assert [names for names, _ in seen] == [s.expert_names for s in feats.router_stats]
    assert all(p is s.probs and p.requires_grad for (_, p), s in zip(seen, feats.router_stats, strict=True))
    log.snapshot(step=1)
    log.close()
    rows = log.rows()
    assert [r["layer"] for r in rows] == ["0", "1"]
    assert [r["tokens"] for r in rows] == [s.tokens_per_expert.tolist() for s in feats.router_stats]
    assert len(model.encoder.routing) == 0

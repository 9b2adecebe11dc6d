"""The generic experts of a MoE layer are four stacked parameters: read without copies by every
path, frozen one by one, unstacked for per-module tools, and checkpoints of either layout load."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode

import vlsdk
from vlsdk.models.config import MoEConfig
from vlsdk.models.experts import ExpertMLP
from vlsdk.models.generic_experts import STACKED_NAMES, GenericExperts
from vlsdk.models.expert_layout import unstack_generic_experts
from vlsdk.models.moe import DynamicMoE


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _layer(seed: int = 0, **kw) -> DynamicMoE:
    torch.manual_seed(seed)
    moe = DynamicMoE(16, MoEConfig(**{"num_experts": 4, "top_k": 2, "expert_hidden": 32, **kw}))
    with torch.no_grad():
        moe.router.weight.normal_(std=1.0)  # spread the tokens over the experts
    return moe


def _per_expert_state(moe: DynamicMoE) -> dict[str, torch.Tensor]:
    """The layer's state dict as the per-expert layout wrote it (``experts.generic.3.fc1.weight`` ...)."""
    copy_ = copy.deepcopy(moe)
    copy_.unstack_generic()
    return {k: v.clone() for k, v in copy_.state_dict().items()}


def test_stacked_parameters_hold_the_values_of_per_expert_modules():
    torch.manual_seed(3)
    experts = GenericExperts(3, 8, 16)
    torch.manual_seed(3)
    modules = [ExpertMLP(8, 16) for _ in range(3)]
    assert [n for n, _ in experts.named_parameters()] == list(STACKED_NAMES)
    for i, m in enumerate(modules):
        assert torch.equal(experts.fc1_weight[i], m.fc1.weight) and torch.equal(experts.fc2_bias[i], m.fc2.bias)
        x = torch.randn(5, 8)
        torch.testing.assert_close(experts.run(i, x), m(x))
    moe = _layer()
    names = [n for n, _ in moe.named_parameters() if "experts.generic" in n]
    assert names == [f"experts.generic.{n}" for n in STACKED_NAMES]  # 4 tensors, not 4 per expert


def test_expert_view_aliases_its_slices_and_edits_reach_the_stacks():
    moe = _layer()
    view = moe.expert("generic.2")
    assert view.fc1.weight.data_ptr() == moe.experts["generic"].fc1_weight[2].data_ptr()
    with torch.no_grad():
        view.fc2.weight.mul_(2.0)
    assert torch.equal(moe.experts["generic"].fc2_weight[2], view.fc2.weight)
    assert moe.experts["generic"].fc2_weight._version > 0  # caches keyed on versions see the edit


def test_grouped_training_step_copies_no_weight_and_matches_the_loop():
    x = torch.randn(2, 9, 16)
    grouped, loop = _layer(), _layer()
    grouped.grouped, loop.grouped = True, False
    ops = _Ops()
    with ops:
        y, st = grouped(x)
        (y.square().sum() + st.aux_loss).backward()
    assert "stack" not in ops.names and "unbind" not in ops.names
    y_loop, st_loop = loop(x)
    (y_loop.square().sum() + st_loop.aux_loss).backward()
    torch.testing.assert_close(y, y_loop, rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(grouped.named_parameters(), loop.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("grouped", [True, False])
def test_partly_frozen_experts_keep_their_values_through_adamw_steps(grouped):
    moe = _layer()
    moe.grouped = grouped
    moe.set_frozen("generic.1", True)
    generic = moe.experts["generic"]
    assert generic.is_frozen(1) and not generic.is_frozen(0) and generic.fc1_weight.requires_grad
    before = {n: p.detach().clone() for n, p in generic.named_parameters()}
    opt = torch.optim.AdamW(moe.parameters(), lr=1e-2, weight_decay=0.5)
    for _ in range(3):
        opt.zero_grad()
        y, st = moe(torch.randn(2, 12, 16))
        (y.square().sum() + st.aux_loss).backward()
        assert generic.fc1_weight.grad[1].abs().sum() == 0 and generic.fc1_weight.grad[0].abs().sum() > 0
        opt.step()
    for name, p in generic.named_parameters():
        assert torch.equal(p[1], before[name][1]), name  # neither the gradient nor weight decay moved it
        assert not torch.equal(p[0], before[name][0]), name
    for i in (0, 2, 3):
        moe.set_frozen(f"generic.{i}", True)
    assert not generic.fc1_weight.requires_grad and generic.is_frozen(2)  # all frozen: the stacks are
    moe.set_frozen("generic.3", False)
    assert generic.fc1_weight.requires_grad and generic.is_frozen(0) and not generic.is_frozen(3)


def test_a_frozen_expert_keeps_loaded_values_in_copies_and_under_a_bias_only_optimizer():
    moe = _layer()
    moe.set_frozen("generic.1", True)
    loaded = _layer(seed=4).state_dict()
    moe.load_state_dict(loaded)  # after freezing: the loaded values are the ones kept
    generic_keys = [f"experts.generic.{n}" for n in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")]
    for model in (moe, copy.deepcopy(moe), pickle.loads(pickle.dumps(moe))):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
        for _ in range(2):
            opt.zero_grad()
            y, st = model(torch.randn(2, 12, 16))
            (y.square().sum() + st.aux_loss).backward()
            opt.step()
        state = model.state_dict()
        for key in generic_keys:
            assert torch.equal(state[key][1], loaded[key][1]), key
            assert not torch.equal(state[key][0], loaded[key][0]), key
    generic = moe.experts["generic"]
    opt = torch.optim.SGD([generic.fc1_bias, generic.fc2_bias], lr=0.1, momentum=0.9)  # biases only
    y, _ = moe(torch.randn(2, 12, 16))
    y.square().sum().backward()
    opt.step()
    assert torch.equal(generic.fc1_bias[1], loaded["experts.generic.fc1_bias"][1])


def test_conversions_copies_and_assign_loading_keep_outputs():
    moe = _layer().eval()
    x = torch.randn(1, 10, 16)
    moe.grouped = True
    with torch.no_grad():
        ref = moe(x)[0]
        assert moe.double().float() is moe and torch.equal(moe(x)[0], ref)
        assert torch.equal(copy.deepcopy(moe)(x)[0], ref)
        fresh = _layer(seed=1).eval()
        fresh.grouped = True
        fresh.load_state_dict({k: v.clone() for k, v in moe.state_dict().items()}, assign=True)
        assert torch.equal(fresh(x)[0], ref)


def test_either_layout_loads_into_either():
    stacked = _layer().eval()
    per_expert = _per_expert_state(stacked)
    assert "experts.generic.3.fc1.weight" in per_expert and "experts.generic.fc1_weight" not in per_expert
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        ref = stacked(x)[0]
        into_stacked = _layer(seed=5).eval()
        into_stacked.load_state_dict(per_expert)  # strict: every key converted
        assert torch.equal(into_stacked(x)[0], ref)
        into_modules = _layer(seed=6).eval()
        into_modules.unstack_generic()
        into_modules.load_state_dict(stacked.state_dict())
        assert not into_modules.stacked and torch.equal(into_modules(x)[0], ref)
    partial = {k: v for k, v in per_expert.items() if not k.startswith("experts.generic.3.")}
    with pytest.warns(UserWarning, match="keep their values"), \
            pytest.raises(RuntimeError, match=r"experts\.generic\.3\.fc1\.weight"):  # strict: named
        _layer().load_state_dict(partial)
    only_one = {"experts.generic.1.fc2.bias": torch.full((16,), 0.5)}
    other = _layer(seed=9)
    before = other.experts["generic"].fc2_bias.detach().clone()
    with pytest.warns(UserWarning, match="15 of the generic experts' tensors"):
        result = other.load_state_dict(only_one, strict=False)
    assert "experts.generic.0.fc1.weight" in result.missing_keys and not result.unexpected_keys
    assert torch.equal(other.experts["generic"].fc2_bias[1], only_one["experts.generic.1.fc2.bias"])
    assert torch.equal(other.experts["generic"].fc2_bias[0], before[0])  # the others keep their values


def test_checkpoint_of_the_per_expert_layout_loads_through_from_pretrained(tmp_path):
    """A model saved before the stacks (tensor per expert) loads with from_pretrained, bit identical."""
    torch.manual_seed(0)
    src = vlsdk.VLModel("tiny", in_chans=1).eval()
    src.add_expert("medical.lesion", ExpertMLP(64, 32), init_bias=0.0)
    with torch.no_grad():
        for layer in src.encoder.moe_layers:
            layer.router.weight.normal_(std=1.0)  # the generic experts all get tokens
    src.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    old = {}
    for layer_name, layer in src.named_modules():
        if isinstance(layer, DynamicMoE):
            for k, v in _per_expert_state(layer).items():
                old[f"{layer_name}.{k}"] = v.contiguous()
    old.update({k: v for k, v in load_file(str(weights)).items() if ".experts.generic." not in k})
    assert "encoder.stages.0.blocks.0.ffn.experts.generic.3.fc1.weight" in old
    save_file(old, str(weights))
    loaded = vlsdk.VLModel.from_pretrained(tmp_path, verify=False,
                                           experts={"medical.lesion": lambda dim: ExpertMLP(dim, 32)})
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x).tokens, src.forward_features(x).tokens)


def test_per_module_tools_unstack_only_the_layers_they_reach():
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        ref = model.forward_features(x).tokens
    done = unstack_generic_experts(model, lambda n: n.startswith("encoder.stages.1.") and n.endswith("generic.2.fc1"))
    assert done == ["encoder.stages.1.blocks.0.ffn"]
    layers = model.encoder.moe_layers
    assert layers[0].stacked and not layers[1].stacked
    assert type(model.get_submodule("encoder.stages.1.blocks.0.ffn.experts.generic.2.fc1")) is torch.nn.Linear
    with torch.no_grad():
        assert torch.equal(model.forward_features(x).tokens, ref)  # same values, per-expert loop path


def test_the_loop_function_matches_autograd_on_the_views_and_passes_gradcheck():
    from vlsdk.models.expert_loop import generic_loop

    torch.manual_seed(0)
    experts = GenericExperts(4, 6, 10).double()
    xs = torch.randn(9, 6, dtype=torch.double, requires_grad=True)
    sizes = [4, 0, 2, 3]  # expert 1 gets no row: its gradient slices are zero, as a stack's would be
    stacks = experts.stacks()
    torch.autograd.gradcheck(lambda x, *w: torch.cat(generic_loop(x, sizes, *w)), (xs, *stacks))
    out = torch.cat(generic_loop(xs, sizes, *stacks))
    out.square().sum().backward()
    got = [xs.grad.clone()] + [p.grad.clone() for p in stacks]
    xs.grad = None
    experts.zero_grad(set_to_none=True)
    views, start, parts = experts.per_expert(), 0, []
    for i, n in enumerate(sizes):
        parts.append(experts.run(i, xs[start:start + n], views[i]))
        start += n
    reference = torch.cat(parts)
    assert torch.equal(out, reference)
    reference.square().sum().backward()
    want = [xs.grad] + [p.grad for p in stacks]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert not got[1][1].any() and not got[3][1].any()
    with pytest.raises(ValueError, match="do not split 9 rows among 4 experts"):
        generic_loop(xs, [4, 0, 2, 2], *stacks)


def test_the_loop_function_under_bf16_autocast_matches_autograd_and_keeps_float32_gradients():
    from vlsdk.models.expert_loop import generic_loop

    torch.manual_seed(0)
    experts = GenericExperts(3, 8, 16)
    sizes = [5, 0, 4]
    grads = []
    for run in ("function", "views"):
        xs = torch.randn(9, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
        experts.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if run == "function":
                ys = generic_loop(xs, sizes, *experts.stacks())
            else:
                views, start, ys = experts.per_expert(), 0, []
                for i, n in enumerate(sizes):
                    ys.append(experts.run(i, xs[start:start + n], views[i]))
                    start += n
        torch.cat(ys).float().square().sum().backward()
        assert all(y.dtype == torch.bfloat16 for y in ys)
        grads.append([xs.grad] + [p.grad for p in experts.stacks()])
    assert all(g.dtype == torch.float32 for g in grads[0])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))

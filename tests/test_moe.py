"""DynamicMoE against a slow per-token reference, plus its losses, statistics and slots."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vlsdk.models.config import MoEConfig
from vlsdk.models.features import ExpertContext
from vlsdk.models.moe import DynamicMoE


def make_moe(dim=16, **kw) -> DynamicMoE:
    torch.manual_seed(0)
    cfg = MoEConfig(**{"num_experts": 6, "top_k": 2, "expert_hidden": 24, "num_shared": 1, **kw})
    return DynamicMoE(dim, cfg)


def expert_functions(moe: DynamicMoE) -> list:
    """Each routed expert as a function of its tokens, in router order; the stacked generic
    experts through their stacks (so gradients reach them)."""
    generic = moe.experts["generic"]
    n = len(moe._backbone_experts)
    return [lambda z, i=i: generic.run(i, z) for i in range(n)] + moe._domain_modules()


def reference(moe: DynamicMoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: y_t = sum_j w_tj * expert_{i_tj}(x_t) + shared(x_t)."""
    flat = x.reshape(-1, x.shape[-1])
    routing = moe.router(flat)
    modules = expert_functions(moe)
    rows = []
    for t in range(flat.shape[0]):
        y = moe.shared(flat[t:t + 1]) if moe.shared is not None else 0
        for j in range(moe.top_k):
            e = int(routing.topk_idx[t, j])
            y = y + routing.topk_weight[t, j] * modules[e](flat[t:t + 1])
        rows.append(y)
    return torch.cat(rows).reshape(x.shape)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_matches_slow_reference_outputs_and_gradients(score):
    moe = make_moe(score=score)
    x = torch.randn(2, 15, 16, requires_grad=True)
    y, stats = moe(x, grid=(3, 5))
    y_ref = reference(moe, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)

    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x, *moe.parameters()])
    grads_ref = torch.autograd.grad((y_ref * g).sum(), [x, *moe.parameters()], allow_unused=True)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, rtol=1e-4, atol=1e-5)
    assert int(stats.tokens_per_expert.sum()) == 30 * 2


def test_dense_export_path_equals_sparse():
    moe = make_moe()
    x = torch.randn(1, 20, 16)
    y_sparse, _ = moe(x)
    moe.dense = True
    y_dense, stats = moe(x)
    torch.testing.assert_close(y_sparse, y_dense, rtol=1e-5, atol=1e-6)
    assert int(stats.tokens_per_expert.sum()) == 40


def test_capacity_factor_drops_and_reports():
    moe = make_moe(capacity_factor=0.25, num_shared=0)
    with torch.no_grad():
        moe.router.bias[0] = 50.0  # everyone wants expert 0
    x = torch.randn(1, 24, 16)
    y, stats = moe(x)
    capacity = math.ceil(0.25 * 24 * 2 / 6)
    assert 0.0 < float(stats.dropped_fraction) < 1.0
    assert int(stats.tokens_per_expert[0]) == 24  # demand is reported before the drop
    # every token lost its expert-0 slot except the first `capacity` (stable order)
    moe.capacity_factor = None
    y_full, _ = moe(x)
    changed = (y - y_full).abs().amax(-1)[0] > 1e-6
    assert int((~changed).sum()) == capacity


def test_load_balancing_loss_reacts_to_imbalance():
    moe = make_moe(num_experts=8, top_k=2)
    x = torch.randn(4, 64, 16)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.bias.copy_(torch.linspace(0, 1e-3, 8))  # nearly uniform
    _, balanced = moe(x)
    with torch.no_grad():
        moe.router.bias.copy_(torch.tensor([6.0, 5.0] + [0.0] * 6))  # two experts take everything
    _, skewed = moe(x)
    assert float(balanced.aux_loss.detach()) == pytest.approx(1.0, abs=0.05)
    assert float(skewed.aux_loss.detach()) > 3.0
    assert float(skewed.entropy) < float(balanced.entropy) <= math.log(8) + 1e-6
    # the gradient of the aux loss pushes the favoured experts' logits down
    grad = torch.autograd.grad(skewed.aux_loss, moe.router.bias)[0]
    assert grad[0] > 0 and grad[1] > 0 and (grad[2:] < 0).all()


def test_z_loss_grows_with_logit_scale():
    moe = make_moe()
    x = torch.randn(1, 10, 16)
    _, small = moe(x)
    with torch.no_grad():
        moe.router.weight.mul_(20)
    _, large = moe(x)
    assert float(large.z_loss.detach()) > float(small.z_loss.detach())


class Doubler(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), 2.0))

    def forward(self, x):
        return x * self.scale


class ContextProbe(nn.Module):
    """Returns, for each routed token, the mean of all tokens of its image (needs the context)."""

    def __init__(self, dim):
        super().__init__()
        self.seen: list[ExpertContext] = []

    def forward(self, x, context=None):
        if context is None:
            return torch.zeros_like(x)
        self.seen.append(context)
        b, h, w = context.grid
        per_image = context.tokens.view(b, h * w, -1).mean(1)
        return per_image[context.index // (h * w)]


def test_add_expert_closed_row_keeps_outputs_then_opens():
    moe = make_moe()
    x = torch.randn(2, 12, 16)
    before, _ = moe(x)
    moe.add_expert("medical.lesion", Doubler(16))
    assert moe.router.weight.shape[0] == 7 and torch.all(moe.router.weight[-1] == 0)
    after, stats = moe(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert int(stats.tokens_per_expert[-1]) == 0
    moe.set_router_bias("medical.lesion", 50.0)
    opened, stats = moe(x)
    assert int(stats.tokens_per_expert[-1]) == 24  # every token now picks it
    assert not torch.allclose(opened, before)
    moe.remove_expert("medical.lesion")
    torch.testing.assert_close(moe(x)[0], before)
    assert moe.expert_names[-1] == "generic.5"


def test_domain_expert_receives_context():
    moe = make_moe(num_shared=0)
    probe = ContextProbe(16)
    moe.add_expert("driving.probe", probe, init_bias=50.0)
    x = torch.randn(2, 6, 16)
    y, _ = moe(x, grid=(2, 3))
    ctx = probe.seen[-1]
    assert ctx.grid == (2, 2, 3) and ctx.index.numel() == 12
    # the probe's share of y is weight * image mean; check one token through the reference
    torch.testing.assert_close(y, reference_with_context(moe, x, (2, 3)), rtol=1e-5, atol=1e-5)


def reference_with_context(moe, x, grid):
    flat = x.reshape(-1, x.shape[-1])
    routing = moe.router(flat)
    modules = expert_functions(moe)
    image_mean = x.mean(1)
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for j in range(moe.top_k):
            e = int(routing.topk_idx[t, j])
            name = moe.expert_names[e]
            val = image_mean[t // (grid[0] * grid[1])] if name == "driving.probe" else modules[e](flat[t:t + 1])[0]
            out[t] += routing.topk_weight[t, j] * val
    return out.reshape(x.shape)


def test_bad_experts_get_clear_errors():
    moe = make_moe()
    with pytest.raises(ValueError, match=r"must map \(n, 16\) -> \(n, 16\)"):
        moe.add_expert("medical.bad", nn.Linear(16, 8))
    with pytest.raises(ValueError, match="torch.nn.Module"):
        moe.add_expert("medical.bad", lambda x: x)
    with pytest.raises(ValueError, match="<group>.<name>"):
        moe.add_expert("lesion", Doubler(16))
    with pytest.raises(ValueError, match="already"):
        moe.add_expert("generic.0", Doubler(16))
    with pytest.raises(ValueError, match="cannot be removed"):
        moe.remove_expert("generic.1")
    assert moe.router.weight.shape[0] == 6  # nothing half-added


def test_frozen_router_row_and_expert_get_no_gradient():
    moe = make_moe()
    moe.add_expert("industrial.pcb", Doubler(16), init_bias=0.0)
    moe.set_frozen("generic.0", True)
    x = torch.randn(2, 10, 16)
    y, stats = moe(x)
    (y.sum() + stats.aux_loss).backward()
    assert moe.router.weight.grad[0].abs().sum() == 0
    assert moe.router.weight.grad[1:].abs().sum() > 0
    assert all(not p.requires_grad for p in moe.expert("generic.0").parameters())
    assert moe.expert("industrial.pcb").scale.grad is not None


def test_bad_config_values():
    with pytest.raises(ValueError, match="top_k"):
        DynamicMoE(16, MoEConfig(num_experts=2, top_k=3))
    with pytest.raises(ValueError, match="score"):
        DynamicMoE(16, MoEConfig(score="relu"))
    with pytest.raises(ValueError, match="width 16"):
        make_moe()(torch.randn(1, 3, 8))


def _assert_grouped_equals_loop(moe, x):
    """Outputs and every gradient of the grouped path equal the per-expert loop's."""
    results = {}
    for grouped in (False, True):
        moe.grouped = grouped
        y, stats = moe(x)
        grads = torch.autograd.grad(y.pow(2).sum(), [x, *moe.parameters()], allow_unused=True)
        results[grouped] = y, grads
    assert moe._use_grouped(x)
    (y_loop, grads_loop), (y_grouped, grads_grouped) = results[False], results[True]
    torch.testing.assert_close(y_grouped, y_loop, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_grouped, grads_loop, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    return stats


def test_grouped_gemm_path_matches_the_expert_loop():
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no torch._grouped_mm")
    moe = make_moe(num_shared=0)
    x = torch.randn(2, 15, 16, requires_grad=True)
    _assert_grouped_equals_loop(moe, x)
    moe.add_expert("medical.x", Doubler(16))
    moe.set_router_bias("medical.x", 0.0)  # open it: some tokens choose it
    stats = _assert_grouped_equals_loop(moe, x)  # generic experts grouped, the domain expert on every token
    assert stats.tokens_per_expert[-1] > 0


def test_grouped_path_under_bf16_autocast_matches_the_loop():
    """Under autocast LayerNorm hands the layer fp32 tokens; the grouped GEMMs still run in bf16."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no torch._grouped_mm")
    torch.manual_seed(0)
    moe = make_moe(num_shared=0)
    moe.add_expert("medical.x", Doubler(16))
    moe.set_router_bias("medical.x", 0.0)
    x = torch.randn(2, 15, 16)
    outputs = {}
    for grouped in (False, True):
        moe.grouped = grouped
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[grouped], _ = moe(x)
    assert outputs[True].dtype == outputs[False].dtype == torch.float32
    torch.testing.assert_close(outputs[True], outputs[False], rtol=2e-2, atol=2e-2)


class _OpNames(TorchDispatchMode):
    """Records the aten op names a region dispatches and the tensor values it hands to Python."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name.split("::")[-1])
        return func(*args, **(kwargs or {}))


class _HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("item", "tolist", "__bool__", "__int__", "__float__"):
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


_STATS = ("tokens_per_expert", "topk_idx", "topk_weight", "entropy", "dropped_fraction", "aux_loss", "z_loss")


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_no_grad_statistics_are_computed_when_read_and_equal_the_training_ones(score, grouped):
    if grouped and not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no torch._grouped_mm")
    moe = make_moe(score=score)
    moe.grouped = grouped
    x = torch.randn(2, 15, 16)
    y_train, eager = moe(x)  # gradients on: the losses are computed in the forward, in the graph
    assert eager.aux_loss.requires_grad and eager.z_loss.requires_grad
    with torch.no_grad(), _OpNames() as ops:
        y, lazy = moe(x)
    assert not {"logsumexp", "log", "clamp_min"} & set(ops.names)  # no entropy, z-loss or aux loss kernels
    if grouped:
        assert "scatter_add_" not in ops.names  # nor the token counts nobody needed
    assert torch.equal(y, y_train.detach())
    for field in _STATS:  # read afterwards: the same values, bit for bit
        a, b = getattr(lazy, field), getattr(eager, field).detach()
        assert a.dtype == b.dtype and torch.equal(a, b), field
    assert lazy.aux_loss is lazy.aux_loss  # computed once, then kept


def test_grouped_inference_forward_reads_nothing_back_to_the_host():
    """The path bf16 takes on CUDA: no .tolist()/.item() and no data-dependent shapes (a device sync each)."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no torch._grouped_mm")
    moe = make_moe()
    x = torch.randn(2, 15, 16)
    for grouped, expected_reads in ((True, []), (False, ["tolist"])):
        moe.grouped = grouped
        with torch.no_grad(), _HostReads() as reads, _OpNames() as ops:
            moe(x)
        assert reads.reads == expected_reads  # the loop path reads its split sizes once
        if grouped:
            assert not {"_local_scalar_dense", "nonzero", "masked_select"} & set(ops.names)


def test_bf16_router_casts_its_weights_once_and_follows_edits():
    moe = make_moe().to(torch.bfloat16)
    flat = torch.randn(30, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        cached = moe.router(flat)
    assert torch.equal(cached.logits, moe.router(flat).logits.detach())  # = the per-call fp32 cast
    with torch.no_grad():
        moe.router.weight.mul_(-1.0)
        moe.router.bias.add_(0.5)
        edited = moe.router(flat)
    assert not torch.equal(edited.logits, cached.logits)
    assert torch.equal(edited.logits, moe.router(flat).logits.detach())


def test_grouped_weights_cast_once_under_autocast_and_follow_edits():
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no torch._grouped_mm")
    moe = make_moe(num_shared=0)
    moe.grouped = True
    x = torch.randn(2, 15, 16)

    def run() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return moe(x)[0]

    with torch.no_grad():
        cached = run()  # fp32 weights stacked and cast to bf16 once
    assert torch.equal(cached, run().detach())  # gradients on: stacked and cast per call
    with torch.no_grad():
        moe.expert("generic.1").fc1.weight.mul_(2.0)
        edited = run()
    assert not torch.equal(edited, cached)
    assert torch.equal(edited, run().detach())


def _encoder_output(model: torch.nn.Module, x: torch.Tensor, grouped: bool) -> torch.Tensor:
    for layer in model.moe_layers:
        layer.grouped = grouped
    with torch.no_grad():
        return model.encoder.forward_features(x).tokens


def test_grouped_path_keeps_lora_on_generic_experts() -> None:
    """The grouped GEMM reads plain weights; experts wrapped by peft LoRA take the loop path, so the
    adapters count (they were silently left out before)."""
    from vlsdk import VLModel
    from vlsdk.train.lora import attach_lora

    torch.manual_seed(0)
    model = VLModel("tiny", in_chans=3, text=None).eval()
    x = torch.randn(1, 3, 64, 64)
    before = _encoder_output(model, x, grouped=False)
    attach_lora(model, "seg", r"experts\.generic\..*\.fc[12]", r=4)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    loop = _encoder_output(model, x, grouped=False)
    assert not torch.allclose(loop, before)  # the adapters change the output
    torch.testing.assert_close(_encoder_output(model, x, grouped=True), loop)


def test_grouped_path_runs_int8_generic_experts() -> None:
    from vlsdk import VLModel
    from vlsdk.quant import quantize_linear_layers

    torch.manual_seed(0)
    model = VLModel("tiny", in_chans=3, text=None).eval()
    quantize_linear_layers(model)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_encoder_output(model, x, grouped=True), _encoder_output(model, x, grouped=False))


@pytest.mark.parametrize("fused", [False, True])
def test_cached_expert_weights_follow_any_optimizer_step(fused: bool) -> None:
    """Inference caches the folded expert weights; a fused AdamW writes parameters without bumping
    their versions, so the cache also keys on the number of optimizer steps taken."""
    torch.manual_seed(0)
    moe = DynamicMoE(32, MoEConfig(num_experts=4, top_k=2, expert_hidden=16, num_shared=1))
    moe.grouped = True
    x = torch.randn(2, 8, 32)
    optimizer = torch.optim.AdamW(moe.parameters(), lr=1e-2, fused=fused or None)
    with torch.no_grad():
        moe(x)  # an evaluation: the folded weights are cached
    out, stats = moe(x)
    (out.square().mean() + stats.aux_loss).backward()
    optimizer.step()
    with torch.no_grad():
        cached, _ = moe(x)
        moe.grouped = False
        fresh, _ = moe(x)  # the loop path reads the modules themselves
    torch.testing.assert_close(cached, fresh, rtol=1e-5, atol=1e-6)


def test_another_models_optimizer_step_keeps_a_frozen_models_cache() -> None:
    """A teacher (no optimizer) keeps its folded weights while a student trains with a fused AdamW."""
    torch.manual_seed(0)
    teacher, student = (DynamicMoE(32, MoEConfig(num_experts=4, top_k=2, expert_hidden=16)) for _ in range(2))
    for layer in (teacher, student):
        layer.grouped = True
    x = torch.randn(1, 8, 32)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2, fused=True)
    with torch.no_grad():
        teacher(x)
    cached = teacher._stacked._value
    out, _ = student(x)
    out.square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        teacher(x)
    assert teacher._stacked._value is cached

"""Int8 weight-only quantisation: accuracy, real int8 memory, layer selection, bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vlsdk
from vlsdk.models.moe import DynamicMoE
from vlsdk.quant import Int8Linear, quantize_linear_layers, quantize_weight, weight_bytes


def make_model():
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    return model.eval()


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_int8_linear_matches_float_and_holds_int8():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(10, 64)
    assert q.qweight.dtype == torch.int8 and q.scale.dtype == torch.float32 and q.bias.dtype == torch.float32
    assert list(q.parameters()) == []  # frozen by construction
    assert rel_err(q(x), lin(x)) < 0.01
    # the dequantised weight is within half a quantisation step of the float one, per row
    err = (q.dequantize_weight() - lin.weight).abs().amax(1)
    assert torch.all(err <= q.scale / 2 + 1e-7)
    back = q.dequantize()
    assert isinstance(back, nn.Linear)
    q.compute = "dequant"  # the weight-only path is the dequantised layer, to float rounding
    torch.testing.assert_close(back(x), q(x))
    q2 = Int8Linear(64, 32, compute="dequant")
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2(x), q(x))


def test_quantize_weight_edge_cases():
    q, s = quantize_weight(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
    assert q.tolist() == [[127, -64], [0, 0]] and s[1] == 1.0  # an all-zero row gets scale 1, not NaN
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.zeros(3))


def test_quantize_vlmodel_keeps_outputs_and_cuts_weight_bytes_4x():
    model = make_model()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x, heads=["seg"])["seg"].logits
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    stacked = [f"{n}.experts.generic.{i}.fc{j}" for n, m in model.named_modules() if isinstance(m, DynamicMoE)
               for i in range(m.experts["generic"].num_experts) for j in (1, 2)]
    assert stacked and not set(stacked) & set(linears)  # stacked generic experts: no nn.Linear of their own
    before_total = weight_bytes(model)
    replaced = quantize_linear_layers(model)
    assert replaced and all(isinstance(model.get_submodule(n), Int8Linear) for n in replaced)
    assert not any("router" in n or n.startswith("heads") for n in replaced)
    assert set(replaced) == {n for n in linears + stacked if not n.startswith("heads")}  # unstacked first
    before = sum(4 * (model.get_submodule(n).in_features + 1) * model.get_submodule(n).out_features for n in replaced)
    after = weight_bytes(model, replaced)
    ratio = before / after
    print(f"\nint8: {len(replaced)} linears {before} -> {after} bytes ({ratio:.2f}x); "
          f"model {before_total} -> {weight_bytes(model)} bytes")
    assert 3.5 < ratio <= 4.0
    with torch.no_grad():
        out = model(x, heads=["seg"])["seg"].logits
    err = rel_err(out, ref)
    print(f"int8: relative error of the segmentation logits {err:.4f}")
    assert err < 0.03
    assert quantize_linear_layers(model) == []  # idempotent


def test_include_exclude_patterns_and_bad_arguments():
    model = make_model()
    chosen = quantize_linear_layers(model, include=["*.experts.*.fc?"], exclude=["generic.3", "stages.1"])
    assert chosen and all(".experts." in n and "generic.3" not in n and "stages.1" not in n for n in chosen)
    assert len(chosen) == 6  # stage 0: generic 0-2, fc1 + fc2
    with pytest.raises(ValueError, match="sequences of patterns"):
        quantize_linear_layers(model, exclude="router")
    with pytest.raises(ValueError, match="nn.Linear"):
        Int8Linear.from_linear(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="width 64"):
        model.get_submodule(chosen[0])(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positive"):
        Int8Linear(0, 4)


def test_int8_under_bf16_autocast():
    q = Int8Linear.from_linear(nn.Linear(16, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(torch.randn(4, 16))
    assert y.dtype == torch.bfloat16 and y.shape == (4, 8)


def test_int8_path_is_per_token_int8_times_int8_and_matches_dequant_path():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = Int8Linear.from_linear(lin, compute="int8")  # raises rather than silently dequantising
    x = torch.randn(3, 7, 96) * torch.logspace(-3, 2, 7)[None, :, None]  # rows of very different magnitudes
    y = q(x)
    assert y.shape == (3, 7, 40) and y.dtype == torch.float32
    # the reference: each row quantised on its own symmetric scale, exact integer products, rescaled
    rows = x.reshape(-1, 96).double()
    row_scale = rows.abs().amax(1, keepdim=True) / 127
    ref = (torch.round(rows / row_scale) @ q.qweight.double().T) * row_scale * q.scale.double() + q.bias.double()
    torch.testing.assert_close(y.reshape(-1, 40).double(), ref, rtol=1e-5, atol=1e-6)
    q.compute = "dequant"
    deq = q(x)
    assert not torch.equal(y, deq)  # the two paths really differ (activation rounding)
    per_row = (y - deq).norm(dim=-1) / deq.norm(dim=-1)
    assert per_row.max() < 0.02  # per-token scales: small rows are not crushed by large ones
    assert rel_err(y, lin(x)) < 0.02


def test_auto_falls_back_to_dequant_where_int8_cannot_run():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    auto = Int8Linear.from_linear(lin)
    strict = Int8Linear.from_linear(lin, compute="int8")
    deq = Int8Linear.from_linear(lin, compute="dequant")
    x = torch.randn(5, 32)
    assert auto.int8_refusal(x) is None and torch.equal(auto(x), strict(x)) and auto.path(x) == "int8"
    assert Int8Linear.from_linear(lin, compute="dequant").path(x) == "dequant"
    refused = {
        "no backward": x.clone().requires_grad_(),
        "dtype torch.float64": x.double(),
        "CPU and CUDA only": torch.empty(20, 32, device="meta"),
    }
    for reason, bad in refused.items():
        assert reason in auto.int8_refusal(bad)
        with pytest.raises(ValueError, match=f"compute='int8'.*{reason}"):
            strict(bad)
    grad_x = refused["no backward"]
    torch.testing.assert_close(auto(grad_x), deq(x))
    assert auto(x.double()).dtype == torch.float64
    auto(grad_x).sum().backward()  # the dequantising path is differentiable in the input
    torch.testing.assert_close(grad_x.grad, (deq.dequantize_weight().sum(0)).expand(5, 32))
    with torch.no_grad():
        assert torch.equal(auto(grad_x), strict(x))  # no gradient asked for: int8 again
    with pytest.raises(ValueError, match="compute must be one of"):
        Int8Linear(4, 4, compute="fp8")
    with pytest.raises(ValueError, match="compute must be one of"):
        quantize_linear_layers(nn.Sequential(nn.Linear(4, 4)), compute="int4")


def test_auto_dequantises_off_the_cpu_even_where_int8_could_run(monkeypatch):
    """On an H100 the int8 path ran at 0.08-0.20x bf16: off the CPU, auto takes the dequantising one."""
    lin = nn.Linear(32, 16)
    x = torch.empty(20, 32, device="meta")
    monkeypatch.setattr(Int8Linear, "int8_refusal", lambda self, x: None)  # as if torch._int_mm served meta
    assert Int8Linear.from_linear(lin).to("meta").path(x) == "dequant"
    assert Int8Linear.from_linear(lin, compute="int8").to("meta").path(x) == "int8"
    assert Int8Linear.from_linear(lin).path(torch.zeros(20, 32)) == "int8"  # on the CPU, auto multiplies in int8


def test_int8_path_keeps_non_finite_inputs_non_finite():
    q = Int8Linear.from_linear(nn.Linear(16, 8), compute="int8")
    x = torch.randn(4, 16)
    x[1, 3], x[2, 0] = float("nan"), float("inf")
    y = q(x)
    assert not y[1:3].isfinite().any()  # never quantised into plausible numbers
    assert y[[0, 3]].isfinite().all()  # other tokens are unaffected (per-token scales)
    assert torch.equal(q(torch.zeros(2, 16)), q.bias.expand(2, 8))  # an all-zero row: scale 1, the bias


def test_int8_path_on_vlmodel_activations_and_under_autocast():
    model = make_model()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x, heads=["seg"])["seg"].logits
        quantize_linear_layers(model, compute="dequant")
        deq = model(x, heads=["seg"])["seg"].logits
        for m in model.modules():
            if isinstance(m, Int8Linear):
                m.compute = "int8"
        out = model(x, heads=["seg"])["seg"].logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x, heads=["seg"])["seg"].logits
    print(f"\nint8 compute: seg logits rel. error vs float {rel_err(out, ref):.4f}, vs dequant {rel_err(out, deq):.4f}")
    assert rel_err(out, ref) < 0.03 and rel_err(out, deq) < 0.03
    assert rel_err(bf16.float(), ref) < 0.05


def test_lora_on_an_int8_base_gets_gradients_through_int8_layers():
    from vlsdk.train.lora import attach_lora

    def build(compute):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 4))
        # (the LayerNorm: peft needs the model to hold at least one parameter)
        attach_lora(net, "t", "0", r=4, quantize_base=True)  # int8 bases everywhere, LoRA on the first layer
        nn.init.normal_(net[0].lora_B["t"].weight, std=0.1)  # so lora_A gets a gradient too
        for m in net.modules():
            if isinstance(m, Int8Linear):
                m.compute = compute
        return net

    x, target = torch.randn(24, 32), torch.randn(24, 4)
    grads = {}
    for compute in ("auto", "dequant"):
        net = build(compute)
        assert isinstance(net[2], Int8Linear) and isinstance(net[0].base_layer, Int8Linear)
        nn.functional.mse_loss(net(x), target).backward()
        grads[compute] = torch.cat([net[0].lora_A["t"].weight.grad.flatten(), net[0].lora_B["t"].weight.grad.flatten()])
        if compute == "auto":
            with torch.no_grad():  # inference takes the int8 path in every base layer
                for m in net.modules():
                    if isinstance(m, Int8Linear):
                        m.compute = "int8"
                net(x)
    # the gradient reached the adapter through the two int8 layers above it (dequantising backward)
    assert grads["auto"].abs().sum() > 0 and grads["auto"].isfinite().all()
    assert rel_err(grads["auto"], grads["dequant"]) < 0.05
    strict = build("int8")  # int8 everywhere refuses the layers whose input needs a gradient
    with pytest.raises(ValueError, match="no backward"):
        strict(x)

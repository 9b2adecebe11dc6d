"""Int8 weight-only quantisation: accuracy, real int8 memory, layer selection, bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vlsdk
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
    before_total = weight_bytes(model)
    replaced = quantize_linear_layers(model)
    assert replaced and all(isinstance(model.get_submodule(n), Int8Linear) for n in replaced)
    assert not any("router" in n or n.startswith("heads") for n in replaced)
    assert set(replaced) == {n for n in linears if not n.startswith("heads")}
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

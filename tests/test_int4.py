"""4-bit group-wise weight-only quantisation: accuracy, real 4-bit storage, odd widths, bad input."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import vlsdk
from vlsdk.quant import (
    Int4Linear,
    Int8Linear,
    quantize_linear_layers,
    quantize_weight,
    quantize_weight_int4,
    weight_bytes,
)
from vlsdk.quant.int4 import layer_group_size


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_int4_linear_is_within_half_a_step_per_group_and_holds_two_values_a_byte():
    torch.manual_seed(0)
    lin = nn.Linear(256, 48)
    q = Int4Linear.from_linear(lin)
    assert q.qweight.dtype == torch.uint8 and tuple(q.qweight.shape) == (48, 128)
    assert q.scale_zero.dtype == torch.bfloat16 and tuple(q.scale_zero.shape) == (48, 2, 2)
    assert list(q.parameters()) == []  # frozen by construction
    scale = q.scale_zero[..., 0].float().repeat_interleave(128, dim=1)
    err = (q.dequantize_weight() - lin.weight).abs()
    # half a step, plus what rounding the scale and zero to bfloat16 moves the group's ends
    assert torch.all(err <= 0.53 * scale + 1e-6)
    x = torch.randn(10, 256)
    assert rel_err(q(x), lin(x)) < 0.1
    back = q.dequantize()
    assert isinstance(back, nn.Linear)
    torch.testing.assert_close(back(x), q(x))
    fresh = Int4Linear(256, 48)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q(x))


def test_nibble_order_is_portable_low_nibble_first():
    weight = torch.arange(16.0).repeat(2, 1)  # one group of 16: min 0, max 15 -> scale 1, q = value
    qweight, scale_zero = quantize_weight_int4(weight, group_size=16)
    assert qweight[0, :3].tolist() == [0 | 1 << 4, 2 | 3 << 4, 4 | 5 << 4]
    assert scale_zero[0, 0].tolist() == [1.0, 8.0]
    layer = Int4Linear(16, 2, bias=False, group_size=16)
    layer.set_weight(weight)
    assert torch.equal(layer.dequantize_weight(), weight)


def test_constant_offset_and_odd_width_groups():
    layer = Int4Linear.from_linear(nn.Linear(97, 3))  # 97 inputs: one group of 98, one padded input
    assert layer.group_size == 98 and tuple(layer.qweight.shape) == (3, 49)
    assert layer(torch.randn(5, 97)).shape == (5, 3) and layer.dequantize_weight().shape == (3, 97)
    constant = Int4Linear(64, 2, bias=False)
    constant.set_weight(torch.full((2, 64), 0.5))  # scale 0: exact
    assert torch.equal(constant.dequantize_weight(), torch.full((2, 64), 0.5))
    assert [layer_group_size(k) for k in (768, 3072, 192, 1000, 130)] == [128, 128, 96, 126, 66]
    with pytest.raises(ValueError, match="even integer"):
        Int4Linear(64, 2, group_size=7)
    with pytest.raises(ValueError, match="even integer"):
        layer_group_size(100, 128.0)
    # far from zero with a narrow range: the zero's bfloat16 rounding does not cost the steps
    torch.manual_seed(0)
    offset = 1.0 + 0.01 * torch.rand(4, 128)
    q = Int4Linear(128, 4, bias=False)
    q.set_weight(offset)
    step = q.scale_zero[..., 0].float()
    assert torch.all((q.dequantize_weight() - offset).abs() <= 0.55 * step + 1e-7)
    # a padded last group keeps its own range (its padding repeats the row's last value)
    wide = 10 + torch.rand(2, 1031)
    padded = Int4Linear(1031, 2, bias=False)
    padded.set_weight(wide)
    err = (padded.dequantize_weight() - wide).abs()
    assert err[:, -50:].max() <= 2 * err[:, :-50].max()


def test_gradient_reaches_the_input_and_autocast_sets_the_dtype():
    torch.manual_seed(0)
    layer = Int4Linear.from_linear(nn.Linear(64, 16))
    x = torch.randn(6, 64, requires_grad=True)
    layer(x).square().sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    nn.functional.linear(reference, layer.dequantize_weight(), layer.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 64)).dtype == torch.bfloat16


@pytest.mark.parametrize("cls", [Int4Linear, Int8Linear])
def test_backward_keeps_no_float_weight_alive(cls):
    torch.manual_seed(0)
    lin = nn.Linear(256, 512)
    layer = cls.from_linear(lin)
    if cls is Int8Linear:
        layer.compute = "dequant"
    x = torch.randn(4, 256, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    assert saved == []  # autograd would keep the (512, 256) float weight and the input
    out.square().sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    float_layer = layer.dequantize()
    float_layer(reference).square().sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    x.grad = None
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.isfinite().all()


@pytest.mark.parametrize("cls", [Int4Linear, Int8Linear])
def test_bad_inputs_and_weights_are_named(cls):
    layer = cls.from_linear(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="floating-point input"):
        layer(torch.ones(2, 8, dtype=torch.long))  # the int8 path would have cast the scale to 0
    with pytest.raises(ValueError, match="width 8"):
        layer(torch.ones(2, 9))
    broken = nn.Linear(8, 4)
    with torch.no_grad():
        broken.weight[2, 5] = float("nan")
    with pytest.raises(ValueError, match="row 2, column 5"):
        cls.from_linear(broken)
    quantize = quantize_weight_int4 if cls is Int4Linear else quantize_weight
    with pytest.raises(ValueError, match="row 2, column 5"):
        quantize(broken.weight)  # the public function checks too


def test_values_too_large_for_bfloat16_scales_are_refused_by_row():
    huge = torch.zeros(3, 16)
    huge[1, :2] = torch.tensor([-2e38, 2e38])  # finite, but their range overflows float32
    with pytest.raises(ValueError, match="row 1 .*too large"):
        quantize_weight_int4(huge, group_size=16)


def test_quantized_layers_of_a_model_hold_under_0_3x_the_bytes_of_bfloat16():
    torch.manual_seed(0)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_head("seg", task="segmentation", num_classes=2)
    model.eval().to(torch.bfloat16)
    x = torch.rand(2, 1, 32, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = model(x, heads=["seg"])["seg"].logits.float()
    names = quantize_linear_layers(model, bits=4)
    assert any(".experts.generic.0.fc1" in n for n in names) and not any("router" in n or "heads" in n for n in names)
    layers = [model.get_submodule(n) for n in names]
    assert all(isinstance(layer, Int4Linear) for layer in layers)
    bf16 = sum(2 * (layer.in_features + 1) * layer.out_features for layer in layers)  # weight and bias
    ratio = weight_bytes(model, names) / bf16
    print(f"\n4-bit layers of tiny: {ratio:.3f}x the bytes of bfloat16")
    assert ratio < 0.3  # the whole of base: 0.288x (benchmarks/int4_base.py, BENCHMARKS.md)
    with torch.no_grad():
        out = model(x, heads=["seg"])["seg"].logits.float()
    print(f"segmentation logits: relative error {rel_err(out, ref):.3f} against bfloat16")
    assert rel_err(out, ref) < 0.25


def test_quantize_linear_layers_refuses_bad_bits_and_names_a_broken_layer():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        quantize_linear_layers(net, bits=3)
    with pytest.raises(ValueError, match="bits=8 only"):
        quantize_linear_layers(net, bits=4, compute="int8")
    with torch.no_grad():
        net[2].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="layer '2'"):
        quantize_linear_layers(net, bits=4)
    assert type(net[0]) is nn.Linear  # nothing was replaced


def test_int4_benchmark_tables_are_measured_and_torch_kernel_agrees_with_the_layout():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import int4_base
    finally:
        sys.path.pop(0)
    r = int4_base.main(["--configs", "tiny", "--tokens", "16", "--repeats", "1", "--config", "tiny", "--size", "32",
                        "--batch", "1"])
    (size,) = r["bytes"]
    assert size["int4"] < size["int8"] < size["bf16"]
    for row in r["speed"]:
        assert all(row[k] > 0 for k in row if k.endswith("_ms"))
        # torch's own CPU int4 kernel, fed our values, computes our dequantised layer (bf16 inputs round more)
        assert row["cpu_kernel_float32_rel_err"] == pytest.approx(row["int4_rel_err"], abs=2e-3)
        assert row["cpu_kernel_bf16_rel_err"] == pytest.approx(row["int4_rel_err"], abs=0.02)
    assert 0 < r["logits_error"]["int8"] < r["logits_error"]["int4"]


@pytest.mark.parametrize("cls,scale", [(Int4Linear, "scale_zero"), (Int8Linear, "scale")])
def test_dtype_casts_leave_the_scales_alone(cls, scale):
    torch.manual_seed(0)
    lin = nn.Linear(64, 8)
    with torch.no_grad():
        lin.weight.mul_(1e-5)  # small weights: their scales would be float16 subnormals
    layer = cls.from_linear(lin)
    dtype, weight = getattr(layer, scale).dtype, layer.dequantize_weight()
    for cast in (nn.Module.half, nn.Module.bfloat16, nn.Module.double, lambda m: m.to(torch.float16)):
        model = cast(nn.Sequential(copy.deepcopy(layer)))
        assert getattr(model[0], scale).dtype == dtype and model[0].bias.dtype != torch.float32
        assert torch.equal(model[0].dequantize_weight(), weight)
    moved = nn.Sequential(layer).to("cpu")  # device moves still move them (the same tensor here)
    assert getattr(moved[0], scale).dtype == dtype

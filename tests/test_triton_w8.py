"""The weight-only int8 Triton GEMM (vlsdk.quant.triton_w8) and Int8Linear(compute="triton").

Without a GPU the kernel runs in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET
before Triton is imported), which multiplies in float32 (its bf16 products are wrong); on a GPU
the same tests run the compiled kernel with the input's dtype on the tensor cores.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("triton", reason="the kernel is a Triton kernel (pip install triton; CUDA torch ships it)")

from vlsdk.ops.triton_launch import interpreted  # noqa: E402
from vlsdk.quant import Int8Linear  # noqa: E402
from vlsdk.quant.triton_w8 import w8a16_linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not interpreted():
    pytest.skip("no GPU and Triton's interpreter is off", allow_module_level=True)


@pytest.mark.parametrize(("m", "n", "k"), [(5, 24, 40), (37, 72, 100), (130, 40, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_the_dequantising_path(m: int, n: int, k: int, dtype: torch.dtype) -> None:
    torch.manual_seed(m)
    layer = Int8Linear.from_linear(nn.Linear(k, n), compute="dequant").to(DEVICE)
    x = torch.randn(2, m, k, device=DEVICE).to(dtype)
    expect = layer(x.float())  # the same (rounded) input, float32 arithmetic
    got = w8a16_linear(x, layer.qweight, layer.scale, layer.bias)
    assert got.shape == (2, m, n) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: one rounding of the output
    torch.testing.assert_close(got.float(), expect, rtol=tol, atol=tol * expect.abs().max().item())


def test_int8_linear_takes_the_triton_path_only_where_it_can() -> None:
    layer = Int8Linear.from_linear(nn.Linear(32, 16), compute="triton").to(DEVICE)
    x = torch.randn(4, 32, device=DEVICE)
    with torch.no_grad():
        assert layer.path(x) == "triton"
        torch.testing.assert_close(layer(x), layer._float_forward(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs a gradient"):
        layer(x.requires_grad_(True))
    with pytest.raises(ValueError, match="input dtype"):
        layer.path(x.detach().double())


def test_no_bias_and_empty_input() -> None:
    layer = Int8Linear.from_linear(nn.Linear(16, 8, bias=False)).to(DEVICE)
    x = torch.randn(3, 16, device=DEVICE)
    torch.testing.assert_close(w8a16_linear(x, layer.qweight, layer.scale), layer._float_forward(x),
                               rtol=1e-5, atol=1e-5)
    assert w8a16_linear(x[:0], layer.qweight, layer.scale).shape == (0, 8)

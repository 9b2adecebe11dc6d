"""Grid gathers and the routed-token depthwise convolution against ``F.conv2d`` on the full grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlsdk.models.features import ExpertContext
from vlsdk.models.grid import (
    GridDepthwiseConv,
    gather_grid_neighbours,
    isolated_context,
    kernel_offsets,
)


def _grid_tokens(batch: int, height: int, width: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(B, dim, H, W)`` map and the same values as row-major ``(B*H*W, dim)`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    fmap = torch.randn(batch, dim, height, width, generator=gen, dtype=torch.float64)
    return fmap, fmap.permute(0, 2, 3, 1).reshape(-1, dim)


def _reference(conv: GridDepthwiseConv, fmap: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    full = F.conv2d(fmap, conv.weight, conv.bias, padding="same", dilation=conv.dilation, groups=conv.dim)
    return full.permute(0, 2, 3, 1).reshape(-1, conv.dim)[index]


def _with_borders(batch: int, height: int, width: int, n_random: int, seed: int = 1) -> torch.Tensor:
    """Random rows plus every corner and edge midpoint of every image."""
    plane = height * width
    edges = [0, width - 1, (height - 1) * width, plane - 1, width // 2, (height // 2) * width,
             (height // 2) * width + width - 1, (height - 1) * width + width // 2]
    rows = [b * plane + e for b in range(batch) for e in edges]
    gen = torch.Generator().manual_seed(seed)
    extra = torch.randint(0, batch * plane, (n_random,), generator=gen)
    return torch.cat([torch.tensor(rows), extra])


@pytest.mark.parametrize(
    ("batch", "height", "width", "kernel_size", "dilation"),
    [
        (1, 5, 5, 3, 1),
        (3, 4, 7, 3, 1),          # batch > 1, non-square
        (2, 7, 4, (3, 5), 1),     # non-square kernel
        (2, 6, 9, 3, 2),          # dilated
        (2, 9, 6, 5, (2, 1)),     # anisotropic dilation
        (2, 5, 8, (1, 7), 1),     # horizontal strip wider than half the grid
        (2, 8, 5, (7, 1), 1),     # vertical strip
        (1, 1, 1, 3, 1),          # 1 x 1 grid: only the centre tap
        (2, 3, 3, 7, 3),          # every off-centre tap falls outside
    ],
)
def test_matches_conv2d_on_full_grid(batch, height, width, kernel_size, dilation):
    dim = 6
    torch.manual_seed(0)
    conv = GridDepthwiseConv(dim, kernel_size=kernel_size, dilation=dilation).double()
    fmap, tokens = _grid_tokens(batch, height, width, dim)
    index = _with_borders(batch, height, width, n_random=11)
    ctx = ExpertContext(tokens=tokens, index=index, grid=(batch, height, width))
    out = conv(tokens[index], context=ctx)
    torch.testing.assert_close(out, _reference(conv, fmap, index), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("kernel_size", "dilation", "bias"), [(3, 1, True), ((1, 7), 1, True), ((7, 1), 2, False),
                                                              ((3, 5), (2, 1), True)])
def test_every_token_map_path_equals_the_gather(kernel_size, dilation, bias):
    torch.manual_seed(1)
    conv = GridDepthwiseConv(6, kernel_size=kernel_size, dilation=dilation, bias=bias).double()
    fmap, tokens = _grid_tokens(2, 6, 9, 6, seed=5)
    every = torch.arange(tokens.shape[0])
    gathered = conv(tokens, ExpertContext(tokens=tokens, index=every, grid=(2, 6, 9)))
    mapped = conv(tokens, ExpertContext(tokens=tokens, index=every, grid=(2, 6, 9), every_token=True))
    torch.testing.assert_close(mapped, gathered, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mapped, _reference(conv, fmap, every), rtol=1e-10, atol=1e-10)


def test_every_token_and_no_bias():
    conv = GridDepthwiseConv(4, kernel_size=3, dilation=1, bias=False).double()
    fmap, tokens = _grid_tokens(2, 5, 3, 4, seed=3)
    index = torch.randperm(tokens.shape[0])               # every token, in any order
    ctx = ExpertContext(tokens=tokens, index=index, grid=(2, 5, 3))
    torch.testing.assert_close(conv(tokens[index], ctx), _reference(conv, fmap, index))


def test_no_context_means_no_neighbours():
    conv = GridDepthwiseConv(5, kernel_size=3)
    x = torch.randn(4, 5)
    expected = _reference(conv, x.view(4, 5, 1, 1), torch.arange(4))      # four 1 x 1 images
    torch.testing.assert_close(conv(x), expected)
    torch.testing.assert_close(conv(x), conv(x, context=isolated_context(x)))


def test_empty_routing():
    conv = GridDepthwiseConv(3)
    _, tokens = _grid_tokens(1, 4, 4, 3)
    ctx = ExpertContext(tokens=tokens.float(), index=torch.zeros(0, dtype=torch.long), grid=(1, 4, 4))
    assert conv(tokens[:0].float(), ctx).shape == (0, 3)


def test_gradients_reach_weights_and_tokens():
    conv = GridDepthwiseConv(3)
    tokens = torch.randn(2 * 3 * 4, 3, requires_grad=True)
    ctx = ExpertContext(tokens=tokens, index=torch.tensor([0, 5, 23]), grid=(2, 3, 4))
    conv(tokens[ctx.index], ctx).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert conv.bias.grad is not None
    assert tokens.grad[6].abs().sum() > 0          # (0, 1, 2) is a 3 x 3 neighbour of row 5 = (0, 1, 1)
    assert tokens.grad[12:16].abs().sum() == 0     # image 1, grid row 0: no routed token nearby


def test_gather_positions_zero_padding_and_mask():
    tokens = torch.arange(2 * 2 * 3, dtype=torch.float32).view(-1, 1)       # value = row
    ctx = ExpertContext(tokens=tokens, index=torch.tensor([0, 11]), grid=(2, 2, 3))
    offsets = [(0, 0), (0, 1), (1, 1), (-1, 0), (0, -3)]
    found, inside = gather_grid_neighbours(ctx, offsets, return_mask=True)
    assert found.shape == (2, 5, 1)
    # row 0 = image 0 at (0, 0); row 11 = image 1 at (1, 2): its right neighbour wraps in the
    # flat layout but is outside the image, and image 1 never reads image 0.
    assert found.squeeze(-1).tolist() == [[0, 1, 4, 0, 0], [11, 0, 0, 8, 0]]
    assert inside.tolist() == [[True, True, True, False, False], [True, False, False, True, False]]
    same = gather_grid_neighbours(ctx, torch.tensor(offsets))
    torch.testing.assert_close(same, found)


def test_cost_scales_with_routed_tokens_not_grid():
    """The full map is never materialised: only the n * K neighbour rows are read."""
    dim, grid = 4, (2, 8192, 8192)                              # 134M tokens
    values = torch.randn(1, dim)
    tokens = values.expand(grid[0] * grid[1] * grid[2], dim)   # stride-0 view: no memory behind it
    index = torch.tensor([0, 8192 * 4096 + 7, tokens.shape[0] - 1])
    conv = GridDepthwiseConv(dim)
    out = conv(tokens[index], ExpertContext(tokens=tokens, index=index, grid=grid))
    assert out.shape == (3, dim)
    # an interior token sees all 9 taps, the two corners see 4 each
    w = conv.weight.detach().flatten(1)
    torch.testing.assert_close(out[1], values[0] * w.sum(1) + conv.bias.detach())
    torch.testing.assert_close(out[0], values[0] * w[:, [4, 5, 7, 8]].sum(1) + conv.bias.detach())


def test_kernel_offsets_order_and_errors():
    assert kernel_offsets(3) == [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]
    assert kernel_offsets((3, 1), dilation=(2, 5)) == [(-2, 0), (0, 0), (2, 0)]
    for bad in (2, (3, 4), 0, -1, (3,), "3"):
        with pytest.raises(ValueError):
            kernel_offsets(bad)
    with pytest.raises(ValueError):
        kernel_offsets(3, dilation=0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        GridDepthwiseConv(0)
    with pytest.raises(ValueError):
        GridDepthwiseConv(4, kernel_size=4)
    with pytest.raises(ValueError):
        GridDepthwiseConv(4, dilation=0)
    ctx = ExpertContext(tokens=torch.zeros(10, 4), index=torch.tensor([0]), grid=(1, 3, 3))
    with pytest.raises(ValueError, match="B\\*H\\*W"):
        gather_grid_neighbours(ctx, [(0, 0)])
    ctx = ExpertContext(tokens=torch.zeros(9, 4), index=torch.tensor([0]), grid=(1, 3, 3))
    with pytest.raises(ValueError, match="pairs"):
        gather_grid_neighbours(ctx, [(0, 0, 1)])
    with pytest.raises(ValueError):
        isolated_context(torch.zeros(2, 3, 4))


def test_module_moves_with_dtype_and_state_dict_matches_conv2d_layout():
    conv = GridDepthwiseConv(4, kernel_size=(1, 5))
    assert set(conv.state_dict()) == {"weight", "bias"}                      # offsets are not saved
    ref = torch.nn.Conv2d(4, 4, (1, 5), groups=4, padding="same")
    conv.load_state_dict(ref.state_dict())
    half = conv.to(torch.bfloat16)
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    assert half(x).dtype == torch.bfloat16

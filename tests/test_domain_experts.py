"""The three built-in domain experts: contract, gradients, and that their spatial part is real."""

from __future__ import annotations

import ast
import importlib
import importlib.util

import pytest
import torch

from vlsdk.models.config import MoEConfig
from vlsdk.models.experts import check_expert as core_check_expert
from vlsdk.models.features import ExpertContext
from vlsdk.models.grid import isolated_context
from vlsdk.models.moe import DynamicMoE
from vlsdk.testing import check_expert
from vlsdk_driving.experts import LidarExpert
from vlsdk_industrial.experts import PcbDefectExpert
from vlsdk_medical.experts import LesionExpert

DIM = 16
GRID = (2, 9, 11)  # B, H, W: batch > 1, non-square

# expert class, options, an offset that is in its receptive field, one that is not
CASES = {
    "medical.lesion": (LesionExpert, {"kernel_size": 3}, (1, 1), (2, 0)),
    "driving.lidar": (LidarExpert, {"dilation": 2}, (2, -2), (1, 0)),
    "industrial.pcb_defect": (PcbDefectExpert, {"length": 7}, (0, 3), (1, 1)),
}
PLUGINS = {"medical.lesion": ("medical", ("monai", "pydicom", "nibabel")),
           "driving.lidar": ("driving", ("nuscenes",)),
           "industrial.pcb_defect": ("industrial", ("albumentations",))}


def _layer(seed: int = 0) -> ExpertContext:
    """All tokens of a layer and a routed subset that includes image borders and image 1."""
    gen = torch.Generator().manual_seed(seed)
    batch, height, width = GRID
    tokens = torch.randn(batch * height * width, DIM, generator=gen)
    plane = height * width
    index = torch.tensor([0, width - 1, 4 * width + 5, plane - 1, plane + 4 * width + 5, plane + 17])
    return ExpertContext(tokens=tokens, index=index, grid=GRID)


def _build(name: str, **extra) -> torch.nn.Module:
    cls, options, _, _ = CASES[name]
    torch.manual_seed(0)
    return cls(DIM, **{**options, **extra})


def _row(ctx: ExpertContext, at: int, dy: int, dx: int) -> int:
    """Flat row of the token at offset (dy, dx) from routed token ``at`` (must stay in its image)."""
    _, height, width = ctx.grid
    row = int(ctx.index[at])
    image, pos = divmod(row, height * width)
    y, x = divmod(pos, width)
    assert 0 <= y + dy < height and 0 <= x + dx < width
    return image * height * width + (y + dy) * width + (x + dx)


@pytest.fixture(params=sorted(CASES))
def name(request) -> str:
    return request.param


@pytest.mark.parametrize("expert", [LesionExpert(16, kernel_size=5), LesionExpert(16, kernel_size=7),
                                    LidarExpert(16, dilation=3), PcbDefectExpert(16, length=9)],
                         ids=["lesion-k5", "lesion-k7", "lidar-d3", "pcb-l9"])
def test_every_token_map_path_equals_the_neighbour_gather(expert):
    torch.manual_seed(0)
    expert = expert.double()
    grid = (2, 5, 7)
    tokens = torch.randn(70, 16, dtype=torch.double)
    gathered = expert(tokens, context=ExpertContext(tokens, torch.arange(70), grid))
    mapped = expert(tokens, context=ExpertContext(tokens, torch.arange(70), grid, every_token=True))
    torch.testing.assert_close(mapped, gathered, rtol=1e-12, atol=1e-12)


def test_shape_with_and_without_context(name):
    expert = _build(name)
    ctx = _layer()
    x = ctx.tokens[ctx.index]
    assert expert(x, context=ctx).shape == x.shape
    assert expert(x).shape == x.shape
    assert expert(x[:0], context=ExpertContext(ctx.tokens, ctx.index[:0], ctx.grid)).shape == (0, DIM)
    assert expert(x[:0]).shape == (0, DIM)


def test_satisfies_the_core_expert_contract(name):
    expert = _build(name)
    assert core_check_expert(name, expert, DIM) is expert


def test_no_context_is_an_isolated_token(name):
    expert = _build(name)
    x = torch.randn(5, DIM)
    torch.testing.assert_close(expert(x), expert(x, context=isolated_context(x)))


def test_passes_vlsdk_testing_check_expert(name):
    cls, options, _, _ = CASES[name]
    check_expert(cls, dim=DIM, **options)


def test_inside_a_moe_layer_sparse_equals_dense(name):
    """Routed through DynamicMoE, the expert sees its grid: sparse dispatch == dense (export) == grouped path."""
    torch.manual_seed(0)
    layer = DynamicMoE(DIM, MoEConfig(num_experts=2, top_k=1, expert_hidden=8, num_shared=0))
    layer.add_expert(name, _build(name))
    layer.set_router_bias(name, 50.0)                     # every token goes to the domain expert
    batch, height, width = GRID
    x = torch.randn(batch, height * width, DIM)
    with torch.no_grad():
        sparse, stats = layer(x, grid=(height, width))
        layer.dense = True
        dense, _ = layer(x, grid=(height, width))
        layer.dense, layer.grouped = False, True  # generic experts grouped, the domain expert on every token
        grouped, _ = layer(x, grid=(height, width))
        flat = x.reshape(-1, DIM)
        direct = layer.expert(name)(flat, context=ExpertContext(flat, torch.arange(len(flat)), GRID))
    assert int(stats.tokens_per_expert[stats.expert_names.index(name)]) == flat.shape[0]
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grouped, sparse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse.reshape(-1, DIM), direct, rtol=1e-5, atol=1e-5)


def test_output_does_not_depend_on_which_other_tokens_are_routed(name):
    expert = _build(name)
    ctx = _layer()
    everyone = torch.arange(ctx.tokens.shape[0])
    full = expert(ctx.tokens, context=ExpertContext(ctx.tokens, everyone, ctx.grid))
    torch.testing.assert_close(expert(ctx.tokens[ctx.index], context=ctx), full[ctx.index])


def test_gradients_reach_every_parameter(name):
    expert = _build(name)
    ctx = _layer()
    tokens = ctx.tokens.clone().requires_grad_(True)
    ctx = ExpertContext(tokens, ctx.index, ctx.grid)
    expert(tokens[ctx.index], context=ctx).square().sum().backward()
    for pname, param in expert.named_parameters():
        assert param.grad is not None, pname
        assert param.grad.abs().sum() > 0, pname
    assert tokens.grad.abs().sum() > 0


def test_spatial_part_uses_neighbours(name):
    """Changing a token in the receptive field changes the output; outside it, nothing does."""
    _, _, near, far = CASES[name]
    expert = _build(name).eval()
    ctx = _layer()
    at = 2                                          # an interior routed token
    before = expert(ctx.tokens[ctx.index], context=ctx)

    for offset, should_change in ((near, True), (far, False)):
        tokens = ctx.tokens.clone()
        row = _row(ctx, at, *offset)
        assert row not in ctx.index.tolist()        # a neighbour, not a routed token
        tokens[row] += 3.0
        after = expert(tokens[ctx.index], context=ExpertContext(tokens, ctx.index, ctx.grid))
        changed = not torch.allclose(after[at], before[at])
        assert changed == should_change, (offset, should_change)
        others = [i for i in range(len(ctx.index)) if i != at]
        torch.testing.assert_close(after[others], before[others])   # far from every other one


def test_neighbours_of_another_image_are_invisible(name):
    expert = _build(name).eval()
    ctx = _layer()
    tokens = ctx.tokens.clone()
    plane = GRID[1] * GRID[2]
    tokens[plane:] = torch.randn(plane, DIM)       # rewrite image 1 entirely
    in_image0 = (ctx.index < plane)
    new = ExpertContext(tokens, ctx.index, ctx.grid)
    out_before = expert(ctx.tokens[ctx.index], context=ctx)
    out_after = expert(tokens[ctx.index], context=new)
    torch.testing.assert_close(out_after[in_image0], out_before[in_image0])


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("medical.lesion", {"kernel_size": 4}),
        ("medical.lesion", {"kernel_size": 1}),
        ("medical.lesion", {"hidden": 0}),
        ("driving.lidar", {"dilation": 0}),
        ("driving.lidar", {"hidden": -3}),
        ("industrial.pcb_defect", {"length": 6}),
        ("industrial.pcb_defect", {"length": 1}),
        ("industrial.pcb_defect", {"hidden": 2.5}),
    ],
)
def test_bad_arguments(name, options):
    with pytest.raises(ValueError):
        _build(name, **options)
    with pytest.raises(ValueError):
        CASES[name][0](0)


def test_default_sizes():
    assert LesionExpert(8).hidden == 32
    assert PcbDefectExpert(8).hidden == 32
    assert LidarExpert(24).hidden == 64            # 8 * 24 / 3, a multiple of 8
    assert LidarExpert(8, dilation=3).conv.dilation == (3, 3)


def test_plugin_hooks_register_their_expert(name):
    extra, modules = PLUGINS[name]
    for module in modules:
        pytest.importorskip(module, reason=f'needs the {extra} extra: pip install "vlsdk[{extra}]"')
    plugin = importlib.import_module(f"vlsdk_{extra}.plugin")
    seen = {}

    def register(entry, obj, *, replace=False, **metadata):
        seen[entry] = (obj, metadata)

    plugin.vlsdk_register_experts(register=register)
    assert list(seen) == [name]
    factory, metadata = seen[name]
    assert factory is CASES[name][0]
    assert metadata.get("description")


def test_built_through_the_plugin_registry(name):
    extra, modules = PLUGINS[name]
    for module in modules:
        pytest.importorskip(module, reason=f'needs the {extra} extra: pip install "vlsdk[{extra}]"')
    from vlsdk.plugins import build_expert

    expert = build_expert(name, DIM, hidden=24)
    assert isinstance(expert, CASES[name][0])
    assert expert.hidden == 24


def test_plugin_packages_import_nothing_heavy():
    """``import vlsdk_<domain>`` runs no import at all: the entry point is ``plugin.py``."""
    for extra in ("medical", "driving", "industrial"):
        spec = importlib.util.find_spec(f"vlsdk_{extra}")
        assert spec is not None and spec.origin is not None
        with open(spec.origin, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
        assert all(isinstance(node, ast.ImportFrom) and node.module == "__future__" for node in imports)

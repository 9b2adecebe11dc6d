"""The hierarchical encoder: CNN stem (or plain patch embedding) -> ViT stages with sparse MoE."""

from __future__ import annotations

import torch
from torch import nn

from vlsdk.models.collector import RoutingCollector
from vlsdk.models.config import BackboneConfig
from vlsdk.models.features import EncoderFeatures
from vlsdk.models.gate import CrossModalGate
from vlsdk.models.generic_experts import GenericExperts
from vlsdk.models.moe import DynamicMoE
from vlsdk.models.patch_stem import SimpleFeaturePyramid, upsample
from vlsdk.models.stem import ConvStem
from vlsdk.models.text import TextFeatures
from vlsdk.models.vit import Block, PatchEmbed, PatchMerge, sincos_pos_embed, tokens_to_map

__all__ = ["HybridEncoder", "Stage"]


class Stage(nn.Module):
    """One ViT stage: optional 2x2 merge, a cross-modal gate, then transformer blocks."""

    def __init__(self, config: BackboneConfig, depth: int, first_block: int, merge: bool, dpr: list[float]) -> None:
        super().__init__()
        dim = config.embed_dim
        self.merge = PatchMerge(dim) if merge else None
        text = config.text
        self.gate = CrossModalGate(dim, text.dim, config.num_heads, text.gate_threshold) if text is not None else None
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio,
                  config.moe if config.is_moe_block(first_block + i) else None, dpr[first_block + i])
            for i in range(depth)
        )


class HybridEncoder(nn.Module):
    """ResNet-style stem (strides 4, 8) -> patch embedding -> ViT stages (strides 16, 32, ...).

    With ``config.stem == "patch"`` it is a plain ViT for ablations: no CNN stem (:attr:`stem` is
    ``None``), ``8 * patch_size`` pixel patches embedded straight from the image, the same stages,
    and the stride-4 and stride-8 levels upsampled from the first stage's output by
    :class:`~vlsdk.models.patch_stem.SimpleFeaturePyramid` (:attr:`pyramid_up`). The pyramid has
    the same strides, channels and sizes either way.

    Every ``config.moe.every``-th block has a :class:`DynamicMoE` feed-forward; each stage
    starts with a :class:`CrossModalGate` that lets text tokens reach the visual tokens.

    When the tokens are coarser than stride 16 (``patch_size=4``: stride 32), the stride-16 level
    is upsampled from the first stage's output by a 2x2 transposed convolution (:attr:`up16`), so
    the pyramid keeps strides 8, 16 and 32 for the heads.

    A caller whose heads read only the finer levels passes ``max_stride`` to
    :meth:`forward_features`: the stages after the one that makes that level are not run.

    Args:
        config: the backbone configuration (see :func:`vlsdk.get_config`).

    Example:
        >>> from vlsdk.models.config import get_config
        >>> enc = HybridEncoder(get_config("tiny"))
        >>> feats = enc.forward_features(torch.zeros(1, 3, 64, 64))
        >>> sorted(feats.pyramid), feats.grid
        ([4, 8, 16, 32], (2, 2))
        >>> sorted(enc.forward_features(torch.zeros(1, 3, 64, 64), max_stride=16).pyramid)
        [4, 8, 16]
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dim = config.embed_dim
        self.stem: ConvStem | None = None
        self.pyramid_up: SimpleFeaturePyramid | None = None
        if config.stem == "cnn":
            self.stem = ConvStem(config.in_chans, config.stem_widths, config.stem_blocks, config.stem_norm,
                                 config.stem_entry)
            self.patch_embed = PatchEmbed(config.stem_widths[1], dim, config.patch_size)
        else:
            self.patch_embed = PatchEmbed(config.in_chans, dim, 8 * config.patch_size)
            self.pyramid_up = SimpleFeaturePyramid(dim, config.stem_widths, config.stem_norm, 8 * config.patch_size)
        self.up16: nn.Module | None = None
        if config.upsampled_16:
            self.up16 = upsample(dim, dim, config.stem_norm, config.token_strides[0] // 16)
        total = sum(config.depths)
        dpr = [config.drop_path * i / max(total - 1, 1) for i in range(total)]
        stages, first = [], 0
        for s, depth in enumerate(config.depths):
            stages.append(Stage(config, depth, first, merge=s > 0, dpr=dpr))
            first += depth
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(dim)
        self.apply(_init_linear)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        #: every forward publishes its RouterStats here once (see :class:`RoutingCollector`)
        self.routing = RoutingCollector()

    @property
    def strides(self) -> tuple[int, ...]:
        return self.config.strides

    @property
    def moe_layers(self) -> list[DynamicMoE]:
        """Every MoE layer in depth order; ``add_expert(layers=[i])`` indexes this list."""
        return [m for m in self.modules() if isinstance(m, DynamicMoE)]

    @property
    def gates(self) -> list[CrossModalGate]:
        return [s.gate for s in self.stages if s.gate is not None]

    @property
    def channels(self) -> dict[int, int]:
        """Stride -> channels of :attr:`EncoderFeatures.pyramid`."""
        c4, c8 = self.config.stem_widths
        return {4: c4, 8: c8, **{s: self.config.embed_dim for s in self.strides[2:]}}

    def forward_features(self, images: torch.Tensor, text: TextFeatures | None = None,
                         max_stride: int | None = None) -> EncoderFeatures:
        """Encode ``(B, C, H, W)`` images (and optionally text) into tokens and a feature pyramid.

        Args:
            images: ``(B, in_chans, H, W)``.
            text: text features for the cross-modal gates, or ``None``.
            max_stride: the coarsest pyramid level the caller reads (one of :attr:`strides`), or
                ``None`` for all. The ViT stages after the one that makes it are skipped (with
                their MoE layers and experts); the stem and the first stage always run. The levels
                returned are bit-identical to a full forward's. When stages are skipped,
                ``tokens`` / ``grid`` are the last stage run's and carry no final norm (that
                belongs to the last stage), and ``router_stats`` covers the layers that ran.

        The statistics are published once to :attr:`routing` (the trainer's losses, routing logs).
        """
        if images.dim() != 4 or images.shape[1] != self.config.in_chans:
            raise ValueError(f"expected images of shape (B, {self.config.in_chans}, H, W), got {tuple(images.shape)}")
        strides = self.config.token_strides
        last = len(self.stages) - 1
        if max_stride is not None:
            if max_stride not in self.strides:
                raise ValueError(f"max_stride must be one of the encoder's strides {self.strides}, got {max_stride!r}")
            last = strides.index(max_stride) if max_stride in strides else 0
        size = (images.shape[-2], images.shape[-1])
        pyramid: dict[int, torch.Tensor] = {}
        if self.stem is not None:
            pyramid[4], pyramid[8] = self.stem(images)
            x, grid = self.patch_embed(pyramid[8])
        else:
            x, grid = self.patch_embed(images)
        x = x + self._pos_embed(grid, x)
        stats = []
        for i, stage in enumerate(self.stages):
            if stage.merge is not None:
                x, grid = stage.merge(x, grid)
            if stage.gate is not None and text is not None:
                x = stage.gate(x, text.tokens, text.mask)
            for block in stage.blocks:
                x, st = block(x, grid)
                if st is not None:
                    st.layer, st.stride = len(stats), strides[i]
                    stats.append(st)
            if i == len(self.stages) - 1:
                x = self.norm(x)
            pyramid[strides[i]] = tokens_to_map(x, grid)
            if i == 0 and self.pyramid_up is not None:
                pyramid[4], pyramid[8] = self.pyramid_up(pyramid[strides[0]], size)
            if i == 0 and self.up16 is not None:
                pyramid[16] = self.up16(pyramid[strides[0]])[..., : -(-size[0] // 16), : -(-size[1] // 16)]
            if i == last:
                break  # the later stages make only levels the caller does not read
        pyramid = {s: pyramid[s] for s in sorted(pyramid)}
        self.routing.publish(self, stats)
        return EncoderFeatures(tokens=x, grid=grid, pyramid=pyramid, image_size=size, router_stats=stats)

    def forward(self, images: torch.Tensor, text: TextFeatures | None = None,
                max_stride: int | None = None) -> EncoderFeatures:
        return self.forward_features(images, text, max_stride)

    def _pos_embed(self, grid: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
        """The fixed position embedding for ``grid``, made once per grid, device and dtype in eager
        calls (about 20 small kernels each time otherwise). Traced and compiled calls build it
        inline, so an exported graph keeps it a function of the input size."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return sincos_pos_embed(self.config.embed_dim, grid, x.device, x.dtype)  # the int width, not a traced size
        key = (grid, x.device, x.dtype)
        emb = self._pos_cache.get(key)
        if emb is None:
            if len(self._pos_cache) >= _POS_CACHE_SIZE:
                self._pos_cache.pop(next(iter(self._pos_cache)))  # the oldest entry
            with torch.inference_mode(False):  # a normal tensor, usable by a later training forward
                emb = self._pos_cache[key] = sincos_pos_embed(self.config.embed_dim, grid, x.device, x.dtype)
        return emb


_POS_CACHE_SIZE = 8  # grids (image sizes) x devices x dtypes kept


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, GenericExperts):  # each expert's fc1, fc2 in turn: the values of per-expert modules
        for i in range(m.num_experts):
            view = m.expert(i)  # (its parameters alias the stacks' slices)
            _init_linear(view.fc1)
            _init_linear(view.fc2)

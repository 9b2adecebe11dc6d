"""Backbone configuration and the named model sizes (``tiny``, ``edge``, ``small``, ``base``)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["MoEConfig", "TextConfig", "BackboneConfig", "CONFIGS", "STEMS", "STEM_ENTRIES", "get_config"]

#: Values of :attr:`BackboneConfig.stem`.
STEMS: tuple[str, ...] = ("cnn", "patch")
#: Values of :attr:`BackboneConfig.stem_entry`.
STEM_ENTRIES: tuple[str, ...] = ("resnet", "patchify")


@dataclass
class MoEConfig:
    """Sparse mixture-of-experts feed-forward settings.

    Args:
        num_experts: generic routed experts per MoE layer.
        top_k: experts each token is sent to.
        expert_hidden: hidden width of one generic expert.
        num_shared: always-on shared experts (DeepSeek style), fused into one MLP of
            ``num_shared * expert_hidden`` hidden units; 0 disables them.
        score: ``"softmax"`` or ``"sigmoid"`` router scores (top-k weights are renormalised).
        capacity_factor: ``None`` for dropless routing, else each expert takes at most
            ``ceil(capacity_factor * T * top_k / E)`` assignments and drops the rest.
        jitter: multiplicative input noise ``U(1 - jitter, 1 + jitter)`` on the router in training.
        every: a MoE layer replaces the dense FFN in every ``every``-th block (1 = all blocks).
    """

    num_experts: int = 16
    top_k: int = 4
    expert_hidden: int = 384
    num_shared: int = 1
    score: str = "softmax"
    capacity_factor: float | None = None
    jitter: float = 0.0
    every: int = 1


@dataclass
class TextConfig:
    """Built-in byte-level text encoder and the cross-modal gates.

    Args:
        dim: text token width.
        depth: transformer layers of the text encoder.
        heads: attention heads of the text encoder.
        max_len: longest text in UTF-8 bytes (longer texts are truncated).
        gate_threshold: at inference a gate whose ``|tanh(alpha)|`` is below this skips the text path.
        hf_path: a local Hugging Face text model directory to use instead of the byte encoder
            (``dim`` then follows that model's hidden size).
    """

    dim: int = 256
    depth: int = 2
    heads: int = 4
    max_len: int = 128
    gate_threshold: float = 1e-3
    hf_path: str | None = None


@dataclass
class BackboneConfig:
    """Encoder configuration: stem (CNN or plain patch embedding), ViT stages, MoE, text.

    Args:
        name: config name recorded in checkpoints.
        in_chans: image channels (1 for CT or binarised PCB, 3 for RGB, more for BEV pseudo-images).
        stem: ``"cnn"`` (default, the hybrid: ResNet stem at strides 4 and 8, then patch embedding)
            or ``"patch"`` (plain ViT, for ablations: ``8 * patch_size`` pixel patches straight from
            the image, and strides 4 and 8 upsampled from the first stage's stride-16 tokens by
            transposed convolutions, ViTDet's simple feature pyramid). Both give the same pyramid
            strides and channels, so every head fits either.
        stem_widths: channels of the pyramid at stride 4 and stride 8 (the CNN stem's stages, or
            the outputs of the patch stem's upsampling).
        stem_blocks: ResNet basic blocks per CNN stem stage (unused by the patch stem).
        stem_entry: the CNN stem's first layer, from the image to stride 4: ``"resnet"`` (a 7x7
            stride-2 convolution and a 3x3 stride-2 max-pool, as in ResNet) or ``"patchify"`` (one
            4x4 stride-4 convolution, as in ConvNeXt: no full-resolution map, about 1/12 of the
            first layer's FLOPs).
        stem_norm: ``"batch"`` (default; fuses for export) or ``"group"`` (independent of the
            batch: small batches, and data-parallel runs that must match one process exactly);
            also the norm of the patch stem's upsampling.
        patch_size: patch size over the stride-8 stem map (2 gives stride-16 tokens, 4 stride-32
            tokens); the patch stem embeds ``8 * patch_size`` pixel patches, so the token stride is
            the same. When the tokens are coarser than stride 16, a stride-16 level is upsampled
            from the first stage's output (a transposed convolution, as ViTDet's simple feature
            pyramid does), so the heads still find strides 8, 16 and 32.
        embed_dim: ViT width, the same in every stage.
        depths: blocks per ViT stage; each stage after the first starts with a 2x2 token merge.
        num_heads: attention heads.
        mlp_ratio: hidden ratio of the dense feed-forward blocks.
        moe: the mixture-of-experts settings; ``None`` makes every block dense.
        text: the text encoder and gates; ``None`` builds no text path.
        drop_path: stochastic depth rate at the last block (linearly increasing).
    """

    name: str = "custom"
    in_chans: int = 3
    stem: Literal["cnn", "patch"] = "cnn"
    stem_widths: tuple[int, int] = (64, 128)
    stem_blocks: tuple[int, int] = (2, 2)
    stem_entry: Literal["resnet", "patchify"] = "resnet"
    stem_norm: str = "batch"
    patch_size: int = 2
    embed_dim: int = 384
    depths: tuple[int, ...] = (4, 8)
    num_heads: int = 6
    mlp_ratio: float = 4.0
    moe: MoEConfig | None = field(default_factory=MoEConfig)
    text: TextConfig | None = field(default_factory=TextConfig)
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        self.stem_widths = tuple(self.stem_widths)
        self.stem_blocks = tuple(self.stem_blocks)
        self.depths = tuple(self.depths)
        if isinstance(self.moe, dict):
            self.moe = MoEConfig(**self.moe)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range."""
        if self.in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {self.in_chans}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS} ('cnn': hybrid CNN stem, 'patch': plain ViT "
                             f"patch embedding), got {self.stem!r}")
        if len(self.stem_widths) != 2 or min(self.stem_widths) < 1:
            raise ValueError(f"stem_widths must be two positive ints (stride 4, 8), got {self.stem_widths}")
        if self.stem_entry not in STEM_ENTRIES:
            raise ValueError(f"stem_entry must be one of {STEM_ENTRIES} ('resnet': 7x7 convolution and max-pool, "
                             f"'patchify': 4x4 stride-4 convolution), got {self.stem_entry!r}")
        if self.stem_norm not in ("batch", "group"):
            raise ValueError(f"stem_norm must be 'batch' or 'group', got {self.stem_norm!r}")
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"depths must be a non-empty tuple of positive ints, got {self.depths}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        moe = self.moe
        if moe is not None:
            if not 1 <= moe.top_k <= moe.num_experts:
                raise ValueError(f"moe.top_k must be in [1, num_experts={moe.num_experts}], got {moe.top_k}")
            if moe.score not in ("softmax", "sigmoid"):
                raise ValueError(f"moe.score must be 'softmax' or 'sigmoid', got {moe.score!r}")
            if moe.every < 1:
                raise ValueError(f"moe.every must be >= 1, got {moe.every}")
            if moe.capacity_factor is not None and moe.capacity_factor <= 0:
                raise ValueError(f"moe.capacity_factor must be > 0 or None, got {moe.capacity_factor}")

    @property
    def token_strides(self) -> tuple[int, ...]:
        """Token stride of every ViT stage (``8 * patch_size``, doubled by each stage's merge)."""
        first = 8 * self.patch_size
        return tuple(first * 2**i for i in range(len(self.depths)))

    @property
    def upsampled_16(self) -> bool:
        """Whether the stride-16 level is upsampled from the first stage (its tokens are coarser)."""
        first = self.token_strides[0]
        return first > 16 and first % 16 == 0

    @property
    def strides(self) -> tuple[int, ...]:
        """Output stride of every pyramid level: 4 and 8 from the stem, 16 when it is upsampled,
        then one per ViT stage."""
        return (4, 8) + ((16,) if self.upsampled_16 else ()) + self.token_strides

    def is_moe_block(self, index: int) -> bool:
        """Whether the block with this global index has a MoE feed-forward layer."""
        return self.moe is not None and index % self.moe.every == self.moe.every - 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``BackboneConfig(**d)`` rebuilds the config."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> BackboneConfig:
        """A copy with some fields changed (nested ``moe``/``text`` may be given as dicts)."""
        return dataclasses.replace(self, **changes)


def _tiny() -> BackboneConfig:
    return BackboneConfig(
        name="tiny", stem_widths=(16, 32), stem_blocks=(1, 1), embed_dim=64, depths=(1, 1),
        num_heads=2, moe=MoEConfig(num_experts=4, top_k=2, expert_hidden=64),
        text=TextConfig(dim=32, depth=1, heads=2, max_len=32),
    )


def _edge() -> BackboneConfig:
    return BackboneConfig(
        name="edge", stem_widths=(32, 64), stem_blocks=(1, 1), embed_dim=192, depths=(2, 4),
        num_heads=3, moe=MoEConfig(num_experts=8, top_k=2, expert_hidden=192, every=2),
        text=TextConfig(dim=128, depth=2, heads=4),
    )


def _small() -> BackboneConfig:
    return BackboneConfig(
        name="small", stem_widths=(64, 128), embed_dim=384, depths=(4, 8), num_heads=6,
        moe=MoEConfig(num_experts=16, top_k=4, expert_hidden=192, num_shared=1),
    )


def _base() -> BackboneConfig:
    # ViT-B/16's width and depth, all 12 blocks on stride-32 tokens (a quarter of ViT-B/16's), the
    # stride-16 level upsampled from them, on a light patchify stem: BENCHMARKS.md "base at stride 32"
    return BackboneConfig(
        name="base", stem_widths=(64, 128), stem_blocks=(1, 1), stem_entry="patchify", patch_size=4,
        embed_dim=768, depths=(12,), num_heads=12,
        moe=MoEConfig(num_experts=16, top_k=4, expert_hidden=384, num_shared=1),
        text=TextConfig(dim=384, depth=4, heads=6),
    )


#: Named configurations: ``tiny`` for tests, ``edge`` for devices, ``small``, and ``base`` (ViT-B width).
#: Treat them as read-only; :func:`get_config` hands out copies.
CONFIGS: dict[str, BackboneConfig] = {c.name: c for c in (_tiny(), _edge(), _small(), _base())}


def _number(raw: str) -> Any:
    """``"4"`` -> 4, ``"3.5"`` -> 3.5, anything else stays a string (``"patchify"``)."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def get_config(name: str, **overrides: Any) -> BackboneConfig:
    """Return a fresh copy of a named configuration, optionally with fields overridden.

    ``name`` may carry field overrides after ``@``, for ablations from a command line:
    ``"base@depths=2,10"`` (a comma makes a tuple; ``"12,"`` is ``(12,)``), ``"base@top_k=2"`` (a
    field of the MoE config), ``"small@mlp_ratio=3.5"``, ``"tiny@stem_entry=patchify"`` (a string field).

    Example:
        >>> cfg = get_config("small", in_chans=1)
        >>> cfg.embed_dim
        384
        >>> get_config("tiny@patch_size=4@depths=2,").strides
        (4, 8, 16, 32)
    """
    name, *specs = name.split("@")
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; expected one of {sorted(CONFIGS)}")
    cfg = copy.deepcopy(CONFIGS[name])
    for spec in specs:
        key, eq, raw = spec.partition("=")
        if not eq:
            raise ValueError(f"config override {spec!r} in {name!r}: expected field=value")
        value = tuple(_number(v) for v in raw.split(",") if v) if "," in raw else _number(raw)
        if cfg.moe is not None and hasattr(cfg.moe, key):
            cfg = cfg.replace(moe=dataclasses.replace(cfg.moe, **{key: value}))
        elif key in {f.name for f in dataclasses.fields(cfg)}:
            cfg = cfg.replace(**{key: value})
        else:
            raise ValueError(f"config override {spec!r}: {name} has no field {key!r}")
    return cfg.replace(**overrides)

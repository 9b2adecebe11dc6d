"""Encoder FLOPs of every named config beside plain ViTs of the same width and depth, in one run.

Each named config appears twice: as built (hybrid CNN stem) and as ``NAME-patch``, the same config
with ``stem="patch"`` (the plain-ViT ablation: 16x16 pixel patches, strides 4 and 8 upsampled
from the tokens), so hybrid vs plain ViT compares like for like.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2),
forward only, batch 1. The plain ViT-S/16, ViT-B/16 and ViT-L/16 are built here from the same blocks
(patch-16 embedding, dense pre-norm blocks, MLP ratio 4; 12 blocks, and 24 for ViT-L/16).

    python benchmarks/encoder_flops.py [--size 224] [--size 512]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vlsdk.models.config import CONFIGS, get_config
from vlsdk.models.encoder import HybridEncoder
from vlsdk.models.model import count_parameters
from vlsdk.models.vit import Block, PatchEmbed


class PlainViT(nn.Module):
    """Reference ViT: patch-16 embedding and ``depth`` dense blocks of width ``dim``."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int = 16) -> None:
        super().__init__()
        self.embed = PatchEmbed(3, dim, patch)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.embed(x)
        for block in self.blocks:
            x, _ = block(x)
        return self.norm(x)


def flops(model: nn.Module, size: int) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, action="append", help="image size (repeatable); default 224")
    p.add_argument("--configs", nargs="+", default=None, help="named configs to count (default: all but tiny)")
    args = p.parse_args(argv)
    sizes = args.size or [224]
    torch.manual_seed(0)
    refs = {"vit_s16": PlainViT(384, 12, 6), "vit_b16": PlainViT(768, 12, 12), "vit_l16": PlainViT(1024, 24, 16)}
    results: dict[str, float] = {}
    print(f"{'model':12s} {'size':>5s} {'GFLOPs':>8s} {'vs ViT':>14s} {'params total/active':>22s}")
    for size in sizes:
        ref_flops = {k: flops(m, size) for k, m in refs.items()}
        for k, f in ref_flops.items():
            params = sum(q.numel() for q in refs[k].parameters()) / 1e6
            print(f"{k:12s} {size:5d} {f / 1e9:8.2f} {'1.00':>14s} {f'{params:.1f}M':>22s}")
        variants = [(n, get_config(n)) for n in (args.configs or [c for c in CONFIGS if c != "tiny"])]
        variants = [v for n, cfg in variants for v in ((n, cfg), (f"{n}-patch", cfg.replace(stem="patch")))]
        for name, cfg in variants:
            f = flops(HybridEncoder(cfg), size)
            ref = "vit_b16" if cfg.embed_dim == 768 else "vit_s16" if cfg.embed_dim == 384 else None
            ratio = f / ref_flops[ref] if ref else float("nan")
            counts = count_parameters(cfg)
            vs = f"{ratio:.3f}x {ref}" if ref else "-"
            print(f"{name:12s} {size:5d} {f / 1e9:8.2f} {vs:>14s} "
                  f"{f'{counts.total / 1e6:.1f}M/{counts.active / 1e6:.1f}M':>22s}")
            results[f"{name}@{size}"] = ratio
    return results


if __name__ == "__main__":
    main()

"""Where tokens go: per-patch routing maps, expert utilisation, domain x expert shares.

Every function runs the model in eval mode under ``torch.no_grad()`` and restores its
training flag afterwards. Routing maps keep each MoE layer's own token grid: a two-stage
backbone routes stride-16 tokens in its first stage and stride-32 tokens after the merge.

Example:
    >>> import torch, vlsdk
    >>> from vlsdk.inspect import routing_maps, expert_utilisation
    >>> model = vlsdk.VLModel("tiny")
    >>> maps = routing_maps(model, torch.rand(1, 3, 64, 64))
    >>> [(m.grid, tuple(m.expert.shape)) for m in maps]
    [((4, 4), (1, 4, 4, 2)), ((2, 2), (1, 2, 2, 2))]
    >>> rows = expert_utilisation(maps.stats)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlsdk.models.features import EncoderFeatures, RouterStats
from vlsdk.models.moe import DynamicMoE

__all__ = [
    "LayerRouting",
    "RoutingMaps",
    "DomainExpertTable",
    "routing_maps",
    "expert_utilisation",
    "domain_expert_table",
    "top_experts",
    "load_image",
    "IMAGE_SUFFIXES",
]

#: File types :func:`load_image` reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")

Images = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


@dataclass
class LayerRouting:
    """The routing of one MoE layer over its token grid.

    Attributes:
        layer: index into ``model.moe_layers``.
        stage: ViT stage of the layer (``None`` when the model does not say).
        grid: ``(h, w)`` token grid of this layer.
        stride: image pixels per token cell along each axis.
        expert_names: the layer's router rows, in order.
        expert: ``(B, h, w, k)`` long: the ``k`` experts of each patch, best gate weight first.
        weight: ``(B, h, w, k)`` float: their renormalised gate weights.
        tokens_per_expert: ``(E,)`` the layer's :attr:`RouterStats.tokens_per_expert`.
        entropy: mean entropy of the router's score distribution (nats).
    """

    layer: int
    stage: int | None
    grid: tuple[int, int]
    stride: int
    expert_names: list[str]
    expert: torch.Tensor
    weight: torch.Tensor
    tokens_per_expert: torch.Tensor
    entropy: float

    @property
    def top_k(self) -> int:
        return int(self.expert.shape[-1])

    @property
    def top1(self) -> torch.Tensor:
        """``(B, h, w)`` the best expert of each patch."""
        return self.expert[..., 0]

    @property
    def top1_weight(self) -> torch.Tensor:
        """``(B, h, w)`` the gate weight of the best expert."""
        return self.weight[..., 0]

    def counts(self, top1: bool = False) -> torch.Tensor:
        """``(E,)`` (patch, expert) assignments per expert; ``top1=True`` counts only the best."""
        ids = self.top1 if top1 else self.expert
        return torch.bincount(ids.reshape(-1), minlength=len(self.expert_names))

    def upsampled(self, index: int = 0, size: tuple[int, int] | None = None) -> np.ndarray:
        """``(H, W)`` top-1 expert ids of image ``index``, nearest-upsampled to pixels.

        Token ``(i, j)`` covers pixels ``[i*stride, (i+1)*stride)`` (the encoder pads at the
        bottom and right), so the map is repeated ``stride`` times and cropped to ``size``.
        """
        ids = self.top1[index].cpu().numpy()
        h, w = self.grid
        height, width = size if size is not None else (h * self.stride, w * self.stride)
        rows = np.minimum(np.arange(height) // self.stride, h - 1)
        cols = np.minimum(np.arange(width) // self.stride, w - 1)
        return ids[rows[:, None], cols[None, :]]


@dataclass
class RoutingMaps:
    """:class:`LayerRouting` of every MoE layer for one batch of images (iterable, indexable).

    Attributes:
        layers: one entry per MoE layer, in depth order.
        image_size: ``(H, W)`` of the input images.
        stats: the raw :class:`RouterStats` of the forward pass.
    """

    layers: list[LayerRouting]
    image_size: tuple[int, int]
    stats: list[RouterStats] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerRouting]:
        return iter(self.layers)

    def __getitem__(self, i: int) -> LayerRouting:
        return self.layers[i]

    def top_experts(self, n: int = 3, index: int = 0) -> list[dict[str, Any]]:
        """The ``n`` experts with the most gate weight per layer for image ``index``; see :func:`top_experts`."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rows = []
        for layer in self.layers:
            ids = layer.expert[index].reshape(-1, layer.top_k)
            w = layer.weight[index].reshape(-1, layer.top_k)
            num, patches = len(layer.expert_names), ids.shape[0]
            mass = torch.zeros(num).index_add_(0, ids.reshape(-1), w.reshape(-1))
            chosen = torch.bincount(ids.reshape(-1), minlength=num)
            best = torch.bincount(ids[:, 0], minlength=num)
            order = torch.argsort(mass, descending=True, stable=True)[:n]
            for rank, e in enumerate(order.tolist(), 1):
                if chosen[e] == 0:
                    break
                rows.append({
                    "layer": layer.layer, "grid": f"{layer.grid[0]}x{layer.grid[1]}", "rank": rank,
                    "expert": layer.expert_names[e], "weight": float(mass[e] / patches),
                    "mean_gate": float(mass[e] / chosen[e]), "patches": int(chosen[e]),
                    "top1": float(best[e] / patches),
                })
        return rows

    @property
    def expert_names(self) -> list[str]:
        """Every expert name of any layer, in first-seen order (a stable colour order)."""
        names: list[str] = []
        for layer in self.layers:
            names += [n for n in layer.expert_names if n not in names]
        return names


@dataclass
class DomainExpertTable:
    """Share of each domain's routed tokens that reached each expert (rows: domains).

    Attributes:
        domains: row labels.
        experts: column labels: the domain experts, then ``"generic"`` (all backbone experts).
        share: ``(D, X)`` share of each domain's gate weight (or assignments, see ``by``)
            received by each column, aggregated over layers; a row sums to 1 over all columns.
        per_layer: ``(L, D, X)`` the same per MoE layer (0 where a layer lacks the expert).
        tokens: domain -> number of routed tokens (summed over layers).
        by: ``"weight"``, ``"top1"`` or ``"assignments"``.
    """

    domains: list[str]
    experts: list[str]
    share: np.ndarray
    per_layer: np.ndarray
    tokens: dict[str, int]
    by: str = "weight"

    @property
    def domain_experts(self) -> list[str]:
        return [e for e in self.experts if e != "generic"]

    def own_share(self, domain: str) -> float:
        """Share of ``domain``'s tokens reaching experts of that domain (``"<domain>.*"``)."""
        row = self.share[self.domains.index(domain)]
        return float(sum(row[j] for j, e in enumerate(self.experts) if e.split(".")[0] == domain))

    def rows(self) -> list[dict[str, Any]]:
        """The table as rows for :meth:`vlsdk.report.Report.add_table`."""
        out = []
        for i, domain in enumerate(self.domains):
            row: dict[str, Any] = {"domain": domain, "tokens": self.tokens[domain]}
            row.update({e: float(self.share[i, j]) for j, e in enumerate(self.experts)})
            row["own"] = self.own_share(domain)
            out.append(row)
        return out


# -- running the model --------------------------------------------------------------------------


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _as_batch(images: torch.Tensor | np.ndarray, model: nn.Module) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    param = next(model.parameters(), None)
    return x.to(device=_device(model), dtype=param.dtype if param is not None else x.dtype)


def _batches(images: Images, model: nn.Module) -> list[torch.Tensor]:
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return [_as_batch(images, model)]
    batches = [_as_batch(x, model) for x in images]
    if not batches:
        raise ValueError("got no images")
    return batches


def _moe_layers(model: nn.Module) -> list[DynamicMoE]:
    layers = [m for m in model.modules() if isinstance(m, DynamicMoE)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MoE layers (config.moe is None): nothing is routed")
    return layers


def _stage_of(model: nn.Module) -> dict[int, int]:
    """id(moe layer) -> stage index for a VLModel or HybridEncoder (static: no hook, no forward)."""
    encoder = getattr(model, "encoder", model)
    return {id(m): s for s, stage in enumerate(getattr(encoder, "stages", None) or [])
            for m in stage.modules() if isinstance(m, DynamicMoE)}


def _forward(model: nn.Module, images: torch.Tensor, text: Any = None) -> EncoderFeatures:
    """One forward pass; its :class:`RouterStats` name each layer's grid and stride."""
    forward = getattr(model, "forward_features", model)
    feats = forward(images, text) if text is not None else forward(images)
    if not isinstance(feats, EncoderFeatures):
        feats = getattr(feats, "features", feats)
    if not isinstance(feats, EncoderFeatures):
        raise ValueError(f"{type(model).__name__}.forward_features must return EncoderFeatures, got "
                         f"{type(feats).__name__}")
    return feats


def routing_maps(model: nn.Module, images: torch.Tensor | np.ndarray, text: Any = None) -> RoutingMaps:
    """Per-patch routing of every MoE layer for a batch of images.

    Args:
        model: a :class:`vlsdk.VLModel` (or :class:`vlsdk.HybridEncoder`) with MoE layers.
        images: ``(B, C, H, W)`` or ``(C, H, W)`` images, as the model takes them.
        text: optional texts for the cross-modal gates (one per image).

    Returns:
        :class:`RoutingMaps`; ``maps[i].expert`` is ``(B, h_i, w_i, k)`` on layer ``i``'s grid
        and its counts equal ``maps.stats[i].tokens_per_expert``.

    Example:
        >>> maps = routing_maps(vlsdk.VLModel("tiny"), torch.rand(2, 3, 64, 64))  # doctest: +SKIP
        >>> maps[0].top1.shape, maps[1].top1.shape  # doctest: +SKIP
        (torch.Size([2, 4, 4]), torch.Size([2, 2, 2]))
    """
    x = _as_batch(images, model)
    batch, _, height, width = x.shape
    stage_of = _stage_of(model)
    layers = _moe_layers(model)
    with _eval(model):
        feats = _forward(model, x, text)
    stats = feats.router_stats
    if len(stats) != len(layers):
        raise RuntimeError(f"expected one routing record per MoE layer ({len(layers)}), got {len(stats)} statistics")
    out = []
    for i, (module, st) in enumerate(zip(layers, stats, strict=True)):
        n_tok = st.topk_idx.shape[0] // batch
        grid = tuple(int(g) for g in st.grid) if st.grid is not None else (1, n_tok)
        if grid[0] * grid[1] != n_tok:
            raise RuntimeError(f"MoE layer {i}: grid {grid} does not hold its {n_tok} tokens per image")
        stride = st.stride
        if stride is None:
            stride = max(math.ceil(height / grid[0]), math.ceil(width / grid[1]))
        k = st.topk_idx.shape[1]
        out.append(LayerRouting(
            layer=i, stage=stage_of.get(id(module)), grid=grid, stride=int(stride), expert_names=list(st.expert_names),
            expert=st.topk_idx.reshape(batch, *grid, k).cpu(),
            weight=st.topk_weight.float().reshape(batch, *grid, k).cpu(),
            tokens_per_expert=st.tokens_per_expert.cpu(), entropy=float(st.entropy),
        ))
    return RoutingMaps(out, (height, width), list(stats))


def _stats(model: nn.Module, images: Images, text: Any = None) -> list[list[RouterStats]]:
    with _eval(model):
        return [_forward(model, b, text).router_stats for b in _batches(images, model)]


# -- tables ------------------------------------------------------------------------------------


def _layers_of(stats_list: Any) -> list[list[RouterStats]]:
    """Normalise to ``[layer][forward] -> RouterStats``."""
    if isinstance(stats_list, RoutingMaps):
        stats_list = stats_list.stats
    elif isinstance(stats_list, EncoderFeatures) or hasattr(stats_list, "router_stats"):
        stats_list = stats_list.router_stats
    elif hasattr(stats_list, "features"):
        stats_list = stats_list.features.router_stats
    stats_list = list(stats_list)
    if not stats_list:
        raise ValueError("no router statistics (a model without MoE layers, or an empty list)")
    if all(isinstance(s, RouterStats) for s in stats_list):
        return [[s] for s in stats_list]
    forwards = [_layers_of(s) for s in stats_list]  # several forward passes
    depth = {len(f) for f in forwards}
    if len(depth) != 1:
        raise ValueError(f"forward passes have different numbers of MoE layers: {sorted(depth)}")
    return [[f[i][0] for f in forwards] for i in range(depth.pop())]


def expert_utilisation(stats_list: Any) -> list[dict[str, Any]]:
    """Per-layer share of (token, expert) assignments per expert, and the router's entropy.

    Args:
        stats_list: the ``router_stats`` of one forward (a list of :class:`RouterStats`, or
            :class:`EncoderFeatures`, ``ModelOutput``, :class:`RoutingMaps`), or a list of
            those from several forwards, which are summed per layer.

    Returns:
        One row per MoE layer: ``layer``, ``assignments`` (token-expert pairs), ``entropy``
        (mean router entropy, nats, token-weighted over forwards), ``max_entropy``
        (``ln E``), ``load_entropy`` (entropy of the shares), ``dropped`` (capacity drops),
        then one column per expert name with its share (each row's shares sum to 1; a name
        missing from a layer is ``None``).
    """
    layers = _layers_of(stats_list)
    names: list[str] = []
    for forwards in layers:
        for s in forwards:
            names += [n for n in s.expert_names if n not in names]
    rows = []
    for i, forwards in enumerate(layers):
        counts: dict[str, float] = {}
        entropy_sum, tokens, dropped_sum = 0.0, 0, 0.0
        for s in forwards:
            for name, c in zip(s.expert_names, s.tokens_per_expert.tolist(), strict=True):
                counts[name] = counts.get(name, 0) + c
            t = int(s.topk_idx.shape[0])
            entropy_sum += float(s.entropy) * t
            dropped_sum += float(s.dropped_fraction) * t
            tokens += t
        total = sum(counts.values())
        shares = {n: (c / total if total else 0.0) for n, c in counts.items()}
        load_entropy = -sum(p * math.log(p) for p in shares.values() if p > 0)
        row: dict[str, Any] = {
            "layer": i, "assignments": int(total), "entropy": entropy_sum / max(tokens, 1),
            "max_entropy": math.log(len(counts)) if counts else 0.0, "load_entropy": load_entropy,
            "dropped": dropped_sum / max(tokens, 1),
        }
        row.update({n: shares.get(n) for n in names})
        rows.append(row)
    return rows


def _shares(stats: RouterStats, by: str) -> torch.Tensor:
    """``(E,)`` summed per-token share of each expert (sums to the number of tokens)."""
    num = len(stats.expert_names)
    idx = stats.topk_idx
    if by == "weight":
        w = stats.topk_weight.float()
        return torch.zeros(num, dtype=torch.float64).index_add_(0, idx.reshape(-1).cpu(),
                                                                 w.reshape(-1).double().cpu())
    if by == "top1":
        return torch.bincount(idx[:, 0].cpu(), minlength=num).double()
    return torch.bincount(idx.reshape(-1).cpu(), minlength=num).double() / idx.shape[1]


def domain_expert_table(model: nn.Module, images_by_domain: Mapping[str, Images], *, by: str = "weight",
                        text: Any = None) -> DomainExpertTable:
    """Confusion-style table: which share of each domain's tokens reaches each domain expert.

    Args:
        model: a model with MoE layers and (usually) inserted domain experts.
        images_by_domain: domain name -> ``(B, C, H, W)`` images or a list of such batches
            (or of single ``(C, H, W)`` images of any size).
        by: what a token gives an expert: ``"weight"`` (its renormalised gate weight, so a
            token split 0.7/0.3 counts 0.7 for the first), ``"top1"`` (1 to its best expert)
            or ``"assignments"`` (``1/k`` to each of its ``k`` experts).
        text: optional texts, passed to every forward.

    Returns:
        :class:`DomainExpertTable` whose columns are the domain experts (every non-``generic``
        name) and ``"generic"``. Shares are summed over layers and divided by the tokens
        over layers, so an expert present in half of the layers can reach at most 0.5.
    """
    if by not in ("weight", "top1", "assignments"):
        raise ValueError(f"by must be 'weight', 'top1' or 'assignments', got {by!r}")
    if not images_by_domain:
        raise ValueError("images_by_domain is empty; pass {domain: images}")
    per_domain = {d: _stats(model, imgs, text) for d, imgs in images_by_domain.items()}
    names: list[str] = []
    for forwards in per_domain.values():
        for layer_stats in forwards:
            for s in layer_stats:
                names += [n for n in s.expert_names if n not in names and not n.startswith("generic.")]
    experts = names + ["generic"]
    col = {n: j for j, n in enumerate(experts)}
    domains = list(per_domain)
    n_layers = len(next(iter(per_domain.values()))[0])
    mass = np.zeros((n_layers, len(domains), len(experts)))
    tokens = np.zeros((n_layers, len(domains)))
    for d, domain in enumerate(domains):
        for layer_stats in per_domain[domain]:
            for i, s in enumerate(layer_stats):
                for name, v in zip(s.expert_names, _shares(s, by).tolist(), strict=True):
                    mass[i, d, col["generic" if name.startswith("generic.") else name]] += v
                tokens[i, d] += s.topk_idx.shape[0]
    per_layer = mass / np.maximum(tokens[..., None], 1)
    share = mass.sum(0) / np.maximum(tokens.sum(0)[:, None], 1)
    return DomainExpertTable(domains, experts, share, per_layer,
                             {dom: int(tokens[:, d].sum()) for d, dom in enumerate(domains)}, by)


def top_experts(model: nn.Module, image: torch.Tensor | np.ndarray, n: int = 3, text: Any = None
                ) -> list[dict[str, Any]]:
    """The ``n`` experts with the most gate weight per layer for one image.

    Args:
        model: a model with MoE layers.
        image: ``(C, H, W)`` or ``(1, C, H, W)``.
        n: experts per layer.
        text: optional text for the cross-modal gates.

    Returns:
        Rows ``layer``, ``grid``, ``rank``, ``expert``, ``weight`` (share of the image's gate
        weight: the expert's weight summed over patches / patches), ``mean_gate`` (its mean
        gate weight where chosen), ``patches`` (patches that chose it among their top-k),
        ``top1`` (share of patches where it was the best).
    """
    x = _as_batch(image, model)
    if x.shape[0] != 1:
        raise ValueError(f"top_experts takes one image, got a batch of {x.shape[0]}")
    return routing_maps(model, x, text).top_experts(n)


# -- images ------------------------------------------------------------------------------------


def load_image(path: str | Path, in_chans: int = 3) -> torch.Tensor:
    """Read a PNG/JPEG (through Pillow) or ``.npy`` file into a ``(1, in_chans, H, W)`` float tensor.

    8-bit images are scaled to ``[0, 1]``; ``.npy`` arrays are taken as they are
    (``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``). Grey images are repeated to three channels
    and RGB images averaged to one when the model wants that; an alpha channel is dropped.

    Example:
        >>> load_image("board.png", in_chans=1).shape  # doctest: +SKIP
        torch.Size([1, 1, 480, 640])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim == 3 and arr.shape[0] <= 4 < arr.shape[-1]:
            arr = np.moveaxis(arr, 0, -1)  # (C, H, W) -> (H, W, C)
    elif suffix in IMAGE_SUFFIXES:
        try:
            from PIL import Image
        except ImportError as err:  # pragma: no cover - Pillow comes with matplotlib
            raise ImportError('reading PNG/JPEG needs Pillow: pip install "vlsdk[all]" or pip install pillow') from err
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB", "RGBA", "I;16", "I", "F"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    else:
        raise ValueError(f"{path}: unsupported image type {suffix!r}; vlsdk routing reads "
                         f"{', '.join(IMAGE_SUFFIXES)} (convert volumes to a 2D slice first)")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 2D image, got an array of shape {arr.shape}")
    scale = 255.0 if arr.dtype == np.uint8 else 65535.0 if arr.dtype == np.uint16 else 1.0
    img = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / scale).permute(2, 0, 1)
    if img.shape[0] in (2, 4) and in_chans != img.shape[0]:
        img = img[:-1]  # drop alpha
    channels = img.shape[0]
    if channels != in_chans:
        if channels == 1:
            img = img.repeat(in_chans, 1, 1)
        elif channels == 3 and in_chans == 1:
            img = img.mean(0, keepdim=True)
        else:
            raise ValueError(f"{path} has {channels} channels but the model takes {in_chans}")
    return img.unsqueeze(0)


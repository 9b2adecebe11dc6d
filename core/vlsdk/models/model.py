"""``VLModel``: the shared backbone with runtime domain experts, text and task heads."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlsdk.models.config import BackboneConfig, get_config
from vlsdk.models.encoder import HybridEncoder
from vlsdk.models.features import EncoderFeatures
from vlsdk.models.metadata import InputSpec, ModelMetadata, default_channels
from vlsdk.models.moe import DynamicMoE, split_expert_name
from vlsdk.models.params import ParamCounts, count_module_parameters
from vlsdk.models.text import ByteTextEncoder, TextFeatures

__all__ = ["VLModel", "ModelOutput", "ExpertSpec", "HeadSpec", "count_parameters"]

TextInput = str | Sequence[str] | TextFeatures | None


@dataclass
class ExpertSpec:
    """How a domain expert was added, recorded in ``config.json`` so it can be rebuilt."""

    name: str
    layers: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    init_bias: float = -30.0
    plugin: str | None = None
    distribution: str | None = None
    registered: bool = True


@dataclass
class HeadSpec:
    """How a head was added: its registered task name and build options."""

    name: str
    task: str
    options: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None
    distribution: str | None = None


@dataclass
class ModelOutput:
    """What ``VLModel.forward`` returns.

    Attributes:
        features: the encoder's features (tokens, pyramid, router statistics).
        heads: head name -> that head's output.
    """

    features: EncoderFeatures
    heads: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.heads[name]

    @property
    def aux_loss(self) -> torch.Tensor:
        """Mean load-balancing loss over the MoE layers (0 without MoE)."""
        stats = self.features.router_stats
        return torch.stack([s.aux_loss for s in stats]).mean() if stats else self.features.tokens.new_zeros(())

    @property
    def z_loss(self) -> torch.Tensor:
        """Mean router z-loss over the MoE layers (0 without MoE)."""
        stats = self.features.router_stats
        return torch.stack([s.z_loss for s in stats]).mean() if stats else self.features.tokens.new_zeros(())


class VLModel(nn.Module):
    """The vlsdk model: :class:`HybridEncoder`, a byte-level text encoder, and runtime heads.

    Domain experts and heads are added at run time, by their registered names (plugins
    register them) or as module objects, and survive :meth:`save_pretrained` /
    :meth:`from_pretrained`, as does :attr:`metadata` (what the model is for: class names per
    head, the meaning of each input channel, its scaling and image size, how it was trained).

    Args:
        config: a :class:`BackboneConfig` or the name of a named config (``"tiny"``,
            ``"edge"``, ``"small"``, ``"base"``).
        **overrides: fields to change on a named config (e.g. ``in_chans=1``).

    Example:
        >>> model = VLModel("tiny", in_chans=1)
        >>> head = model.add_head("seg", task="segmentation", num_classes=2)
        >>> out = model(torch.zeros(1, 1, 64, 64), heads=["seg"])
        >>> out["seg"].logits.shape
        torch.Size([1, 2, 64, 64])
    """

    def __init__(self, config: BackboneConfig | str = "small", **overrides: Any) -> None:
        super().__init__()
        if isinstance(config, str):
            config = get_config(config, **overrides)
        elif overrides:
            config = config.replace(**overrides)
        if not isinstance(config, BackboneConfig):
            raise ValueError(f"config must be a BackboneConfig or a config name, got {type(config).__name__}")
        self.text_encoder: nn.Module | None = None
        if config.text is not None and config.text.hf_path:
            from vlsdk.models.hf_text import HFTextEncoder

            self.text_encoder = HFTextEncoder(config.text.hf_path, config.text.max_len)
            config = config.replace(text=dataclasses.replace(config.text, dim=self.text_encoder.dim))
        elif config.text is not None:
            self.text_encoder = ByteTextEncoder(config.text)
        self.config = config
        self.encoder = HybridEncoder(config)
        self.heads = nn.ModuleDict()
        self.expert_specs: dict[str, ExpertSpec] = {}
        self.head_specs: dict[str, HeadSpec] = {}
        #: What the model is for; saved in ``config.json`` ("metadata") and rendered in the model card.
        self.metadata: ModelMetadata = ModelMetadata(input=InputSpec(default_channels(config.in_chans)))

    # -- experts ----------------------------------------------------------------------------
    @property
    def moe_layers(self) -> list[DynamicMoE]:
        return self.encoder.moe_layers

    @property
    def expert_names(self) -> list[str]:
        """Every routed expert name of the first MoE layer plus inserted domain experts."""
        names: list[str] = []
        for layer in self.moe_layers:
            names += [n for n in layer.expert_names if n not in names]
        return names

    def _layer_indices(self, layers: Iterable[int] | None) -> list[int]:
        n = len(self.moe_layers)
        if n == 0:
            raise ValueError("this model has no MoE layers (config.moe is None); it cannot take experts")
        if layers is None:
            return list(range(n))
        out = []
        for i in layers:
            if not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f"layers must be MoE layer indices in [{-n}, {n}), got {i!r}")
            out.append(i % n)
        return sorted(set(out))

    def add_expert(self, name: str, module: nn.Module | Callable[..., nn.Module] | None = None, *,
                   layers: Iterable[int] | None = None, init_bias: float = -30.0, **options: Any) -> None:
        """Insert a domain expert into MoE layers and grow each layer's router by one row.

        Args:
            name: ``"<domain>.<expert>"``, e.g. ``"medical.lesion"``.
            module: ``None`` builds the expert registered under ``name`` (by a plugin) with
                ``options``; an ``nn.Module`` is copied into each layer; a callable is called as
                ``module(dim, **options)`` once per layer. Only registered experts reload from a
                checkpoint without help.
            layers: MoE layer indices (see :attr:`moe_layers`); default all.
            init_bias: router bias of the new row; the default leaves routing unchanged.
            **options: factory options, recorded in the checkpoint.
        """
        split_expert_name(name)
        if name in self.expert_specs or any(name in layer.expert_names for layer in self.moe_layers):
            raise ValueError(f"expert {name!r} is already in the model; remove_expert({name!r}) first")
        indices = self._layer_indices(layers)
        dim = self.config.embed_dim
        spec = ExpertSpec(name, indices, dict(options), init_bias, registered=module is None)
        if module is None:
            from vlsdk.plugins import get_registry

            entry = get_registry("experts").get(name)
            spec.plugin, spec.distribution = entry.plugin, entry.distribution
            factory: Callable[..., nn.Module] = entry.obj
        elif isinstance(module, nn.Module):
            if options:
                raise ValueError("options are for factories; got an nn.Module and options " + str(sorted(options)))
            factory = lambda dim: copy.deepcopy(module)  # noqa: E731
        elif callable(module):
            factory = module
        else:
            raise ValueError(f"module must be None, an nn.Module or a factory, got {type(module).__name__}")
        added = []
        try:
            for i in indices:
                self.moe_layers[i].add_expert(name, factory(dim, **options), init_bias)
                added.append(i)
        except Exception:
            for i in added:
                self.moe_layers[i].remove_expert(name)
            raise
        self.expert_specs[name] = spec

    def remove_expert(self, name: str) -> None:
        """Remove a domain expert from every layer it was inserted into."""
        if name not in self.expert_specs:
            raise KeyError(f"no domain expert {name!r}; inserted: {sorted(self.expert_specs)}")
        for i in self.expert_specs.pop(name).layers:
            self.moe_layers[i].remove_expert(name)

    def _select_experts(self, selectors: tuple[str, ...]) -> list[str]:
        names = self.expert_names + ["shared"]
        if not selectors:
            raise ValueError("name at least one expert, domain ('medical'), 'generic', 'shared' or 'all'")
        chosen: list[str] = []
        for sel in selectors:
            hits = [n for n in names if sel == "all" or n == sel or n.split(".")[0] == sel]
            if not hits:
                raise ValueError(f"no expert matches {sel!r}; experts: {names}")
            chosen += [h for h in hits if h not in chosen]
        return chosen

    def freeze_experts(self, *selectors: str) -> list[str]:
        """Freeze experts (and their router rows) by name, domain, ``"generic"``, ``"shared"`` or ``"all"``.

        Returns the expert names that were frozen.
        """
        return self._set_frozen(selectors, True)

    def unfreeze_experts(self, *selectors: str) -> list[str]:
        """Undo :meth:`freeze_experts` for the selected experts."""
        return self._set_frozen(selectors, False)

    def _set_frozen(self, selectors: tuple[str, ...], frozen: bool) -> list[str]:
        chosen = self._select_experts(selectors)
        for layer in self.moe_layers:
            for name in chosen:
                if name in layer.expert_names or (name == "shared" and layer.shared is not None):
                    layer.set_frozen(name, frozen)
        return chosen

    # -- heads -----------------------------------------------------------------------------
    def add_head(self, name: str, task: str | None = None, *, checkpoint: str | Path | None = None,
                 **options: Any) -> nn.Module:
        """Build the head registered for ``task`` (default: ``name``) and attach it as ``name``.

        Args:
            name: the head's name in this model (an adapter name too, for LoRA).
            task: registered head name (``"detection"``, ``"segmentation"``, ``"depth"`` or a
                plugin's head); with ``checkpoint`` it defaults to the saved one.
            checkpoint: a directory written by ``save_head``: the head's weights are loaded (a
                ``vlsdk.train.lora.save_adapter`` folder is loaded by ``vlsdk.train.lora.load_adapter``).
            **options: passed to the head factory (e.g. ``num_classes=6``); with ``checkpoint``
                they default to the saved ones.
        """
        if not name.isidentifier():
            raise ValueError(f"head names must be identifiers, got {name!r}")
        if name in self.heads:
            raise ValueError(f"head {name!r} already exists; remove_head({name!r}) first")
        if checkpoint is not None:
            from vlsdk.models.checkpoint import read_head_spec

            spec = read_head_spec(checkpoint)
            task, options = task or spec["task"], options or spec.get("options", {})
            if (Path(checkpoint) / "adapter_config.json").is_file():  # models do not know how they are tuned
                raise ValueError(f"{checkpoint} holds a LoRA adapter beside the head: load both with "
                                 f"vlsdk.train.lora.load_adapter(model, {name!r}, {str(checkpoint)!r})")
        from vlsdk.plugins import get_registry

        task = task or name
        entry = get_registry("heads").get(task)
        head = entry.obj(self.encoder.channels, **options)
        if not isinstance(head, nn.Module):
            raise ValueError(f"head factory {task!r} from plugin {entry.plugin!r} returned "
                             f"{type(head).__name__}, expected an nn.Module")
        param = next(self.parameters())
        self.heads[name] = head.to(param.device)
        self.head_specs[name] = HeadSpec(name, task, dict(options), entry.plugin, entry.distribution)
        if checkpoint is not None:
            from vlsdk.models.checkpoint import load_head_weights

            load_head_weights(self, name, checkpoint)
        return head

    def remove_head(self, name: str) -> nn.Module:
        """Detach and return a head."""
        if name not in self.heads:
            raise KeyError(f"no head {name!r}; heads: {sorted(self.heads)}")
        self.head_specs.pop(name)
        head = self.heads[name]
        del self.heads[name]
        return head

    # -- forward ----------------------------------------------------------------------------
    def encode_text(self, text: TextInput) -> TextFeatures | None:
        """Encode strings with the built-in text encoder; ``None`` when no gate would use them."""
        if text is None or isinstance(text, TextFeatures):
            return text
        if self.text_encoder is None:
            raise ValueError("this model has no text path (config.text is None); call it without text")
        compiling = torch.compiler.is_compiling()  # read the gates' guarded bool, not alpha (a host sync)
        if not self.training and not any(g.open_at_eval if compiling else g.refresh() for g in self.encoder.gates):
            return None  # every gate is closed: skip the text encoder too
        return self.text_encoder.encode([text] if isinstance(text, str) else list(text))

    def forward_features(self, images: torch.Tensor, text: TextInput = None,
                         max_stride: int | None = None) -> EncoderFeatures:
        """Encoder features for ``(B, C, H, W)`` images and optional texts (one per image).

        ``max_stride`` (the coarsest level the caller reads) skips the later ViT stages; see
        :meth:`HybridEncoder.forward_features`.
        """
        feats = self.encode_text(text)
        if feats is not None and feats.tokens.shape[0] != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {feats.tokens.shape[0]} texts; pass one text per image")
        return self.encoder(images, feats, max_stride=max_stride)  # via __call__: hooks (the trainer's) see it

    def forward_head(self, features: EncoderFeatures, heads: Sequence[str] | None = None) -> dict[str, Any]:
        """Run the named heads (default all) on encoder features."""
        names = list(self.heads) if heads is None else list(heads)
        missing = [h for h in names if h not in self.heads]
        if missing:
            raise ValueError(f"unknown head(s) {missing}; attached heads: {sorted(self.heads)}")
        return {h: self.heads[h](features) for h in names}

    def forward(self, images: torch.Tensor, text: TextInput = None,
                heads: Sequence[str] | None = None, max_stride: int | None = None) -> ModelOutput:
        """Encode images (and text) and run the heads; ``heads=[]`` returns only the features.

        ``max_stride``: the coarsest pyramid level the heads read (e.g. ``max(head.strides)``);
        the encoder stages after it are not run (:meth:`HybridEncoder.forward_features`).
        """
        features = self.forward_features(images, text, max_stride)
        return ModelOutput(features, self.forward_head(features, heads))

    # -- export mode, checkpoints -----------------------------------------------------------
    def set_dense_moe(self, dense: bool = True) -> VLModel:
        """Switch every MoE layer to the static all-experts path (for export) or back."""
        for layer in self.moe_layers:
            layer.dense = dense
        return self

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (with :attr:`metadata`), ``model.safetensors`` and the model card ``README.md``.

        Raises:
            ValueError: :attr:`metadata` does not fit the model (channel count, head names).
        """
        from vlsdk.models.checkpoint import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, experts: Mapping[str, Callable[..., nn.Module]] | None = None,
                        map_location: str | torch.device = "cpu", verify: bool = True,
                        check_finite: bool = True) -> VLModel:
        """Rebuild a model saved by :meth:`save_pretrained` (with its :attr:`metadata`), in eval mode.

        Args:
            directory: the checkpoint directory.
            experts: factories for experts that were added as module objects rather than by a
                registered name (``name -> factory(dim, **options)``).
            map_location: device for the weights.
            verify: check the weights against the SHA-256 recorded in ``config.json``.
            check_finite: refuse weights holding NaN or inf.

        Raises:
            ValueError: a damaged checkpoint, naming the file and the field or tensors.
        """
        from vlsdk.models.checkpoint import from_pretrained

        return from_pretrained(cls, directory, experts=experts, map_location=map_location, verify=verify,
                               check_finite=check_finite)


def count_parameters(model: nn.Module | BackboneConfig | str) -> ParamCounts:
    """Count the parameters of a model, or of the :class:`VLModel` a config builds (on the meta device).

    Args:
        model: a built model, a :class:`~vlsdk.models.config.BackboneConfig` or a config name
            (``"base"``, ``"small@depths=2,2"``).

    Returns:
        ``ParamCounts(total, active)``: ``active`` counts the ``top_k`` routed experts a token meets.

    Example:
        >>> counts = count_parameters("base")
        >>> counts.active < counts.total
        True
    """
    if isinstance(model, str):
        model = get_config(model)
    if isinstance(model, BackboneConfig):
        with torch.device("meta"):
            model = VLModel(model)
    return count_module_parameters(model)

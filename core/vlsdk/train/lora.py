"""LoRA adapters per task through peft, on a float, an int8 or a 4-bit frozen base.

One :class:`~vlsdk.VLModel` backbone carries one LoRA adapter per task; the adapter is named
after the task, which is also the name of the task's head (``model.heads[task]``). Adapters go
where they are asked by module name (MoE experts, attention, head convolutions), everything else
stays frozen, and :func:`set_adapter` switches between tasks explicitly.

**peft API used.** Adapters are injected *in place* with peft's ``LoraModel`` (exactly what
``peft.inject_adapter_in_model`` does, keeping the tuner long enough to read its
``targeted_module_names``) rather than ``get_peft_model``: the model stays a ``VLModel``, so
``model(images, heads=[...])``, ``add_head``, ``save_pretrained`` and the :class:`~vlsdk.train.Trainer`
(which checkpoints through ``model.save_pretrained``; a ``PeftModel`` would save only the
adapter there) work unchanged, and several task adapters share one backbone. A ``PeftModel``
without a task type would only forward to the model anyway. Adapters are saved and loaded with
peft's own ``get_peft_model_state_dict`` / ``set_peft_model_state_dict`` in peft's layout.

**Quantised base.** ``quantize_base=True`` (or ``8``) replaces the frozen ``nn.Linear`` layers by
:class:`~vlsdk.quant.Int8Linear`, ``quantize_base=4`` by 4-bit :class:`~vlsdk.quant.Int4Linear`
(QLoRA's setting), *before* injecting, like peft's QLoRA flow, and registers
:class:`LoraQuantizedLinear` for both through peft's custom-module mapping
(``LoraConfig._register_custom_module``, see peft's ``developer_guides/custom_models``), so peft
builds the LoRA layer on the quantised layer itself instead of refusing an unknown type.

Directory layout written by :func:`save_adapter` (read by :func:`load_adapter`)::

    adapter_config.json         peft's LoraConfig
    adapter_model.safetensors   peft's adapter state dict (adapter name stripped from the keys)
    head_config.json            the task head's spec (vlsdk's save_head), if the model has the head
    head.safetensors            the head's own weights, without LoRA

Example:
    >>> model = VLModel("tiny", in_chans=1)  # doctest: +SKIP
    >>> model.add_head("seg", task="segmentation", num_classes=2)  # doctest: +SKIP
    >>> attach_lora(model, "seg", [r".*experts\\.generic\\.\\d\\.fc[12]", "classifier"],
    ...             quantize_base=True)  # doctest: +SKIP
    >>> save_adapter(model, "seg", "adapters/seg")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from vlsdk.models.expert_layout import unstack_generic_experts
from vlsdk.quant import DEFAULT_EXCLUDE, Int4Linear, Int8Linear, QuantizedLinear, quantize_linear_layers
from vlsdk.quant.int4 import DEFAULT_GROUP_SIZE
from vlsdk.version import __version__

try:
    from peft import LoraConfig, LoraModel
    from peft.functional import delete_adapter as _peft_delete_adapter
    from peft.functional import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.functional import set_adapter as _peft_set_adapter
    from peft.tuners.lora import Linear as _PeftLoraLinear
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge, check_target_module_exists
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError('LoRA adapters need peft: pip install "vlsdk[lora]"') from err

__all__ = ["attach_lora", "set_adapter", "save_adapter", "load_adapter", "lora_targets", "trainable_state_bytes",
           "LoraQuantizedLinear", "LoraInt8Linear", "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME"]

ADAPTER_CONFIG_NAME = "adapter_config.json"        # peft's CONFIG_NAME
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME
_PREFIX = "lora_"
_WRAPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, QuantizedLinear, BaseTunerLayer)
#: optimiser state tensors kept per parameter (AdamW: exp_avg and exp_avg_sq), plus a ``step`` scalar
_OPTIMIZER_STATE = {"adamw": (2, True), "adam": (2, True), "sgd": (0, False), "sgd_momentum": (1, False)}


class LoraQuantizedLinear(_PeftLoraLinear):
    """peft's LoRA ``Linear`` on a quantised base layer (:class:`~vlsdk.quant.Int8Linear`,
    :class:`~vlsdk.quant.Int4Linear`).

    The forward is peft's (``base_layer(x)`` plus the active adapters' low-rank updates); only
    what needs the base weight differs: merging dequantises, adds the update and re-quantises
    (so it changes outputs by the quantisation's rounding); ``unmerge`` puts the quantised base
    back exactly as it was before the first merge (kept meanwhile: the quantised bytes once more,
    not a float copy), so merge/unmerge rounds do not wear the base down. Plain LoRA only: DoRA
    and the other variants need a float base weight.

    It is registered for both layer types on every config :func:`attach_lora` and
    :func:`load_adapter` build, via ``LoraConfig._register_custom_module``.
    """

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int] | tuple[None, None]:
        if isinstance(module, QuantizedLinear):
            return module.in_features, module.out_features
        return super()._get_in_out_features(module)

    def update_layer(self, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        super().update_layer(adapter_name, *args, **kwargs)
        if adapter_name in getattr(self, "lora_variant", {}):
            variant = type(self.lora_variant[adapter_name]).__name__
            self.delete_adapter(adapter_name)
            raise ValueError(f"LoRA on a quantised base supports plain LoRA only, not {variant} "
                             "(it needs the float weight)")

    def _merge_into_base(self, adapter_names: list[str], sign: float, safe_merge: bool = False) -> None:
        base = self.get_base_layer()
        weight = base.dequantize_weight()
        for name in adapter_names:
            weight = weight + sign * self.get_delta_weight(name).float()
        if safe_merge and not torch.isfinite(weight).all():
            raise ValueError(f"NaNs detected in the merged weights; the adapters {adapter_names} seem to be broken")
        warnings.warn(f"merging LoRA into an int{base.bits} base re-quantises the weight: outputs change by "
                      "its rounding", UserWarning, stacklevel=3)
        base.set_weight(weight)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = [n for n in check_adapters_to_merge(self, adapter_names) if n in self.lora_A]
        if names:
            if not self.merged_adapters:
                self._unmerged_base = {k: b.clone() for k, b in self.get_base_layer().named_buffers()}
            self._merge_into_base(names, 1.0, safe_merge)
            self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        kept = getattr(self, "_unmerged_base", None)
        if kept is not None and self.merged_adapters:
            base = self.get_base_layer()
            with torch.no_grad():
                for key, buffer in base.named_buffers():
                    buffer.copy_(kept[key])
        elif self.merged_adapters:  # merged by another route: subtract the updates again
            self._merge_into_base([n for n in self.merged_adapters if n in self.lora_A], -1.0)
        self._unmerged_base = None
        self.merged_adapters.clear()


#: the name this class had when only int8 bases existed
LoraInt8Linear = LoraQuantizedLinear


# -- targets ------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> str:
    """A target pattern matches a module whose dotted name, or a dotted suffix of it, it fully matches.

    That is peft's rule for a string ``target_modules`` (``re.fullmatch`` on the name) and for
    list entries (``"fc1"`` matches ``"...experts.generic.0.fc1"``) in one.
    """
    return rf"(?:.*\.)?(?:{pattern})"


def _matches(pattern: str, name: str) -> bool:
    return re.fullmatch(_pattern_regex(pattern), name) is not None


def _tuner_layers(model: nn.Module) -> dict[str, BaseTunerLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Module names peft may target: not the model itself, not inside an existing LoRA layer."""
    inner = tuple(n + "." for n in _tuner_layers(model))
    return {n: m for n, m in model.named_modules() if n and not n.startswith(inner)}


def _check_patterns(model: nn.Module, patterns: list[str]) -> dict[str, list[str]]:
    unstack_generic_experts(model, lambda name: any(_matches(p, name) for p in patterns))
    candidates = _candidates(model)
    wrappable = [n for n, m in candidates.items() if isinstance(m, _WRAPPABLE)]
    hits = {p: [n for n in candidates if _matches(p, n)] for p in patterns}
    missing = [p for p, names in hits.items() if not names]
    if missing:
        hints = {p: difflib.get_close_matches(p, wrappable, n=3, cutoff=0.0) for p in missing}
        raise ValueError(f"LoRA target pattern(s) {missing} match no module of the model (a pattern must fully "
                         f"match a module name or a dotted suffix of it); closest layers LoRA can wrap: {hints}")
    for p, names in hits.items():
        bad = [n for n in names if not isinstance(candidates[n], _WRAPPABLE)]
        if bad:
            inside = [n for n in wrappable if n.startswith(bad[0] + ".")][:4]
            raise ValueError(f"LoRA target pattern {p!r} matches {bad[0]!r}, a {type(candidates[bad[0]]).__name__} "
                             "that LoRA cannot wrap (it wraps nn.Linear, nn.Conv1d/2d/3d, nn.Embedding and "
                             f"the quantised Int8Linear/Int4Linear); target its layers instead, e.g. {inside}")
    return hits


def _adapters(model: nn.Module) -> dict[str, LoraConfig]:
    return dict(getattr(model, "peft_config", None) or {})


def _check_task(model: nn.Module, task: str) -> None:
    if task not in _adapters(model):
        raise KeyError(f"no LoRA adapter {task!r} in the model; adapters: {sorted(_adapters(model))}")


def _lora_config(patterns: list[str], r: int, alpha: float, dropout: float) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                      target_modules="|".join(_pattern_regex(p) for p in patterns))


def _inject(model: nn.Module, config: LoraConfig, task: str) -> list[str]:
    """Inject adapter ``task``; returns peft's ``targeted_module_names`` for it."""
    before = _adapters(model)
    config._register_custom_module({Int8Linear: LoraQuantizedLinear, Int4Linear: LoraQuantizedLinear})  # not saved
    if hasattr(model, "peft_config"):  # else the tuner adopts (and mutates) the dict, with a warning
        del model.peft_config
    try:
        tuner = LoraModel(model, config, adapter_name=task)
    except ValueError as err:
        raise ValueError(f"peft could not attach the LoRA adapter {task!r}: {err}") from err
    except StopIteration:  # peft reads next(model.parameters()) for the device
        raise ValueError(f"peft could not attach the LoRA adapter {task!r}: the model holds no parameter (every "
                         "layer is a frozen quantised buffer); keep at least one float layer, e.g. a head") from None
    finally:
        model.peft_config = before  # the tuner overwrote it with this adapter only
    model.peft_config[task] = config
    return list(tuner.targeted_module_names)


def _detach(model: nn.Module, task: str) -> None:
    _peft_delete_adapter(model, task, prefix=_PREFIX)
    model.peft_config.pop(task, None)


def lora_targets(model: nn.Module, task: str) -> list[str]:
    """Names of the modules carrying the LoRA adapter ``task``."""
    _check_task(model, task)
    return [n for n, m in _tuner_layers(model).items() if isinstance(m, LoraLayer) and task in m.lora_A]


def _keep_frozen_batchnorm_in_eval(module: nn.Module, args: Any) -> None:
    if module.training and not any(p.requires_grad for p in module.parameters(recurse=False)):
        module.train(False)


def _freeze_batchnorm_statistics(model: nn.Module, skip: str | None = None) -> None:
    """Frozen BatchNorm layers normalise with their running statistics in training too.

    Otherwise training mode would update the running mean/var of the frozen base: the base
    would drift, and an adapter would not reproduce its outputs on a fresh copy of the base.
    The hook re-checks on each call, so a BatchNorm made trainable later trains normally.
    """
    for name, module in model.named_modules():
        if (isinstance(module, nn.modules.batchnorm._BatchNorm) and not getattr(module, "_vlsdk_frozen_stats", False)
                and not (skip and name.startswith(skip))):
            module.register_forward_pre_hook(_keep_frozen_batchnorm_in_eval)
            module._vlsdk_frozen_stats = True


def _adapter_parameters(model: nn.Module, task: str) -> list[nn.Parameter]:
    params = []
    for layer in _tuner_layers(model).values():
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if isinstance(container, (nn.ModuleDict, nn.ParameterDict)) and task in container:
                item = container[task]
                params += list(item.parameters()) if isinstance(item, nn.Module) else [item]
    return params


# -- public API ---------------------------------------------------------------------------------
def _base_bits(quantize_base: object) -> int | None:
    """The bits of the quantised base ``quantize_base`` asks for (``None``: keep the base as it is)."""
    if quantize_base is False:
        return None
    if quantize_base is True:
        return 8
    if type(quantize_base) is int and quantize_base in (8, 4):
        return quantize_base
    raise ValueError(f"quantize_base must be False, True (int8), 8 or 4, got {quantize_base!r}")


def _quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """The model's quantised base layers, by the name of the layer they stand for (LoRA's
    ``.base_layer`` suffix dropped)."""
    return {name.removesuffix(".base_layer"): m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def _quantize_base(model: nn.Module, bits: int | None, layers: dict[str, int] | None = None) -> None:
    """Quantise the base to ``bits`` (all but routers, heads and LoRA layers, or exactly ``layers``:
    name -> 4-bit group size, 0 for int8) unless it is already; never under existing adapters."""
    if bits is None:
        return
    have = {m.bits for m in _quantized_layers(model).values()}
    if have:
        if have != {bits}:
            raise ValueError(f"an int{bits} base was asked for, but the model's base is already quantised to "
                             f"{'/'.join(f'int{b}' for b in sorted(have))}; start from a float model")
        return
    if _adapters(model):
        raise ValueError(f"quantising the base would change it under the LoRA adapters already on the model "
                         f"({sorted(_adapters(model))}); quantise it before the first adapter")
    if layers is None:
        quantize_linear_layers(model, exclude=DEFAULT_EXCLUDE, bits=bits)  # type: ignore[arg-type]
        return
    for group in sorted(set(layers.values())):
        names = [n for n, g in layers.items() if g == group]
        quantize_linear_layers(model, include=names, exclude=(), bits=4 if group else 8,  # (int8 layers record 0)
                               group_size=group or DEFAULT_GROUP_SIZE)
    done = set(_quantized_layers(model))
    if done != set(layers):
        raise ValueError(f"the recorded base layers do not fit this model: missing {sorted(set(layers) - done)[:5]}, "
                         f"unexpected {sorted(done - set(layers))[:5]}")


def _recorded_base(metadata: dict[str, str], weights: str) -> tuple[int | None, dict[str, int] | None]:
    """The base an adapter file records: its bits (``None``: float) and, when written, the
    quantised layers (name -> 4-bit group size, 0 for int8). Adapters saved before 4-bit bases
    only say int8 or not."""
    saved = metadata.get("vlsdk_base_bits") or {"true": "8"}.get(metadata.get("vlsdk_int8_base", ""), "0")
    if saved not in ("0", "8", "4"):
        raise ValueError(f"{weights} records a base of {saved!r} bits (metadata vlsdk_base_bits); expected "
                         "0, 8 or 4; pass quantize_base= to choose")
    bits = {"0": None, "8": 8, "4": 4}[saved]
    try:
        layers = json.loads(metadata["vlsdk_base_layers"]) if "vlsdk_base_layers" in metadata else None
    except json.JSONDecodeError as err:
        raise ValueError(f"{weights}: metadata vlsdk_base_layers is not JSON ({err})") from None
    if layers is not None and not (isinstance(layers, dict) and all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in layers.items())):
        raise ValueError(f"{weights}: metadata vlsdk_base_layers must map layer names to group sizes, got "
                         f"{str(layers)[:80]}")
    return bits, (layers or None) if bits else None


def attach_lora(model: nn.Module, task: str, target_modules: str | Sequence[str], r: int = 8, alpha: float = 16,
                dropout: float = 0.0, quantize_base: bool | Literal[8, 4] = False, *,
                train_head: bool = False) -> nn.Module:
    """Attach a LoRA adapter named ``task`` to the modules named by ``target_modules``, in place.

    Afterwards only the adapter's ``lora_A``/``lora_B`` (and, with ``train_head``, the head
    ``model.heads[task]``) are trainable; the adapter is active (see :func:`set_adapter`). Frozen
    BatchNorm layers keep their running statistics in training mode too, so the base really
    stays as it was and the adapter reproduces on a fresh copy of it.

    Args:
        model: a :class:`~vlsdk.VLModel` (any ``nn.Module`` works).
        task: adapter name, which is also the task head's name.
        target_modules: one pattern or several. A pattern is a regular expression that must fully
            match a module's dotted name or a dotted suffix of it: ``"fc1"`` (every ``...fc1``),
            ``r".*experts\\.medical\\.lesion\\.fc[12]"``, ``r"heads\\.seg\\.decoder\\..*\\.0"``. Each pattern
            must reach at least one layer peft can wrap (``nn.Linear``, ``nn.Conv*d``,
            ``nn.Embedding``, ``Int8Linear``, ``Int4Linear``): peft itself only fails when nothing
            matched at all, so the targeted module names are compared with every pattern here.
        r: LoRA rank.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input.
        quantize_base: first replace the frozen ``nn.Linear`` layers (all but routers, heads and
            LoRA layers) by int8 :class:`~vlsdk.quant.Int8Linear` (``True`` or ``8``) or by 4-bit
            :class:`~vlsdk.quant.Int4Linear` (``4``: about 0.27x the bytes of bfloat16).
        train_head: also train ``model.heads[task]`` in full (it must then carry no LoRA target).

    Returns:
        ``model`` itself, with the adapter injected.

    Raises:
        ValueError: bad arguments, an adapter ``task`` already attached, a pattern that matches
            nothing (named, with the closest layer names) or a layer LoRA cannot wrap.
    """
    patterns = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not isinstance(task, str) or not task.isidentifier():
        raise ValueError(f"task (the adapter and head name) must be an identifier, got {task!r}")
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"target_modules must be one or more non-empty name patterns, got {target_modules!r}")
    for p in patterns:
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"target pattern {p!r} is not a valid regular expression: {err}") from err
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    bits = _base_bits(quantize_base)
    if task in _adapters(model):
        raise ValueError(f"the model already has a LoRA adapter {task!r}; adapters: {sorted(_adapters(model))}")
    heads = getattr(model, "heads", {})
    if train_head and task not in heads:
        raise ValueError(f"train_head=True trains model.heads[{task!r}], but the model has no such head; "
                         f"heads: {sorted(heads)}")
    hits = _check_patterns(model, patterns)
    in_head = [n for names in hits.values() for n in names if n.startswith(f"heads.{task}.")]
    if train_head and in_head:
        raise ValueError(f"train_head=True trains head {task!r} in full, so it cannot also carry LoRA; "
                         f"drop the targets {in_head[:4]}")

    _quantize_base(model, bits)
    targeted = _inject(model, _lora_config(patterns, r, alpha, dropout), task)
    unmatched = [p for p in patterns if not any(_matches(p, n) for n in targeted)]
    if unmatched:  # peft only errors when nothing at all matched: check every pattern
        _detach(model, task)
        raise ValueError(f"LoRA target pattern(s) {unmatched} matched no module peft adapted; it adapted {targeted}")

    for p in model.parameters():
        p.requires_grad_(False)
    set_adapter(model, task, trainable=True)
    if train_head:
        heads[task].requires_grad_(True)
    _freeze_batchnorm_statistics(model, skip=f"heads.{task}." if train_head else None)
    return model


def set_adapter(model: nn.Module, task: str, *, trainable: bool = False) -> None:
    """Make the adapter ``task`` the active one (the others stop contributing).

    Args:
        model: a model with LoRA adapters.
        task: the adapter to activate.
        trainable: let its LoRA weights train; otherwise they are frozen (inference).
    """
    _check_task(model, task)
    _peft_set_adapter(model, task, inference_mode=not trainable)
    for p in _adapter_parameters(model, task):
        p.requires_grad_(trainable)


@contextmanager
def _without_lora(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put each LoRA layer's base layer back in its place (for head weights)."""
    swaps = []
    for name, layer in _tuner_layers(module).items():
        if name and not any(name.startswith(s + ".") for s, *_ in swaps):
            parent, _, child = name.rpartition(".")
            swaps.append((name, module.get_submodule(parent), child, layer))
    try:
        for _, parent, child, layer in swaps:
            setattr(parent, child, layer.get_base_layer())
        yield module
    finally:
        for _, parent, child, layer in swaps:
            setattr(parent, child, layer)


def save_adapter(model: nn.Module, task: str, directory: str | Path) -> Path:
    """Write adapter ``task`` in peft's layout, and the task head beside it (see the module doc).

    The head is saved by vlsdk (``save_head``) without any LoRA inside it, so
    ``model.add_head(task, checkpoint=directory)`` can rebuild the head on its own.
    """
    from vlsdk.models.checkpoint import save_head

    _check_task(model, task)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.peft_config[task].save_pretrained(str(directory))
    state = get_peft_model_state_dict(model, adapter_name=task)
    quantized = _quantized_layers(model)
    bits = max((m.bits for m in quantized.values()), default=0)
    layers = {n: getattr(m, "group_size", 0) for n, m in quantized.items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / ADAPTER_WEIGHTS_NAME),
              metadata={"format": "pt", "vlsdk_version": __version__, "vlsdk_task": task,
                        "vlsdk_base_bits": str(bits), "vlsdk_base_layers": json.dumps(layers),
                        "vlsdk_int8_base": json.dumps(bits == 8)})
    heads = getattr(model, "heads", {})
    if task in heads:
        with _without_lora(heads[task]):
            save_head(model, task, directory)
    return directory


def load_adapter(model: nn.Module, task: str, directory: str | Path, *,
                 quantize_base: bool | Literal[8, 4] | None = None, activate: bool = True) -> nn.Module:
    """Load an adapter written by :func:`save_adapter` into ``model`` as ``task``, frozen.

    The head saved beside it is added (``add_head(task, ..., checkpoint=directory)``) when the
    model has no head ``task``, or its weights are loaded into the existing one.

    Args:
        model: the base model (same backbone weights as the one the adapter was trained on).
        task: the adapter (and head) name.
        directory: the adapter directory.
        quantize_base: quantise the base first, as :func:`attach_lora` does (``True``/``8``: int8,
            ``4``: 4-bit, ``False``: leave it); default: as it was when saved (the same layers,
            the same groups), and a model whose base is already quantised otherwise is refused.
        activate: make it the active adapter (:func:`set_adapter`, frozen).

    Returns:
        ``model`` itself.
    """
    from vlsdk.models.checkpoint import HEAD_CONFIG_NAME, load_head_weights

    directory = Path(directory)
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing: not a LoRA adapter directory "
                                    "(write one with save_adapter)")
    if task in _adapters(model):
        raise ValueError(f"the model already has a LoRA adapter {task!r}; adapters: {sorted(_adapters(model))}")
    config = LoraConfig.from_pretrained(str(directory))
    if not isinstance(config, LoraConfig):
        raise ValueError(f"{directory / ADAPTER_CONFIG_NAME} is a {type(config).__name__}, not a LoRA config")
    config.inference_mode = True
    weights = str(directory / ADAPTER_WEIGHTS_NAME)
    with safe_open(weights, framework="pt") as f:
        metadata = f.metadata() or {}
    saved_bits, layers = _recorded_base(metadata, weights)
    bits = saved_bits if quantize_base is None else _base_bits(quantize_base)
    have = {m.bits for m in _quantized_layers(model).values()}
    if quantize_base is None and have and have != {saved_bits}:
        saved_name = f"an int{saved_bits}" if saved_bits else "a float"
        raise ValueError(f"{weights} was trained on {saved_name} base, but this model's base is already "
                         f"{'/'.join(f'int{b}' for b in sorted(have))}; pass quantize_base=False to load it anyway")
    param = next(model.parameters(), None)
    device = str(param.device) if param is not None else "cpu"
    state = load_file(weights, device=device)

    head_spec = directory / HEAD_CONFIG_NAME
    heads = getattr(model, "heads", None)
    if head_spec.is_file() and heads is not None:
        spec = json.loads(head_spec.read_text(encoding="utf-8"))
        if task in heads:
            with _without_lora(heads[task]):
                load_head_weights(model, task, directory)
        else:
            model.add_head(task, spec["task"], **spec.get("options", {}))
            load_head_weights(model, task, directory)
        heads[task].requires_grad_(False)

    _quantize_base(model, bits, layers if bits == saved_bits else None)
    unstack_generic_experts(model, lambda name: bool(check_target_module_exists(config, name)))
    _inject(model, config, task)
    result = set_peft_model_state_dict(model, state, adapter_name=task)
    ours = {n for n, _ in model.named_parameters() if _PREFIX in n and f".{task}." in n}
    missing = sorted(ours & set(result.missing_keys))
    if missing or result.unexpected_keys:
        _detach(model, task)
        raise ValueError(f"{weights} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {list(result.unexpected_keys)[:5]}")
    for p in _adapter_parameters(model, task):
        p.requires_grad_(False)
    if activate:
        set_adapter(model, task, trainable=False)
    _freeze_batchnorm_statistics(model)
    return model


def trainable_state_bytes(model: nn.Module, optimizer: str | torch.optim.Optimizer = "adamw") -> int:
    """Bytes of gradients plus optimiser state for the trainable parameters of ``model``.

    Args:
        model: the model, with ``requires_grad`` set as it will train.
        optimizer: ``"adamw"``/``"adam"`` (two moments and a ``step`` scalar per parameter, as
            torch keeps them), ``"sgd"`` (none), ``"sgd_momentum"`` (one); or an optimiser
            instance whose state is measured as it is.

    Example:
        >>> trainable_state_bytes(nn.Linear(4, 2))  # 10 float32: grad + 2 moments, + 2 step scalars
        128
    """
    params = {id(p): p for p in model.parameters() if p.requires_grad}
    grads = sum(p.numel() * p.element_size() for p in params.values())
    if isinstance(optimizer, torch.optim.Optimizer):
        state = sum(t.numel() * t.element_size() for p, s in optimizer.state.items() if id(p) in params
                    for t in s.values() if isinstance(t, torch.Tensor))
        return grads + state
    if optimizer not in _OPTIMIZER_STATE:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZER_STATE)} or a torch optimizer, got {optimizer!r}")
    moments, step = _OPTIMIZER_STATE[optimizer]
    return grads * (1 + moments) + (4 * len(params) if step else 0)

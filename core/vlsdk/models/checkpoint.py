"""Checkpoints: ``config.json`` + ``model.safetensors`` (no pickles) + a model card, rebuilt through the registries.

``config.json`` records the backbone config, the experts and heads (by registered name), the
model's :class:`~vlsdk.models.metadata.ModelMetadata` (``"metadata"``), the vlsdk version and
the SHA-256 digest of ``model.safetensors`` (``"weights_sha256"``), checked at load so a weights
file changed or damaged since it was saved is refused. ``README.md`` is the model card
(:mod:`vlsdk.models.card`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vlsdk.models.config import BackboneConfig
from vlsdk.models.metadata import InputSpec, ModelMetadata, default_channels
from vlsdk.models.expert_layout import match_generic_layout
from vlsdk.version import __version__

#: A :class:`~vlsdk.models.model.VLModel` (not imported here: the model imports this module).
VLModel = nn.Module

__all__ = ["save_pretrained", "from_pretrained", "save_head", "load_head_weights", "read_head_spec", "read_config",
           "file_sha256", "CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "FORMAT_VERSION"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "head.safetensors"
FORMAT = "vlsdk-model"
FORMAT_VERSION = 1
#: How many tensor or field names an error lists before it only counts the rest.
_LISTED = 5


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def _some(names: Sequence[str]) -> str:
    """At most :data:`_LISTED` names, then how many more."""
    shown = ", ".join(map(str, names[:_LISTED]))
    return shown + (f", ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_metadata(model: VLModel) -> ModelMetadata:
    """``model.metadata``, checked against the model: channel count and head names."""
    meta = model.metadata
    if not isinstance(meta, ModelMetadata):
        raise ValueError(f"model.metadata must be a vlsdk.models.metadata.ModelMetadata, got {type(meta).__name__}")
    if meta.input is not None and len(meta.input.channels) != model.config.in_chans:
        raise ValueError(f"model.metadata.input.channels names {len(meta.input.channels)} channels "
                         f"{list(meta.input.channels)}, but the model takes in_chans={model.config.in_chans}")
    unknown = sorted(set(meta.class_names) - set(model.heads))
    if unknown:
        raise ValueError(f"model.metadata.class_names names head(s) {unknown} the model does not have; "
                         f"heads: {sorted(model.heads)}")
    for head, names in meta.class_names.items():
        n = getattr(model.heads[head], "num_classes", None)
        want = None if n is None else max(int(n), 2) if model.head_specs[head].task == "segmentation" else int(n)
        if want is not None and len(names) != want:
            raise ValueError(f"model.metadata.class_names.{head} names {len(names)} classes but head {head!r} "
                             f"outputs {want} labels" + (" (segmentation: the background is label 0)"
                                                         if model.head_specs[head].task == "segmentation" else ""))
    return meta


def save_pretrained(model: VLModel, directory: str | Path) -> Path:
    """Write ``model.safetensors``, ``config.json`` (with its SHA-256 and the metadata) and the model card.

    Raises:
        ValueError: ``model.metadata`` does not fit the model (channel count, head names, class counts).
    """
    from vlsdk.models.card import render_model_card

    meta = _checked_metadata(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_NAME
    save_file(_tensors(model), str(weights), metadata={"format": FORMAT, "vlsdk_version": __version__})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vlsdk_version": __version__,
        "backbone": model.config.to_dict(),
        "experts": [dataclasses.asdict(s) for s in model.expert_specs.values()],
        "heads": [dataclasses.asdict(s) for s in model.head_specs.values()],
        "metadata": meta.to_dict(),
        "weights_sha256": file_sha256(weights),
    }
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (directory / CARD_NAME).write_text(render_model_card(model), encoding="utf-8")
    return directory


#: Fields of each ``experts`` / ``heads`` entry: name -> (JSON types, what is expected).
_SPEC_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "experts": {"name": ((str,), "the expert's registered name"),
                "layers": ((list,), "a list of MoE layer indices"),
                "options": ((dict,), "an object of factory options"),
                "init_bias": ((int, float), "a number")},
    "heads": {"name": ((str,), "the head's name"), "task": ((str,), "a registered head task"),
              "options": ((dict,), "an object of head options")},
}


def _check_specs(config: dict[str, Any], path: Path) -> None:
    """Every ``experts`` / ``heads`` entry has its fields with the right JSON types."""
    if not isinstance(config["backbone"], dict):
        raise ValueError(f"{path}: field 'backbone': expected an object of BackboneConfig fields, "
                         f"got {type(config['backbone']).__name__}")
    for key, fields in _SPEC_FIELDS.items():
        entries = config[key]
        if not isinstance(entries, list):
            raise ValueError(f"{path}: field {key!r}: expected a list, got {type(entries).__name__}")
        for i, spec in enumerate(entries):
            if not isinstance(spec, dict):
                raise ValueError(f"{path}: {key}[{i}]: expected an object, got {type(spec).__name__}")
            label = f"{key}[{i}]" + (f" ({spec['name']!r})" if isinstance(spec.get("name"), str) else "")
            for name, (types, expected) in fields.items():
                if name not in spec:
                    raise ValueError(f"{path}: {label}: field {name!r} is missing; expected {expected}")
                value = spec[name]
                bad = isinstance(value, bool) or not isinstance(value, types) or (
                    name == "layers" and not all(isinstance(v, int) and not isinstance(v, bool) for v in value))
                if bad:
                    raise ValueError(f"{path}: {label}: field {name!r}: expected {expected}, got {value!r}")


def _read_metadata(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The checked ``metadata`` block as a dict; a checkpoint without one gets the defaults."""
    in_chans = config["backbone"].get("in_chans", BackboneConfig.in_chans)
    if "metadata" not in config:
        return ModelMetadata(input=InputSpec(default_channels(in_chans))).to_dict()
    meta = ModelMetadata.from_dict(config["metadata"], where=f"{path}: metadata")
    if meta.input is not None and len(meta.input.channels) != in_chans:
        raise ValueError(f"{path}: metadata.input.channels names {len(meta.input.channels)} channels "
                         f"{list(meta.input.channels)}, but backbone.in_chans is {in_chans}")
    return meta.to_dict()


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json``; errors name the file and what is wrong.

    The returned dict always has a checked ``"metadata"`` block (the
    :meth:`~vlsdk.models.metadata.ModelMetadata.to_dict` form; defaults for checkpoints saved
    before metadata existed): ``read_config(dir)["metadata"]`` is the one place to read it.

    Raises:
        FileNotFoundError: no directory or no ``config.json``.
        ValueError: not JSON, not a vlsdk config, a newer format, or a missing or wrongly typed
            field (named, with what was expected).
    """
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"no vlsdk model directory at {directory}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a vlsdk model directory "
                                "(save one with model.save_pretrained(dir))")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' must be {FORMAT!r}; this is not a vlsdk model config")
    made_by = config.get("vlsdk_version", "unknown")
    version = config.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path}: field 'format_version': expected an int, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by vlsdk {made_by} (checkpoint format "
                         f"{version}); this vlsdk {__version__} reads format <= "
                         f"{FORMAT_VERSION}: upgrade vlsdk")
    if made_by != __version__:
        warnings.warn(f"{path} was written by vlsdk {made_by}; loading it with vlsdk {__version__}", stacklevel=3)
    for key in ("backbone", "experts", "heads"):
        if key not in config:
            raise ValueError(f"{path}: missing field {key!r}")
    _check_specs(config, path)
    digest = config.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        raise ValueError(f"{path}: field 'weights_sha256': expected a 64-character hex SHA-256, got {digest!r}")
    config["metadata"] = _read_metadata(config, path)
    return config


def _require(kind: str, name: str, spec: dict[str, Any], directory: Path) -> None:
    """Check that a registered expert or head exists; the error names its plugin and the cause."""
    from vlsdk.plugins import get_registry

    try:
        get_registry(kind).get(name)
    except KeyError as err:
        origin = f"plugin {spec.get('plugin')!r} (distribution {spec.get('distribution')!r})"
        raise LookupError(f"{directory} needs the {kind[:-1]} {name!r} registered by {origin}, which is not "
                          f"available: {err}") from err


def _load_weights(weights: Path, config: dict[str, Any], device: str, verify: bool) -> dict[str, torch.Tensor]:
    """Read the weights, after checking their SHA-256 against ``config.json`` when ``verify``."""
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    recorded = config.get("weights_sha256")
    if verify and recorded is not None:
        actual = file_sha256(weights)
        if actual != recorded:
            raise ValueError(f"{weights} was changed or damaged since it was saved: its SHA-256 is {actual[:16]}..., "
                             f"{weights.parent / CONFIG_NAME} records {recorded[:16]}... (field 'weights_sha256'); "
                             "restore the file or save the model again (from_pretrained(..., verify=False) loads "
                             "it anyway)")
    try:
        return load_file(str(weights), device=device)
    except SafetensorError as err:
        raise ValueError(f"{weights} is not a readable safetensors file, it may be truncated or damaged "
                         f"({err})") from None


def _check_finite(state: Mapping[str, torch.Tensor], weights: Path) -> None:
    """Raise naming the tensors that hold NaN or +-inf values, with their counts."""
    counts = {name: int((~torch.isfinite(t)).sum()) for name, t in state.items()
              if t.is_floating_point() and not bool(torch.isfinite(t).all())}
    if counts:
        listed = [f"{name} ({n} of {state[name].numel()})" for name, n in counts.items()]
        raise ValueError(f"{weights}: {len(counts)} tensor(s) hold {sum(counts.values())} non-finite values "
                         f"(NaN or inf): {_some(listed)}; the model diverged or the file was damaged "
                         "(from_pretrained(..., check_finite=False) loads it anyway)")


def _check_state(model: nn.Module, state: Mapping[str, torch.Tensor], weights: Path) -> None:
    """Raise naming (at most a few) missing, unexpected and differently shaped tensors, with counts."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{len(names)} {what}: {_some(names)}" for names, what in
                ((missing, "tensor(s) missing"), (unexpected, "unexpected tensor(s)"),
                 (shapes, "tensor(s) of another shape"))
                if names]
    if problems:
        raise ValueError(f"{weights} does not match {weights.parent / CONFIG_NAME}: " + "; ".join(problems))


def from_pretrained(cls: type, directory: str | Path, *,
                    experts: Mapping[str, Callable[..., nn.Module]] | None = None,
                    map_location: str | torch.device = "cpu", verify: bool = True,
                    check_finite: bool = True) -> VLModel:
    """Rebuild the model, its domain experts, heads and metadata, then load the weights (strictly).

    Args:
        cls: the model class.
        directory: a :func:`save_pretrained` folder.
        experts: factories for experts added as module objects (``name -> factory(dim, **options)``).
        map_location: device for the weights.
        verify: check ``model.safetensors`` against the SHA-256 in ``config.json`` (checkpoints
            saved before digests existed are not checked).
        check_finite: refuse weights holding NaN or inf.

    Raises:
        FileNotFoundError: the directory, ``config.json`` or ``model.safetensors`` is missing.
        ValueError: a damaged or changed weights file, non-finite weights, a config field missing
            or wrongly typed, or weights that do not fit the config (naming the file and the
            field or tensors).
        LookupError: an expert or head whose plugin is not installed.
    """
    directory = Path(directory)
    config = read_config(directory)
    path = directory / CONFIG_NAME
    try:
        backbone = BackboneConfig(**config["backbone"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: field 'backbone' is not a valid BackboneConfig: {err}") from err
    model = cls(backbone)
    for spec in config["experts"]:
        name = spec["name"]
        factory = (experts or {}).get(name)
        if factory is None and not spec.get("registered", True):
            raise ValueError(f"{path}: expert {name!r} was added as a module object, not by "
                             f"a registered name; pass from_pretrained(..., experts={{{name!r}: factory}}) or "
                             "register it from a plugin")
        if factory is None:
            _require("experts", name, spec, directory)
        try:
            model.add_expert(name, factory, layers=spec["layers"], init_bias=spec["init_bias"], **spec["options"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: expert {name!r} cannot be rebuilt from its recorded layers/options: "
                             f"{err}") from err
    for spec in config["heads"]:
        _require("heads", spec["task"], spec, directory)
        try:
            model.add_head(spec["name"], spec["task"], **spec["options"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: head {spec['name']!r} (task {spec['task']!r}) cannot be rebuilt from its "
                             f"recorded options: {err}") from err
    state = _load_weights(directory / WEIGHTS_NAME, config, str(map_location), verify)
    if check_finite:
        _check_finite(state, directory / WEIGHTS_NAME)
    match_generic_layout(model, state)  # checkpoints of the per-expert layout load into the stacks
    _check_state(model, state, directory / WEIGHTS_NAME)
    model.load_state_dict(state)
    model.metadata = ModelMetadata.from_dict(config["metadata"], where=f"{path}: metadata")
    return model.to(map_location).eval()  # like Hugging Face: ready for inference; call .train() to fine-tune


def save_head(model: VLModel, name: str, directory: str | Path) -> Path:
    """Save one head (its spec and weights) so ``add_head(..., checkpoint=dir)`` can restore it."""
    if name not in model.heads:
        raise KeyError(f"no head {name!r}; heads: {sorted(model.heads)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = dataclasses.asdict(model.head_specs[name]) | {"vlsdk_version": __version__}
    (directory / HEAD_CONFIG_NAME).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    save_file(_tensors(model.heads[name]), str(directory / HEAD_WEIGHTS_NAME))
    return directory


def read_head_spec(directory: str | Path) -> dict[str, Any]:
    """The ``head_config.json`` written by :func:`save_head` (task, options, vlsdk version)."""
    path = Path(directory) / HEAD_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a head checkpoint (write one with save_head)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if "task" not in spec:
        raise ValueError(f"{path}: missing field 'task'")
    return spec


def load_head_weights(model: VLModel, name: str, directory: str | Path) -> None:
    """Load weights written by :func:`save_head` into the attached head ``name``."""
    path = Path(directory) / HEAD_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a head checkpoint (write one with save_head)")
    device = next(model.heads[name].parameters()).device
    model.heads[name].load_state_dict(load_file(str(path), device=str(device)))

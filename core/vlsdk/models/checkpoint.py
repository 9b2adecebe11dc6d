"""Checkpoints: ``config.json`` + ``model.safetensors`` (no pickles), rebuilt through the registries."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlsdk.models.config import BackboneConfig
from vlsdk.version import __version__

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel

__all__ = ["save_pretrained", "from_pretrained", "save_head", "load_head_weights", "read_head_spec", "read_config",
           "CONFIG_NAME", "WEIGHTS_NAME", "FORMAT_VERSION"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "head.safetensors"
FORMAT = "vlsdk-model"
FORMAT_VERSION = 1


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_pretrained(model: VLModel, directory: str | Path) -> Path:
    """Write ``config.json`` (backbone config, experts, heads, vlsdk version) and the weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vlsdk_version": __version__,
        "backbone": model.config.to_dict(),
        "experts": [dataclasses.asdict(s) for s in model.expert_specs.values()],
        "heads": [dataclasses.asdict(s) for s in model.head_specs.values()],
    }
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    save_file(_tensors(model), str(directory / WEIGHTS_NAME), metadata={"format": FORMAT, "vlsdk_version": __version__})
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json``; errors name the file and what is wrong."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"no vlsdk model directory at {directory}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a vlsdk model directory "
                                "(save one with model.save_pretrained(dir))")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' must be {FORMAT!r}; this is not a vlsdk model config")
    made_by = config.get("vlsdk_version", "unknown")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by vlsdk {made_by} (checkpoint format "
                         f"{config.get('format_version')}); this vlsdk {__version__} reads format <= "
                         f"{FORMAT_VERSION}: upgrade vlsdk")
    if made_by != __version__:
        warnings.warn(f"{path} was written by vlsdk {made_by}; loading it with vlsdk {__version__}", stacklevel=3)
    for key in ("backbone", "experts", "heads"):
        if key not in config:
            raise ValueError(f"{path}: missing field {key!r}")
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


def from_pretrained(cls: type[VLModel], directory: str | Path, *,
                    experts: Mapping[str, Callable[..., nn.Module]] | None = None,
                    map_location: str | torch.device = "cpu") -> VLModel:
    """Rebuild the model, its domain experts and heads, then load the weights (strictly)."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        backbone = BackboneConfig(**config["backbone"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{directory / CONFIG_NAME}: field 'backbone' is not a valid BackboneConfig: {err}") from err
    model = cls(backbone)
    for spec in config["experts"]:
        name = spec["name"]
        factory = (experts or {}).get(name)
        if factory is None and not spec.get("registered", True):
            raise ValueError(f"{directory / CONFIG_NAME}: expert {name!r} was added as a module object, not by "
                             f"a registered name; pass from_pretrained(..., experts={{{name!r}: factory}}) or "
                             "register it from a plugin")
        if factory is None:
            _require("experts", name, spec, directory)
        model.add_expert(name, factory, layers=spec["layers"], init_bias=spec["init_bias"], **spec["options"])
    for spec in config["heads"]:
        _require("heads", spec["task"], spec, directory)
        model.add_head(spec["name"], spec["task"], **spec["options"])
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    state = load_file(str(weights), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not match {directory / CONFIG_NAME}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
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

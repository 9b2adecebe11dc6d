"""The model card: a ``README.md`` beside the weights, rendered from the model's metadata.

It says what the model does, its heads and class names, the input it expects (channel meanings,
scaling, image size, voxel spacing), the training data and its licence, the metrics with the
command that produced them, intended use, limitations, the vlsdk version and the parameter
counts. What the metadata does not record is written as "not recorded", never guessed.

Example:
    >>> from vlsdk.models.model import VLModel
    >>> card = render_model_card(VLModel("tiny", in_chans=1))
    >>> "Training data: not recorded" in card
    True
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from vlsdk.version import __version__

if TYPE_CHECKING:
    from torch import nn

__all__ = ["render_model_card", "NOT_RECORDED"]

#: What the card says for a fact the metadata does not hold.
NOT_RECORDED = "not recorded"


def _value(value: Any) -> str:
    if value is None or value == "" or value == {} or value == []:
        return NOT_RECORDED
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _metrics(metrics: Any) -> list[str]:
    if not metrics:
        return [f"- Metrics: {NOT_RECORDED}"]
    if not isinstance(metrics, dict):
        return [f"- Metrics: {_value(metrics)}"]
    return ["- Metrics:"] + [f"  - {name}: {_value(value)}" for name, value in metrics.items()]


def render_model_card(model: nn.Module) -> str:
    """The Markdown model card of ``model`` (from ``model.metadata``, its heads and config).

    Args:
        model: a :class:`~vlsdk.models.model.VLModel`.
    """
    from vlsdk.models.params import count_module_parameters

    meta = model.metadata
    cfg = model.config
    counts = count_module_parameters(model)
    lines = [f"# vlsdk model: {meta.task or 'task ' + NOT_RECORDED}", "",
             f"- Task: {_value(meta.task)}",
             f"- Backbone: `{cfg.name}` ({cfg.stem} stem, width {cfg.embed_dim}, depths {list(cfg.depths)}, "
             f"{'MoE' if cfg.moe is not None else 'dense'})",
             f"- Parameters: {counts.total:,} total, {counts.active:,} active per token",
             f"- Domain experts: {', '.join(model.expert_specs) or 'none'}",
             f"- vlsdk version: {__version__}", "", "## Heads", ""]
    if not model.head_specs:
        lines.append("No heads attached.")
    for name, spec in model.head_specs.items():
        names = meta.class_names.get(name)
        classes = ", ".join(f"{i} = {n}" for i, n in enumerate(names)) if names else f"class names {NOT_RECORDED}"
        lines.append(f"- `{name}` (task `{spec.task}`): {classes}")
    spec_in = meta.input
    lines += ["", "## Input", ""]
    if spec_in is None:
        lines += [f"- Channels: {cfg.in_chans} (meanings {NOT_RECORDED})", f"- Scaling: {NOT_RECORDED}"]
    else:
        unnamed = all(c == f"channel_{i}" for i, c in enumerate(spec_in.channels))
        lines += [f"- Channels: {len(spec_in.channels)}: {', '.join(spec_in.channels)}"
                  + (f" (meanings {NOT_RECORDED})" if unnamed else ""),
                  f"- Scaling: {spec_in.scaling}"]
    size = spec_in.image_size if spec_in is not None else None
    spacing = spec_in.voxel_spacing if spec_in is not None else None
    lines += [f"- Image size (height x width): {f'{size[0]} x {size[1]}' if size else NOT_RECORDED}",
              f"- Voxel spacing (mm): {' x '.join(map(str, spacing)) if spacing else NOT_RECORDED}"]
    train = meta.training
    lines += ["", "## Training", "",
              f"- Training data: {_value(train.get('data'))}",
              f"- Data licence: {_value(train.get('data_licence'))}",
              *_metrics(train.get("metrics")),
              "- Command that produced the metrics: "
              + (f"`{train['command']}`" if train.get("command") else NOT_RECORDED),
              f"- Seed: {_value(train.get('seed'))}"]
    lines += [f"- {key}: {_value(value)}" for key, value in train.items()
              if key not in ("data", "data_licence", "metrics", "command", "seed")]
    lines += ["", "## Intended use", "", meta.intended_use or NOT_RECORDED,
              "", "## Limitations", "", meta.limitations or NOT_RECORDED, "",
              "Load it with `vlsdk.VLModel.from_pretrained(<this folder>)`; run it with "
              "`vlsdk predict FILES --model <this folder>`.", ""]
    return "\n".join(lines)

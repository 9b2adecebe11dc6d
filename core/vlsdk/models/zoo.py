"""``create_model`` / ``list_models``: build a named model the way timm users expect.

Example:
    >>> list_models("*a*")
    ['base', 'small']
    >>> create_model("tiny@depths=2,", in_chans=1).config.depths
    (2,)
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from vlsdk.models.config import CONFIGS, get_config
from vlsdk.models.model import VLModel

__all__ = ["create_model", "list_models"]


def list_models(pattern: str = "*") -> list[str]:
    """The registered config names matching the shell-style ``pattern``, sorted.

    Args:
        pattern: an :mod:`fnmatch` pattern (``"*"``, ``"t*"``, ``"[es]*"``).
    """
    return sorted(fnmatch.filter(CONFIGS, pattern))


def create_model(name: str, pretrained_dir: str | Path | None = None, **overrides: Any) -> VLModel:
    """Build the model of a registered config, or load one saved from it.

    Args:
        name: a config name from :func:`list_models`, with ``@field=value`` overrides as
            :func:`~vlsdk.models.config.get_config` reads them (``"base@depths=2,10"``).
        pretrained_dir: a :meth:`VLModel.save_pretrained` folder; the model saved there is loaded
            (its heads, experts, metadata and weights, in eval mode) after checking that it was
            built from the same config.
        **overrides: config fields to change (``in_chans=1``).

    Raises:
        ValueError: an unknown config name (the error lists the known ones), an unknown field, or
            a ``pretrained_dir`` whose saved config differs from ``name`` and ``overrides``
            (naming the fields).
    """
    config = get_config(name, **overrides)
    if pretrained_dir is None:
        return VLModel(config)
    model = VLModel.from_pretrained(pretrained_dir)
    wanted = json.loads(json.dumps(config.to_dict()))
    saved = json.loads(json.dumps(model.config.to_dict()))
    differ = [f"{k} (saved {saved.get(k)!r}, asked {v!r})" for k, v in wanted.items() if saved.get(k) != v]
    if differ:
        raise ValueError(f"{pretrained_dir} holds a model built from another config than {name!r}"
                         f"{' with ' + str(overrides) if overrides else ''}: {'; '.join(differ[:5])}"
                         + (f" and {len(differ) - 5} more" if len(differ) > 5 else ""))
    return model

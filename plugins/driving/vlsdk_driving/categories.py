"""Category maps: annotation category names of a fleet's tables -> the 10 nuScenes detection classes.

nuScenes tables name fine categories (``vehicle.car``, ``human.pedestrian.adult``) that the devkit's
``category_to_detection_name`` maps to the detection classes. Other fleets write their own names in
the same schema: Lyft Level 5 uses ``car``, ``other_vehicle``, ``animal`` ...; an in-house rig may use
anything. A category map says which detection class each name becomes; ``None`` drops the name.
Names missing from a map are dropped too; :class:`~vlsdk_driving.nuscenes_adapter.NuScenesDataset`
counts them per name and warns once.

:data:`LYFT_CATEGORY_MAP` is the built-in map for Lyft Level 5 (``--category-map lyft``):

=====================  ==========  ==========================================================
Lyft name              class       why
=====================  ==========  ==========================================================
car                    car
pedestrian             pedestrian
truck                  truck
bus                    bus
bicycle                bicycle
motorcycle             motorcycle
other_vehicle          truck       Lyft's vans, trailers, tractors, construction machines:
                                   large vehicles, closest in size and shape to nuScenes trucks
emergency_vehicle      car         mostly police cars and ambulances, car-sized
animal                 (dropped)   the head has no animal class
=====================  ==========  ==========================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from vlsdk_driving.sample import DETECTION_CLASSES

__all__ = ["CategoryMap", "LYFT_CATEGORY_MAP", "BUILTIN_CATEGORY_MAPS", "resolve_category_map"]

#: category name -> detection class (``None``: dropped on purpose, still counted and warned about).
CategoryMap = Mapping[str, "str | None"]

#: Lyft Level 5's nine categories -> nuScenes detection classes (see the module docstring for why).
LYFT_CATEGORY_MAP: dict[str, str | None] = {
    "car": "car",
    "pedestrian": "pedestrian",
    "truck": "truck",
    "bus": "bus",
    "bicycle": "bicycle",
    "motorcycle": "motorcycle",
    "other_vehicle": "truck",
    "emergency_vehicle": "car",
    "animal": None,
}

#: Maps selectable by name (``--category-map NAME``); ``nuscenes`` is the devkit's own mapping.
BUILTIN_CATEGORY_MAPS: dict[str, dict[str, str | None] | None] = {"nuscenes": None, "lyft": LYFT_CATEGORY_MAP}


def _checked(mapping: object, where: str) -> dict[str, str | None]:
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where}: expected a JSON object {{category name: detection class or null}}, "
                         f"got {type(mapping).__name__}")
    out: dict[str, str | None] = {}
    for name, cls in mapping.items():
        if cls is not None and cls not in DETECTION_CLASSES:
            raise ValueError(f"{where}: category {name!r} maps to {cls!r}; expected one of "
                             f"{list(DETECTION_CLASSES)} or null (drop)")
        out[str(name)] = cls
    return out


def resolve_category_map(spec: str | Path | CategoryMap | None) -> dict[str, str | None] | None:
    """The category map named or given by ``spec``.

    Args:
        spec: ``None`` or ``"nuscenes"`` (the devkit's own mapping of nuScenes names), ``"lyft"``
            (:data:`LYFT_CATEGORY_MAP`), the path of a JSON file ``{"name": "class" or null}``, or
            a mapping of the same shape.

    Returns:
        the map, or ``None`` for the devkit's mapping.

    Raises:
        FileNotFoundError: ``spec`` is neither a built-in name nor an existing file.
        ValueError: the file is not valid JSON, or a value is not a detection class or null (the
            message names the file and the category).

    Example:
        >>> resolve_category_map("lyft")["other_vehicle"]
        'truck'
    """
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return _checked(spec, "category map")
    if isinstance(spec, str) and spec in BUILTIN_CATEGORY_MAPS:
        builtin = BUILTIN_CATEGORY_MAPS[spec]
        return None if builtin is None else dict(builtin)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"category map {str(spec)!r} is neither a built-in map "
                                f"({sorted(BUILTIN_CATEGORY_MAPS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"category map {path}: not valid JSON ({exc})") from None
    return _checked(data, f"category map {path}")

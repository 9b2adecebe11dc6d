"""Which nuScenes-schema log to read and how: table version, LiDAR and camera channels, category map.

:class:`NuScenesSource` is the settings block a pipeline or task config holds for its real
(non-synthetic) data, typed for :func:`vlsdk.settings.settings_from`; :func:`add_source_arguments`
adds the same fields to a command line (``vlsdk driving-detect --version v1.0-trainval
--lidar-channel LIDAR_TOP --camera-channels CAM_FRONT --category-map lyft``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlsdk_driving.nuscenes_adapter import NuScenesDataset

__all__ = ["NuScenesSource", "add_source_arguments"]


@dataclass
class NuScenesSource:
    """How to open a nuScenes-schema dataroot (nuScenes, Lyft Level 5, an in-house rig).

    Args:
        version: the table folder, e.g. ``v1.0-mini``, ``v1.0-trainval``.
        lidar_channel: the LiDAR channel whose frame samples are expressed in.
        camera_channels: camera channels to attach; ``None``: every camera in the tables; ``()``: none.
        category_map: ``nuscenes`` or ``None`` (the devkit's mapping), ``lyft`` (the built-in Lyft
            Level 5 map), or a JSON file ``{"category name": "detection class" or null}``.

    Example:
        >>> NuScenesSource(category_map="lyft").dataset_options()["category_map"]
        'lyft'
    """

    version: str = "v1.0-mini"
    lidar_channel: str = "LIDAR_TOP"
    camera_channels: tuple[str, ...] | None = None
    category_map: str | None = None

    def dataset_options(self) -> dict[str, Any]:
        """The :class:`~vlsdk_driving.nuscenes_adapter.NuScenesDataset` keyword arguments."""
        return {"version": self.version, "lidar_channel": self.lidar_channel,
                "camera_channels": self.camera_channels, "category_map": self.category_map}

    def open(self, dataroot: str | Path, **options: Any) -> NuScenesDataset:
        """The dataset at ``dataroot`` read with these settings.

        Args:
            dataroot: the folder holding ``<version>/``.
            **options: more ``NuScenesDataset`` options (``min_distance``, ``nsweeps``, ``on_error``).
        """
        from vlsdk_driving.nuscenes_adapter import NuScenesDataset

        return NuScenesDataset(dataroot, **self.dataset_options(), **options)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> NuScenesSource:
        """The settings parsed by :func:`add_source_arguments`.

        Args:
            args: the parsed command line.
        """
        cams = args.camera_channels
        if cams is not None:
            cams = tuple(c.strip() for c in cams.split(",") if c.strip() and c.strip().lower() != "none")
        return cls(version=args.version, lidar_channel=args.lidar_channel, camera_channels=cams,
                   category_map=args.category_map)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--version``, ``--lidar-channel``, ``--camera-channels`` and ``--category-map`` to ``parser``.

    Args:
        parser: the (sub)parser.
    """
    default = NuScenesSource()
    parser.add_argument("--version", default=default.version,
                        help="table version folder of the --nuscenes dataroot (v1.0-mini, v1.0-trainval, ...)")
    parser.add_argument("--lidar-channel", default=default.lidar_channel,
                        help="LiDAR channel of the --nuscenes data (e.g. LIDAR_TOP)")
    parser.add_argument("--camera-channels", default=None,
                        help="comma-separated camera channels of the --nuscenes data (default: all; 'none': no cameras)")
    parser.add_argument("--category-map", default=None,
                        help="annotation categories -> detection classes: 'nuscenes' (default), 'lyft' "
                             "(Lyft Level 5 names) or a JSON file {name: class or null}")

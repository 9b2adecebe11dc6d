"""KITTI object-detection frames (``velodyne/*.bin``, ``calib/*.txt``, ``label_2/*.txt``) as driving samples.

Boxes are moved from KITTI's rectified camera frame into the Velodyne (LiDAR) frame with the
frame's own calibration, and the left colour camera ``image_2`` becomes a :class:`CameraView`
whose ``K @ (T @ p)`` reproduces ``P2 @ R0_rect @ Tr_velo_to_cam @ p``. Points get the same
columns as the nuScenes adapter (reflectance scaled by 255 to nuScenes' intensity range, time lag 0).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from vlsdk_driving.nuscenes_adapter import POINT_FIELDS, DataWarning
from vlsdk_driving.sample import Boxes3D, CameraView, DrivingSample, class_index

__all__ = ["KITTI_TO_DETECTION", "KittiDataset", "load_kitti_frame", "read_kitti_calib", "read_kitti_labels",
           "read_kitti_velodyne"]

#: KITTI label types -> nuScenes detection classes (others, e.g. ``DontCare``, ``Tram``, are skipped and counted).
KITTI_TO_DETECTION: dict[str, str] = {
    "Car": "car",
    "Van": "car",
    "Truck": "truck",
    "Pedestrian": "pedestrian",
    "Person_sitting": "pedestrian",
    "Cyclist": "bicycle",
}

_CALIB_SHAPES = {"P2": (3, 4), "R0_rect": (3, 3), "Tr_velo_to_cam": (3, 4)}
#: The numeric columns 2-15 of a KITTI label line, by name (for error messages).
_LABEL_FIELDS = ("truncated", "occluded", "alpha", "bbox_left", "bbox_top", "bbox_right", "bbox_bottom", "height",
                 "width", "length", "x", "y", "z", "rotation_y")


def read_kitti_velodyne(path: str | Path) -> np.ndarray:
    """``(N, 4)`` float32 ``x, y, z, reflectance`` of a KITTI ``.bin`` scan.

    Args:
        path: the scan file.

    Raises:
        FileNotFoundError: missing file.
        ValueError: empty or truncated file (size not a multiple of 16 bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI velodyne scan is missing: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"empty LiDAR sweep: {path} has 0 bytes")
    if size % 16:
        raise ValueError(f"truncated LiDAR sweep: {path} has {size} bytes, not a multiple of the 16-byte "
                         "point record (4 float32)")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def read_kitti_calib(path: str | Path) -> dict[str, np.ndarray]:
    """The matrices of a KITTI ``calib/*.txt`` file (``P0``-``P3`` 3x4, ``R0_rect`` 3x3, ``Tr_*`` 3x4).

    Args:
        path: the calibration file.

    Raises:
        FileNotFoundError: missing file.
        ValueError: a line that is not ``key: numbers``, a non-finite value, or a missing/mis-sized
            ``P2``, ``R0_rect`` or ``Tr_velo_to_cam`` (the message names the file, line and key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI calibration file is missing: {path}")
    calib: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, sep, values = line.partition(":")
        try:
            if not sep:
                raise ValueError("no ':'")
            calib[key.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: expected 'key: numbers', got {line!r} ({exc})") from None
        bad = np.flatnonzero(~np.isfinite(calib[key.strip()]))
        if len(bad):
            raise ValueError(f"{path}:{lineno}: calibration {key.strip()} has {len(bad)} non-finite value(s) (first at "
                             f"position {int(bad[0])}: {values.split()[bad[0]]}); expected finite numbers")
    for key, shape in _CALIB_SHAPES.items():
        if key not in calib or calib[key].size != shape[0] * shape[1]:
            raise ValueError(f"{path}: expected {key} with {shape[0] * shape[1]} values, got "
                             f"{None if key not in calib else calib[key].size}")
    return {k: (v.reshape(3, 4) if v.size == 12 else v.reshape(3, 3) if v.size == 9 else v) for k, v in calib.items()}


def _homogeneous(m: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[: m.shape[0], : m.shape[1]] = m
    return out


def read_kitti_labels(path: str | Path, rect_from_velo: np.ndarray, skipped: Counter[str] | None = None,
                      on_error: Literal["raise", "skip"] = "raise") -> Boxes3D:
    """3D boxes of a KITTI ``label_2/*.txt`` file, moved into the Velodyne frame.

    Args:
        path: the label file (15 columns: type, truncation, occlusion, alpha, 2D box, h, w, l,
            x, y, z of the bottom centre in the rectified camera frame, rotation_y).
        rect_from_velo: ``(4, 4)`` ``R0_rect @ Tr_velo_to_cam``.
        skipped: a counter for skipped lines (types outside :data:`KITTI_TO_DETECTION`, boxes
            with a non-positive size); warned about, never silent.
        on_error: a label of a kept type with a non-finite number (NaN, inf): ``"raise"`` a
            ``ValueError`` naming the file, line and column; ``"skip"`` the line (counted as
            ``nonfinite_label``, one warning per file).

    Raises:
        FileNotFoundError: missing file.
        ValueError: a line without 15 numeric columns, or a non-finite number in a kept label
            (``on_error="raise"``); the message names file, line and column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI label file is missing: {path}")
    skipped = Counter() if skipped is None else skipped
    velo_from_rect = np.linalg.inv(rect_from_velo)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rows, labels, nonfinite = [], [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) < 15:
                raise ValueError(f"{len(parts)} columns")
            values = [float(v) for v in parts[1:15]]
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: expected a 15-column KITTI label line ({exc}): {line!r}") from None
        kind = parts[0]
        if kind not in KITTI_TO_DETECTION:
            skipped[f"kitti_type_{kind}"] += 1
            if kind != "DontCare":
                warnings.warn(f"{path}:{lineno}: skipped KITTI type {kind!r} (no nuScenes detection class)",
                              DataWarning, stacklevel=2)
            continue
        bad = [f for f, v in zip(_LABEL_FIELDS, values, strict=True) if not np.isfinite(v)]
        if bad:
            detail = f"{path}:{lineno}: non-finite {', '.join(bad)} in a {kind} label; expected finite numbers"
            if on_error == "raise":
                raise ValueError(detail)
            nonfinite.append(detail)
            continue
        h, w, length, x, y, z, ry = values[7:14]
        if not (h > 0 and w > 0 and length > 0):
            skipped["bad_box"] += 1
            warnings.warn(f"{path}:{lineno}: skipped box with non-positive size h={h}, w={w}, l={length}",
                          DataWarning, stacklevel=2)
            continue
        centre = velo_from_rect @ np.array([x, y - h / 2, z, 1.0])
        heading = velo_from_rect[:3, :3] @ np.array([np.cos(ry), 0.0, -np.sin(ry)])
        rows.append([*centre[:3], length, w, h, np.arctan2(heading[1], heading[0])])
        labels.append(class_index(KITTI_TO_DETECTION[kind]))
    if nonfinite:
        skipped["nonfinite_label"] += len(nonfinite)
        warnings.warn(f"skipped {len(nonfinite)} label line(s) with non-finite numbers (on_error='skip'); first: "
                      f"{nonfinite[0]}", DataWarning, stacklevel=2)
    if not rows:
        return Boxes3D.empty()
    return Boxes3D(np.array(rows), np.array(labels))


def load_kitti_frame(velodyne: str | Path, calib: str | Path, label: str | Path | None = None,
                     image: str | Path | None = None, frame_id: str | None = None, skipped: Counter[str] | None = None,
                     on_error: Literal["raise", "skip"] = "raise") -> DrivingSample:
    """One KITTI frame as a :class:`DrivingSample` in the Velodyne frame.

    Args:
        velodyne: the ``.bin`` scan.
        calib: the calibration ``.txt``.
        label: the ``label_2`` ``.txt`` (``None``: no boxes).
        image: the ``image_2`` picture (``None``: no camera view).
        frame_id: the sample token (default: the scan's stem).
        skipped: a counter for skipped points and labels.
        on_error: what a non-finite number in a label does (see :func:`read_kitti_labels`);
            non-finite calibration values always raise, non-finite points are always dropped
            (counted, warned).

    Example:
        >>> s = load_kitti_frame("velodyne/000008.bin", "calib/000008.txt", "label_2/000008.txt")  # doctest: +SKIP
    """
    skipped = Counter() if skipped is None else skipped
    velodyne = Path(velodyne)
    raw = read_kitti_velodyne(velodyne)
    bad = ~np.isfinite(raw).all(1)
    if bad.any():
        skipped["nan_points"] += int(bad.sum())
        warnings.warn(f"{velodyne}: dropped {int(bad.sum())} non-finite points", DataWarning, stacklevel=2)
        raw = raw[~bad]
    if len(raw) == 0:
        raise ValueError(f"empty LiDAR sweep: no finite points in {velodyne}")
    points = np.concatenate([raw[:, :3], raw[:, 3:4] * 255.0, np.zeros((len(raw), 1), np.float32)], 1)
    cal = read_kitti_calib(calib)
    rect_from_velo = _homogeneous(cal["R0_rect"]) @ _homogeneous(cal["Tr_velo_to_cam"])
    boxes = Boxes3D.empty() if label is None else read_kitti_labels(label, rect_from_velo, skipped, on_error)
    cameras = {}
    if image is not None:
        from PIL import Image

        image = Path(image)
        if not image.is_file():
            raise FileNotFoundError(f"KITTI image is missing: {image}")
        with Image.open(image) as im:
            size = im.size
        k = cal["P2"][:, :3]
        shift = np.eye(4)
        shift[:3, 3] = np.linalg.solve(k, cal["P2"][:, 3])
        cameras["image_2"] = CameraView("image_2", image, k.copy(), shift @ rect_from_velo, size,
                                        frame_id or velodyne.stem)
    return DrivingSample(token=frame_id or velodyne.stem, points=points, boxes=boxes, cameras=cameras,
                         point_fields=POINT_FIELDS, lidar_path=velodyne, source="kitti")


class KittiDataset:
    """A map-style dataset of KITTI frames, one per ``velodyne/*.bin``.

    Give either ``root`` (the standard ``<root>/{velodyne,calib,label_2,image_2}`` layout, e.g.
    ``training/``) or the folders one by one (they override ``root``'s).

    Args:
        root: the split folder with the standard sub-folders.
        velodyne_dir: folder of ``<id>.bin`` scans.
        calib_dir: folder of ``<id>.txt`` calibrations.
        label_dir: folder of ``<id>.txt`` labels (``None``/absent: no boxes).
        image_dir: folder of ``<id>.png`` images (``None``/absent: no camera).
        frame_ids: only these frames (default: every scan in ``velodyne_dir``, sorted).
        on_error: ``"raise"`` on a label line with a non-finite number (naming file, line and
            column) or ``"skip"`` it, counted in :attr:`skipped` and warned about.

    Raises:
        ValueError: neither ``root`` nor ``velodyne_dir`` and ``calib_dir`` given.
        FileNotFoundError: the velodyne folder does not exist, or a frame's calibration is missing.
    """

    def __init__(self, root: str | Path | None = None, *, velodyne_dir: str | Path | None = None,
                 calib_dir: str | Path | None = None, label_dir: str | Path | None = None,
                 image_dir: str | Path | None = None, frame_ids: Sequence[str] | None = None,
                 on_error: Literal["raise", "skip"] = "raise") -> None:
        base = Path(root) if root is not None else None

        def pick(given: str | Path | None, sub: str) -> Path | None:
            if given is not None:
                return Path(given)
            return base / sub if base is not None and (base / sub).is_dir() else None

        self.velodyne_dir = pick(velodyne_dir, "velodyne")
        self.calib_dir = pick(calib_dir, "calib")
        self.label_dir = pick(label_dir, "label_2")
        self.image_dir = pick(image_dir, "image_2")
        if self.velodyne_dir is None or self.calib_dir is None:
            raise ValueError(f"KittiDataset needs root= with velodyne/ and calib/ folders or velodyne_dir= and "
                             f"calib_dir=; got root={root!r}, velodyne_dir={velodyne_dir!r}, calib_dir={calib_dir!r}")
        if not self.velodyne_dir.is_dir():
            raise FileNotFoundError(f"KITTI velodyne folder is missing: {self.velodyne_dir}")
        ids = sorted(p.stem for p in self.velodyne_dir.glob("*.bin")) if frame_ids is None else list(frame_ids)
        for i in ids:
            if not (self.calib_dir / f"{i}.txt").is_file():
                raise FileNotFoundError(f"KITTI frame {i}: calibration {self.calib_dir / f'{i}.txt'} is missing")
        self.frame_ids = ids
        self.on_error = on_error
        #: what was skipped so far (DontCare and other types, NaN points, bad boxes), by reason.
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index: int) -> DrivingSample:
        i = self.frame_ids[index]
        label = self.label_dir / f"{i}.txt" if self.label_dir is not None else None
        image = self.image_dir / f"{i}.png" if self.image_dir is not None else None
        return load_kitti_frame(self.velodyne_dir / f"{i}.bin", self.calib_dir / f"{i}.txt",
                                label if label is not None and label.is_file() else None,
                                image if image is not None and image.is_file() else None, i, self.skipped,
                                self.on_error)

"""Procedurally drawn PCB boards with the six DeepPCB defect classes at known boxes.

A board is a grid of blocks; each block is a bundle of parallel traces (horizontal or vertical)
ending in pads with drill holes, a field of ring vias, a copper pour or empty, and 45-degree traces
run wherever they clear the other copper. The defect-free drawing is
the template; defects are then drawn on a copy:

- ``open``: a gap cut across a trace;           - ``short``: a copper bridge between two traces;
- ``mousebite``: bites taken out of a trace edge; - ``spur``: a pointed protrusion from a trace edge;
- ``copper``: a spurious blob in empty space;     - ``pin-hole``: a hole in solid copper.

Everything is domain-randomised per board (seeded): trace width, gap, pad size, overall scale,
block layout and density, copper/background levels, an illumination gradient, Gaussian noise and
blur (half of the boards stay binary with dark copper on white, like DeepPCB). Samples follow
:mod:`vlsdk_industrial.samples`, labels in :data:`~vlsdk_industrial.samples.DEEPPCB_CLASSES` order.

``style="deeppcb"`` draws boards that look like DeepPCB's binarised scans instead (measured on 60
trainval templates, 640 px): always black copper on white; traces 7-12 px wide (DeepPCB's skeleton
width: mode 8, median 19 with pours); solid pads of 20-60 px, a fifth with a drill hole; copper pours,
often with traces running through clearance channels cut into them, for a dark fraction of 0.1-0.7
(DeepPCB: mean 0.35, 5-95 % 0.0-0.7; the default style: about 0.2). Its boxes are drawn the way DeepPCB
annotates: the extent of the defect's changed pixels grown by :data:`BOX_MARGIN` (10 px at 640) on every
side, so a box says exactly where its defect is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlsdk_industrial.samples import DEEPPCB_CLASSES

__all__ = ["BOX_MARGIN", "STYLES", "BoardSynthesizer", "SyntheticBoards"]

#: The rendering styles of :class:`BoardSynthesizer`.
STYLES: tuple[str, ...] = ("default", "deeppcb")

#: Pixels (at 640 px) between a DeepPCB box and the extent of its defect's changed pixels, on every
#: side: 83 % of DeepPCB's trainval spurious-copper boxes, whose changed pixels are unambiguous, are
#: exactly ``(x_min - 10, y_min - 10, x_max + 10, y_max + 10)`` (inclusive pixel extent).
#: ``style="deeppcb"`` draws its boxes that way.
BOX_MARGIN = 10


@dataclass
class _Trace:
    vertical: bool
    c: float  # centre line (y of a horizontal trace, x of a vertical one)
    a0: float  # extent along the trace
    a1: float
    w: float
    bundle: int
    k: int  # index in its bundle


def _rect(t: _Trace, a0: float, a1: float, c0: float, c1: float) -> tuple[int, int, int, int]:
    """Canonical (along, across) rectangle of trace ``t`` -> integer xyxy (inclusive pixels)."""
    x0, y0, x1, y1 = (c0, a0, c1, a1) if t.vertical else (a0, c0, a1, c1)
    return int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))


def _pt(t: _Trace, a: float, c: float) -> tuple[int, int]:
    return (int(round(c)), int(round(a))) if t.vertical else (int(round(a)), int(round(c)))


class BoardSynthesizer:
    """Make synthetic PCB samples from seeds (registered as ``industrial.boards``).

    Args:
        size: board side in pixels (square boards).
        min_defects: fewest defects per board (0 allows defect-free boards).
        max_defects: most defects per board.
        classes: defect class names to draw (default all six).
        template: stack the defect-free template as a second image channel, as
            :class:`~vlsdk_industrial.deeppcb.DeepPCBDataset` does with ``template=True``.
        randomise: domain randomisation of the rendering (levels, illumination, noise, blur);
            ``False`` gives clean binary boards.
        binary_prob: with ``randomise``, the share of boards kept binary (DeepPCB-like).
        style: ``"default"`` (the domain-randomised boards above) or ``"deeppcb"`` (binary boards
            and boxes shaped like DeepPCB's, see the module docstring; ignores ``randomise`` and
            ``binary_prob``).

    Example:
        >>> synth = BoardSynthesizer(size=128, max_defects=3)
        >>> sample = synth(0)
        >>> sample["image"].shape, sample["boxes"].shape[1]
        ((128, 128, 1), 4)
    """

    classes: tuple[str, ...] = DEEPPCB_CLASSES

    def __init__(self, size: int = 640, *, min_defects: int = 1, max_defects: int = 8,
                 classes: Sequence[str] | None = None, template: bool = False, randomise: bool = True,
                 binary_prob: float = 0.5, style: str = "default") -> None:
        if not isinstance(size, int) or size < 64:
            raise ValueError(f"size must be an int >= 64, got {size!r}")
        if not 0 <= min_defects <= max_defects:
            raise ValueError(f"expected 0 <= min_defects <= max_defects, got {min_defects}, {max_defects}")
        names = list(DEEPPCB_CLASSES if classes is None else classes)
        unknown = [c for c in names if c not in DEEPPCB_CLASSES]
        if unknown or not names:
            raise ValueError(f"classes must be a non-empty subset of {DEEPPCB_CLASSES}, got {names}")
        if not 0 <= binary_prob <= 1:
            raise ValueError(f"binary_prob must be in [0, 1], got {binary_prob}")
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.style = style
        self.size, self.min_defects, self.max_defects = size, min_defects, max_defects
        self.class_ids = [DEEPPCB_CLASSES.index(c) for c in names]
        self.template, self.randomise, self.binary_prob = template, randomise, binary_prob
        self._drawers: dict[int, Callable[..., tuple[int, int, int, int] | None]] = {
            0: self._open, 1: self._short, 2: self._mousebite, 3: self._spur, 4: self._copper, 5: self._pinhole}

    # -- layout -----------------------------------------------------------------------------
    def _layout(self, rng: np.random.Generator) -> tuple[np.ndarray, list[_Trace]]:
        import cv2

        n = self.size
        mask = np.zeros((n, n), np.uint8)
        deeppcb = self.style == "deeppcb"
        if deeppcb:  # measured on DeepPCB: traces 7-12 px, solid pads 20-60 px, pours, 640 px boards
            scale = n / 640
            w = max(2, int(round(rng.uniform(7, 12) * scale)))
            gap = max(4, int(round(rng.uniform(8, 16) * scale)))
            pad = max(w + 2, int(round(w * rng.uniform(2.5, 4.5))))
            kinds, hole_p = (0.5, 0.03, 0.3, 0.17), 0.2
        else:
            scale = rng.uniform(0.6, 1.4) * n / 640
            w = max(2, int(round(rng.uniform(4, 10) * scale)))
            gap = max(4, int(round(w * rng.uniform(1.0, 2.5))))
            pad = max(w + 2, int(round(w * rng.uniform(1.6, 2.6))))
            kinds, hole_p = (0.6, 0.13, 0.12, 0.15), 0.6
        grid = int(rng.integers(2, 4))
        cell = n // grid
        traces: list[_Trace] = []
        bundle = 0
        for by in range(grid):
            for bx in range(grid):
                x0, y0 = bx * cell + pad, by * cell + pad
                x1, y1 = (bx + 1) * cell - pad, (by + 1) * cell - pad
                kind = rng.choice(4, p=kinds)
                if kind == 3:  # left empty: room for 45-degree traces and spurious copper
                    continue
                if kind == 1:  # ring vias
                    r = pad // 2 + 1
                    step = 2 * r + gap
                    ys, xs = np.mgrid[y0 + r:y1 - r:step, x0 + r:x1 - r:step]
                    keep = rng.random(xs.shape) < rng.uniform(0.4, 0.9)
                    for cx, cy in zip(xs[keep].tolist(), ys[keep].tolist(), strict=True):
                        cv2.circle(mask, (cx, cy), r, 255, -1)
                        cv2.circle(mask, (cx, cy), max(1, r // 2), 0, -1)
                    continue
                if kind == 2:  # copper pour with a clearance margin
                    m = int(rng.integers(0, max(1, cell // 6)))
                    cv2.rectangle(mask, (x0 + m, y0 + m), (x1 - m, y1 - m), 255, -1)
                    continue
                vertical = bool(rng.random() < 0.5)
                lo_c, hi_c, lo_a, hi_a = (x0, x1, y0, y1) if vertical else (y0, y1, x0, x1)
                pitch = w + gap
                skip = rng.uniform(0.0, 0.35)
                # DeepPCB: traces often run through clearance channels cut into a copper pour
                poured = deeppcb and rng.random() < 0.6
                if poured:
                    cv2.rectangle(mask, (x0 - pad // 2, y0 - pad // 2), (x1 + pad // 2, y1 + pad // 2), 255, -1)
                step = max(pitch, pad + 2) if not poured else max(w + 3 * gap, pad + 2 * gap)
                for k, c in enumerate(range(lo_c + pad // 2 + (gap if poured else 0), hi_c - pad // 2, step)):
                    if rng.random() < skip:
                        continue
                    span = hi_a - lo_a
                    a0 = lo_a + int(rng.integers(0, max(1, span // 4)))
                    a1 = hi_a - int(rng.integers(0, max(1, span // 4)))
                    if a1 - a0 < 8 * w:
                        continue
                    t = _Trace(vertical, float(c), float(a0), float(a1), float(w), bundle, k)
                    if poured:  # the channel: the trace and its pads plus ``gap`` of clearance
                        channel = _rect(t, a0, a1, c - w / 2 - gap, c + w / 2 - 1 + gap)
                        cv2.rectangle(mask, *self._corners(channel), 0, -1)
                        for a in (a0, a1):
                            cv2.circle(mask, _pt(t, a, c), pad // 2 + gap, 0, -1)
                    cv2.rectangle(mask, *self._corners(_rect(t, a0, a1, c - w / 2, c + w / 2 - 1)), 255, -1)
                    for a in (a0, a1):  # pads with drill holes at both ends
                        p = _pt(t, a, c)
                        if rng.random() < 0.5:
                            cv2.circle(mask, p, pad // 2, 255, -1)
                        else:
                            cv2.rectangle(mask, (p[0] - pad // 2, p[1] - pad // 2),
                                          (p[0] + pad // 2, p[1] + pad // 2), 255, -1)
                        if rng.random() < hole_p:
                            cv2.circle(mask, p, max(1, pad // 5), 0, -1)
                    traces.append(t)
                bundle += 1
        self._diagonals(mask, rng, w, gap, pad)
        return mask, traces

    def _diagonals(self, mask: np.ndarray, rng: np.random.Generator, w: int, gap: int, pad: int) -> None:
        """Add 45-degree traces with pads where they clear existing copper by ``gap`` (DeepPCB has many)."""
        import cv2

        n = self.size
        kernel = np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)
        for _ in range(int(rng.integers(0, 8))):
            free = cv2.erode((mask == 0).astype(np.uint8), np.ones((2 * (gap + pad) + 1,) * 2, np.uint8), borderValue=0)
            ys, xs = np.nonzero(free[pad:n - pad, pad:n - pad])
            if ys.size == 0:
                return
            i = int(rng.integers(ys.size))
            x0, y0 = int(xs[i]) + pad, int(ys[i]) + pad
            dx, dy = (1 if rng.random() < 0.5 else -1), (1 if rng.random() < 0.5 else -1)
            for length in (n // 4, n // 8, n // 16):  # the longest run that clears the other copper
                x1, y1 = x0 + dx * length, y0 + dy * length
                if not (pad <= x1 < n - pad and pad <= y1 < n - pad):
                    continue
                trial = np.zeros_like(mask)
                cv2.line(trial, (x0, y0), (x1, y1), 255, w)
                for p in ((x0, y0), (x1, y1)):
                    cv2.circle(trial, p, pad // 2, 255, -1)
                if (cv2.dilate(trial, kernel) & mask).any():
                    continue  # would touch other copper: a short nobody annotated
                cv2.circle(trial, (x0, y0), max(1, pad // 5), 0, -1)
                mask |= trial
                break

    @staticmethod
    def _corners(r: tuple[int, int, int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        return (r[0], r[1]), (r[2], r[3])

    # -- defects (each draws on ``mask`` and returns its xyxy box or None) ---------------------
    def _pick(self, rng: np.random.Generator, traces: list[_Trace], margin: float) -> tuple[_Trace, float] | None:
        if not traces:
            return None
        t = traces[int(rng.integers(len(traces)))]
        lo, hi = t.a0 + margin, t.a1 - margin
        return (t, float(rng.uniform(lo, hi))) if hi > lo else None

    def _open(self, mask, rng, traces, template):
        import cv2

        got = self._pick(rng, traces, 3 * traces[0].w if traces else 0)
        if got is None:
            return None
        t, a = got
        g = max(2.0, t.w * rng.uniform(0.6, 2.0))
        r = _rect(t, a - g / 2, a + g / 2, t.c - t.w / 2 - 1, t.c + t.w / 2 + 1)
        cv2.rectangle(mask, *self._corners(r), 0, -1)
        return _rect(t, a - g / 2 - 2, a + g / 2 + 2, t.c - t.w / 2 - 2, t.c + t.w / 2 + 2)

    def _short(self, mask, rng, traces, template):
        import cv2

        pairs = [(s, t) for s, t in zip(traces[:-1], traces[1:], strict=True)
                 if s.bundle == t.bundle and min(s.a1, t.a1) - max(s.a0, t.a0) > 8 * s.w]
        if not pairs:
            return None
        s, t = pairs[int(rng.integers(len(pairs)))]
        a = float(rng.uniform(max(s.a0, t.a0) + 3 * s.w, min(s.a1, t.a1) - 3 * s.w))
        b = max(2.0, s.w * rng.uniform(0.4, 1.2))
        r = _rect(s, a - b / 2, a + b / 2, s.c, t.c)
        cv2.rectangle(mask, *self._corners(r), 255, -1)
        return _rect(s, a - b / 2 - 2, a + b / 2 + 2, s.c + s.w / 2 - 2, t.c - t.w / 2 + 2)

    def _mousebite(self, mask, rng, traces, template):
        import cv2

        got = self._pick(rng, traces, 3 * traces[0].w if traces else 0)
        if got is None:
            return None
        t, a = got
        side = 1 if rng.random() < 0.5 else -1
        edge = t.c + side * t.w / 2
        r = max(1.5, t.w * rng.uniform(0.3, 0.5))
        n = int(rng.integers(1, 4))
        centres = a + (np.arange(n) - (n - 1) / 2) * 1.6 * r
        for ca in centres.tolist():
            cv2.circle(mask, _pt(t, ca, edge), int(round(r)), 0, -1)
        return _rect(t, centres[0] - r - 2, centres[-1] + r + 2, min(edge, edge - side * r) - 2,
                     max(edge, edge - side * r) + 2)

    def _spur(self, mask, rng, traces, template):
        import cv2

        got = self._pick(rng, traces, 3 * traces[0].w if traces else 0)
        if got is None:
            return None
        t, a = got
        side = 1 if rng.random() < 0.5 else -1
        edge = t.c + side * t.w / 2
        gap = self._clearance(template, t, a, side)
        length = max(2.0, gap * rng.uniform(0.3, 0.6))
        half = max(1.5, t.w * rng.uniform(0.4, 0.9))
        tip = a + rng.uniform(-half / 2, half / 2)
        poly = np.array([_pt(t, a - half, edge), _pt(t, a + half, edge), _pt(t, tip, edge + side * length)], np.int32)
        cv2.fillPoly(mask, [poly], 255)
        return _rect(t, a - half - 2, a + half + 2, min(edge, edge + side * length) - 2,
                     max(edge, edge + side * length) + 2)

    @staticmethod
    def _clearance(template: np.ndarray, t: _Trace, a: float, side: int) -> float:
        """Free pixels beside trace ``t`` at ``a`` on ``side`` (vectorised scan of one line)."""
        n = template.shape[0]
        start = int(round(t.c + side * (t.w / 2 + 1)))
        idx = np.arange(start, n if side > 0 else -1, side)
        ai = min(n - 1, max(0, int(round(a))))
        line = template[idx, ai] if t.vertical is False else template[ai, idx]
        hits = np.flatnonzero(line)
        return float(hits[0] if hits.size else idx.size)

    def _free_spot(self, avail: np.ndarray, rng: np.random.Generator, r: int) -> tuple[int, int] | None:
        import cv2

        k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
        ok = cv2.erode(avail, k, borderValue=0)
        ys, xs = np.nonzero(ok)
        if ys.size == 0:
            return None
        i = int(rng.integers(ys.size))
        return int(xs[i]), int(ys[i])

    def _copper(self, mask, rng, traces, template, taken=None):
        import cv2

        r = int(max(3, rng.uniform(3, 10) * self.size / 640 * (1.3 if self.style == "deeppcb" else 1.0)))
        avail = ((template == 0) & (mask == 0)).astype(np.uint8)
        if taken is not None:
            avail &= ~taken
        spot = self._free_spot(avail, rng, r + 3)
        if spot is None:
            return None
        axes = (max(2, int(r * rng.uniform(0.5, 1.0))), r)
        cv2.ellipse(mask, spot, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        x, y = spot
        return x - r - 2, y - r - 2, x + r + 2, y + r + 2

    def _pinhole(self, mask, rng, traces, template, taken=None):
        import cv2

        r = int(max(1, rng.uniform(2, 5) * self.size / 640 * (1.3 if self.style == "deeppcb" else 1.0)))
        avail = ((template > 0) & (mask > 0)).astype(np.uint8)
        if taken is not None:
            avail &= ~taken
        spot = self._free_spot(avail, rng, r + 2)
        if spot is None:
            return None
        cv2.circle(mask, spot, r, 0, -1)
        x, y = spot
        return x - r - 2, y - r - 2, x + r + 2, y + r + 2

    # -- rendering ---------------------------------------------------------------------------
    def _render(self, mask: np.ndarray, rng: np.random.Generator, look: dict[str, Any]) -> np.ndarray:
        import cv2

        img = np.where(mask > 0, look["copper"], look["background"]).astype(np.float32)
        if look["binary"]:
            return img.astype(np.uint8)
        img *= look["illumination"]
        if look["blur"] > 0:
            img = cv2.GaussianBlur(img, (0, 0), look["blur"])
        img += rng.normal(0, look["noise"], img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _look(self, rng: np.random.Generator) -> dict[str, Any]:
        n = self.size
        binary = self.style == "deeppcb" or not self.randomise or rng.random() < self.binary_prob
        if binary:
            return {"binary": True, "copper": 0.0, "background": 255.0}  # DeepPCB: dark copper on white
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
        gx, gy = rng.uniform(-0.25, 0.25, 2)
        dark, light = rng.uniform(0, 90), rng.uniform(170, 255)
        inverted = rng.random() < 0.2  # some boards with light copper on a dark background
        return {"binary": False, "copper": light if inverted else dark, "background": dark if inverted else light,
                "illumination": 1 + gx * (xx - 0.5) + gy * (yy - 0.5), "noise": rng.uniform(0, 12),
                "blur": rng.uniform(0, 1.2) if rng.random() < 0.7 else 0.0}

    def _deeppcb_box(self, box: tuple[int, int, int, int], changed: np.ndarray) -> tuple[int, int, int, int]:
        """DeepPCB's box for a defect: its changed pixels' extent grown by ``BOX_MARGIN`` px on every side."""
        ys, xs = np.nonzero(changed)
        if not len(xs):  # nothing changed (cannot happen with the drawers above): keep the drawer's box
            return box
        m = round(BOX_MARGIN * self.size / 640)
        return int(xs.min()) - m, int(ys.min()) - m, int(xs.max()) + m, int(ys.max()) + m

    def __call__(self, seed: int) -> dict[str, Any]:
        """The sample for ``seed`` (deterministic).

        Args:
            seed: any non-negative int.

        Returns:
            ``{"image", "boxes", "labels", "path", "seed"}`` (see :mod:`vlsdk_industrial.samples`).
        """
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        template, traces = self._layout(rng)
        mask = template.copy()
        want = int(rng.integers(self.min_defects, self.max_defects + 1))
        boxes: list[tuple[int, int, int, int]] = []
        labels: list[int] = []
        taken = np.zeros_like(template)
        # deeppcb: classes in shuffled rounds, each retried until it fits (DeepPCB's classes are balanced)
        balanced = self.style == "deeppcb"
        queue: list[int] = []
        fails = 0
        for _ in range(4 * want + 8):  # a few retries: a candidate may not fit or may overlap another
            if len(boxes) >= want:
                break
            if balanced:
                if not queue:
                    queue = [self.class_ids[i] for i in rng.permutation(len(self.class_ids))]
                cls = queue[0]
            else:
                cls = self.class_ids[int(rng.integers(len(self.class_ids)))]
            trial = mask.copy()
            if cls in (4, 5):
                box = self._drawers[cls](trial, rng, traces, template, taken)
            else:
                box = self._drawers[cls](trial, rng, traces, template)
            if box is None:
                fails += 1
                if balanced and fails % 3 == 0:  # this class does not fit on this board: next one
                    queue.pop(0)
                continue
            if self.style == "deeppcb":
                box = self._deeppcb_box(box, trial != mask)
            x0, y0, x1, y1 = (int(np.clip(v, 0, self.size)) for v in box)
            if x1 - x0 < 2 or y1 - y0 < 2 or taken[y0:y1, x0:x1].any():
                fails += 1
                if balanced and fails % 3 == 0:
                    queue.pop(0)
                continue
            mask = trial
            taken[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = 1
            boxes.append((x0, y0, x1, y1))
            labels.append(cls)
            if balanced:
                queue.pop(0)
        look = self._look(rng)
        image = self._render(mask, rng, look)[..., None]
        if self.template:
            image = np.concatenate((image, self._render(template, rng, look)[..., None]), axis=-1)
        return {"image": image, "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                "labels": np.asarray(labels, np.int64), "path": f"synthetic://boards/{int(seed)}",
                "seed": int(seed)}

    def dataset(self, length: int, seed: int = 0,
                transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> SyntheticBoards:
        """A map-style dataset of ``length`` boards with seeds ``seed, seed + 1, ...``."""
        return SyntheticBoards(self, length, seed, transform)


class SyntheticBoards:
    """A map-style dataset over :class:`BoardSynthesizer` seeds.

    Args:
        synthesizer: the board generator.
        length: number of boards.
        seed: seed of board 0 (board ``i`` uses ``seed + i``).
        transform: ``transform(sample) -> sample`` applied to each board.
    """

    classes: tuple[str, ...] = DEEPPCB_CLASSES

    def __init__(self, synthesizer: BoardSynthesizer, length: int, seed: int = 0,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be a non-negative int, got {length!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.synthesizer, self.length, self.seed, self.transform = synthesizer, length, seed, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} boards")
        sample = self.synthesizer(self.seed + index % self.length)
        return self.transform(sample) if self.transform is not None else sample

"""``Report``: sections of text, tables, metrics and images -> one self-contained ``report.html``.

The HTML embeds every image as a base64 PNG ``data:`` URI and carries its own CSS, so the
file can be mailed, attached to a CI run or opened offline; the output folder also gets the
PNGs themselves and ``metrics.json``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlsdk.version import __version__

__all__ = ["Report", "Section", "REPORT_NAME", "METRICS_NAME"]

REPORT_NAME = "report.html"
METRICS_NAME = "metrics.json"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --head: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       max-width: 1180px; margin: 2rem auto; padding: 0 1.25rem; }
header { border-bottom: 2px solid var(--accent); margin-bottom: 1.5rem; }
h1 { font-size: 1.7rem; margin: 0 0 .25rem; }
.meta { color: var(--muted); font-size: .85rem; margin-bottom: .75rem; }
nav ol { margin: .25rem 0 1rem; padding-left: 1.4rem; font-size: .9rem; }
nav a { color: var(--accent); text-decoration: none; }
section { margin: 2rem 0; }
h2 { font-size: 1.3rem; border-bottom: 1px solid var(--line); padding-bottom: .3rem; }
p { margin: .5rem 0; }
pre { background: var(--head); padding: .75rem; overflow-x: auto; font-size: .85rem; border-radius: 6px; }
table { border-collapse: collapse; margin: .75rem 0; font-size: .88rem; display: block; overflow-x: auto; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { border: 1px solid var(--line); padding: .3rem .6rem; text-align: left; white-space: nowrap; }
th { background: var(--head); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: .85rem; }
.metrics td:first-child { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
"""


@dataclass
class Section:
    """One ``<section>``: a heading and its items in order (``(kind, payload)`` pairs)."""

    title: str
    items: list[tuple[str, Any]] = field(default_factory=list)

    def anchor(self, index: int) -> str:
        return f"s{index + 1}-" + (re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section")


@dataclass
class _Image:
    name: str
    png: bytes
    caption: str | None


class Report:
    """Collect text, tables, metrics and images into sections, then :meth:`write` a folder.

    Items go into the current section (a section named like the report is opened if none
    was). Metrics are also gathered into one flat mapping for ``metrics.json``; a key given
    twice keeps its last value.

    Args:
        title: the report's title (``<h1>`` and ``<title>``).
        subtitle: an optional line under the title.

    Example:
        >>> r = Report("Industrial demo")
        >>> r.section("Training").add_text("200 steps on synthetic boards.")  # doctest: +ELLIPSIS
        <vlsdk.report.html.Report object at ...>
        >>> r.add_metrics({"mAP50": 0.61, "steps": 200}, prefix="industrial")  # doctest: +ELLIPSIS
        <...>
        >>> r.add_table([{"expert": "industrial.solder", "share": 0.42}], caption="Routing")  # doctest: +ELLIPSIS
        <...>
        >>> r.write("out")  # doctest: +SKIP
        PosixPath('out/report.html')
    """

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"title must be a non-empty string, got {title!r}")
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []
        self.metrics: dict[str, Any] = {}
        self._image_names: set[str] = set()

    # -- building ---------------------------------------------------------------------------
    def section(self, title: str, text: str | None = None) -> Report:
        """Start a new section; later items go into it."""
        self.sections.append(Section(str(title)))
        if text:
            self.add_text(text)
        return self

    def _current(self) -> Section:
        if not self.sections:
            self.sections.append(Section(self.title))
        return self.sections[-1]

    def add_text(self, text: str, *, pre: bool = False) -> Report:
        """A paragraph (blank lines split paragraphs); ``pre=True`` keeps it verbatim (logs, commands)."""
        self._current().items.append(("pre" if pre else "text", str(text)))
        return self

    def add_table(self, rows: Sequence[Mapping[str, Any]], *, caption: str | None = None,
                  columns: Sequence[str] | None = None, digits: int = 4) -> Report:
        """A table from a list of dicts (columns: ``columns`` or the keys in first-seen order).

        Floats are shown with ``digits`` significant digits; ``None`` as an en dash.
        """
        rows = [dict(r) for r in rows]
        if columns is None:
            columns = []
            for r in rows:
                columns += [k for k in r if k not in columns]
        self._current().items.append(("table", (list(map(str, columns)), rows, caption, digits)))
        return self

    def add_metrics(self, metrics: Mapping[str, Any], *, prefix: str | None = None, caption: str | None = None,
                    show: bool = True) -> Report:
        """Record metrics (``metrics.json``) and show them as a name/value table in this section.

        Args:
            metrics: name -> number (tensors, numpy scalars and nested dicts are fine; nested
                keys are joined with ``/``).
            prefix: prepended as ``"<prefix>/<name>"``.
            caption: table caption.
            show: ``False`` records them for ``metrics.json`` only.
        """
        flat = _flatten(metrics, prefix)
        self.metrics.update(flat)
        if show and flat:
            rows = [{"metric": k, "value": v} for k, v in flat.items()]
            self._current().items.append(("metrics", (rows, caption)))
        return self

    def add_image(self, image: Any, *, caption: str | None = None, name: str | None = None) -> Report:
        """An image: a PNG path, PNG bytes, a matplotlib ``Figure`` or an ``(H, W[, 3|4])`` array.

        The PNG is read now (the file may go away later), embedded in the HTML, and written
        into the output folder as ``name`` (default: the file's name or ``image-N.png``).
        """
        png, default = _to_png(image)
        stem = Path(name or default or f"image-{self._count_images() + 1}.png").name
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
        if not stem.lower().endswith(".png"):
            stem += ".png"
        base, n = stem[:-4], 2
        while stem in self._image_names:
            stem, n = f"{base}-{n}.png", n + 1
        self._image_names.add(stem)
        self._current().items.append(("image", _Image(stem, png, caption)))
        return self

    def _count_images(self) -> int:
        return len(self._image_names)

    # -- output -----------------------------------------------------------------------------
    def to_html(self) -> str:
        """The whole report as one HTML document (images inline)."""
        esc = html.escape
        created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
               '<meta name="viewport" content="width=device-width, initial-scale=1">',
               f"<title>{esc(self.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<header>",
               f"<h1>{esc(self.title)}</h1>"]
        if self.subtitle:
            out.append(f"<p>{esc(self.subtitle)}</p>")
        out.append(f'<div class="meta">vlsdk {esc(__version__)} &middot; {esc(created)}</div>')
        if len(self.sections) > 1:
            out.append("<nav><ol>" + "".join(f'<li><a href="#{s.anchor(i)}">{esc(s.title)}</a></li>'
                                             for i, s in enumerate(self.sections)) + "</ol></nav>")
        out.append("</header>")
        for i, section in enumerate(self.sections):
            out.append(f'<section id="{section.anchor(i)}">')
            out.append(f"<h2>{esc(section.title)}</h2>")
            for kind, payload in section.items:
                out.append(_render(kind, payload))
            out.append("</section>")
        out += ["</body>", "</html>", ""]
        return "\n".join(out)

    def write(self, directory: str | Path) -> Path:
        """Write ``report.html``, ``metrics.json`` and the PNGs into ``directory``; returns the HTML path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for section in self.sections:
            for kind, payload in section.items:
                if kind == "image":
                    (directory / payload.name).write_bytes(payload.png)
        meta = {"title": self.title, "vlsdk_version": __version__,
                "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "metrics": self.metrics}
        (directory / METRICS_NAME).write_text(json.dumps(_jsonable(meta), indent=2, allow_nan=False) + "\n",
                                              encoding="utf-8")
        path = directory / REPORT_NAME
        path.write_text(self.to_html(), encoding="utf-8")
        return path


# -- helpers -----------------------------------------------------------------------------------


def _scalar(value: Any) -> Any:
    if hasattr(value, "detach"):  # torch tensors
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars
        value = value.item()
    elif hasattr(value, "tolist"):
        value = value.tolist()
    return value


def _flatten(metrics: Mapping[str, Any], prefix: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        else:
            out[name] = _scalar(value)
    return out


def _jsonable(value: Any) -> Any:
    value = _scalar(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _to_png(image: Any) -> tuple[bytes, str | None]:
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}")
        data = path.read_bytes()
        if not data.startswith(_PNG_MAGIC):
            raise ValueError(f"{path} is not a PNG; reports embed PNG images only")
        return data, path.name
    if isinstance(image, (bytes, bytearray)):
        if not bytes(image).startswith(_PNG_MAGIC):
            raise ValueError("image bytes are not a PNG; reports embed PNG images only")
        return bytes(image), None
    if hasattr(image, "savefig"):  # a matplotlib Figure
        buf = io.BytesIO()
        image.savefig(buf, format="png", facecolor="white")
        return buf.getvalue(), None
    if hasattr(image, "shape"):  # an array or tensor
        import numpy as np

        from vlsdk.plugins.errors import require_extra

        require_extra("plot", "matplotlib", requester="Report.add_image of an array", import_now=True)
        from matplotlib.image import imsave

        arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3):
            raise ValueError(f"image arrays must be (H, W), (H, W, 3|4) or (3|4, H, W), got {arr.shape}")
        buf = io.BytesIO()
        imsave(buf, arr, format="png", cmap="gray" if arr.ndim == 2 else None)
        return buf.getvalue(), None
    raise ValueError(f"add_image takes a PNG path, PNG bytes, a matplotlib Figure or an array; "
                     f"got {type(image).__name__}")


def _cell(value: Any, digits: int) -> tuple[str, bool]:
    value = _scalar(value)
    if value is None:
        return "&ndash;", False
    if isinstance(value, bool):
        return html.escape(str(value)), False
    if isinstance(value, int):
        return f"{value:,}", True
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value), True
        if value != 0 and abs(value) < 1e-4:
            return f"{value:.1e}", True
        return f"{value:.{digits}g}", True
    return html.escape(str(value)), False


def _table(columns: list[str], rows: list[dict[str, Any]], caption: str | None, digits: int,
           css: str = "") -> str:
    out = [f'<table class="{css}">' if css else "<table>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = []
        for c in columns:
            text, numeric = _cell(row.get(c), digits)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _render(kind: str, payload: Any) -> str:
    esc = html.escape
    if kind == "text":
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", payload) if p.strip()]
        return "\n".join(f"<p>{esc(p)}</p>" for p in paragraphs)
    if kind == "pre":
        return f"<pre>{esc(payload)}</pre>"
    if kind == "table":
        columns, rows, caption, digits = payload
        return _table(columns, rows, caption, digits)
    if kind == "metrics":
        rows, caption = payload
        return _table(["metric", "value"], rows, caption, 4, css="metrics")
    if kind == "image":
        data = base64.b64encode(payload.png).decode("ascii")
        alt = esc(payload.caption or payload.name)
        caption = f"<figcaption>{esc(payload.caption)}</figcaption>" if payload.caption else ""
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}" '
                f'data-file="{esc(payload.name)}">{caption}</figure>')
    raise ValueError(f"unknown report item {kind!r}")

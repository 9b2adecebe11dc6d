"""``vlsdk.report.Report``: a self-contained report.html (embedded PNGs), metrics.json and the PNGs."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from vlsdk.report import Report


class _Collect(HTMLParser):
    """Every tag, every attribute that points somewhere, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in ("meta", "img", "br", "hr", "link"):
            self.stack.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster", "action"):
                self.refs.append((tag, name, value or ""))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _png(path, seed=0):
    from matplotlib.image import imsave

    imsave(path, np.random.default_rng(seed).random((40, 60, 3)))
    return path


def _report(tmp_path) -> Report:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 1, 2], [1, 0, 1])
    report = Report("Demo <run>", subtitle="synthetic data")
    report.section("Training", "200 steps on synthetic boards.\n\nSecond paragraph & <b>not bold</b>.")
    report.add_metrics({"loss": torch.tensor(0.125), "steps": np.int64(200), "eval": {"mAP50": 0.61}},
                       prefix="industrial")
    report.add_text("vlsdk demo --steps 200", pre=True)
    report.section("Routing")
    report.add_table([{"expert": "industrial.solder", "share": 0.4213, "tokens": 1200},
                      {"expert": "generic.0", "share": None, "extra": "x"}], caption="Shares")
    report.add_image(_png(tmp_path / "map.png"), caption="routing map")
    (tmp_path / "sub").mkdir()
    report.add_image(_png(tmp_path / "sub" / "map.png", 1))  # same file name: stored as map-2.png
    report.add_image(fig, name="curve")
    report.add_image(np.linspace(0, 1, 400).reshape(20, 20))
    report.add_metrics({"nan": float("nan")}, show=False)
    return report


def test_report_folder(tmp_path):
    out = tmp_path / "out"
    path = _report(tmp_path).write(out)
    assert path == out / "report.html"
    assert sorted(p.name for p in out.iterdir()) == [
        "curve.png", "image-4.png", "map-2.png", "map.png", "metrics.json", "report.html"]
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["title"] == "Demo <run>"
    assert meta["metrics"] == {"industrial/loss": 0.125, "industrial/steps": 200, "industrial/eval/mAP50": 0.61,
                               "nan": None}


def test_report_html_is_self_contained_and_parses(tmp_path):
    out = tmp_path / "out"
    html = _report(tmp_path).write(out).read_text(encoding="utf-8")
    parser = _Collect()
    parser.feed(html)
    parser.close()
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    assert {"html", "head", "style", "body", "section", "table", "figure", "img", "pre", "nav"} <= set(parser.tags)
    assert "link" not in parser.tags and "script" not in parser.tags
    images = [v for tag, name, v in parser.refs if tag == "img"]
    assert len(images) == 4
    for tag, name, value in parser.refs:  # only embedded images and in-page anchors
        assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:40])
    embedded = {base64.b64decode(v.split(",", 1)[1]) for v in images}
    assert embedded == {p.read_bytes() for p in out.glob("*.png")}
    text = "".join(parser.text)
    assert "industrial/eval/mAP50" in text and "0.61" in text and "0.125" in text and "200" in text
    assert "industrial.solder" in text and "0.4213" in text and "1,200" in text
    assert "<b>not bold</b>" in text  # escaped, shown as text
    assert "<b>" not in html.split("<body>")[1].replace("&lt;b&gt;", "")
    assert "url(" not in html and "@import" not in html


def test_report_rejects_what_it_cannot_embed(tmp_path):
    report = Report("r")
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        report.add_image(tmp_path / "a.jpg")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        report.add_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="add_image takes"):
        report.add_image(object())
    with pytest.raises(ValueError, match="title"):
        Report("  ")


def test_items_before_any_section_go_into_a_default_one(tmp_path):
    report = Report("Solo").add_metrics({"x": 1.5})
    html = report.write(tmp_path).read_text()
    assert report.sections[0].title == "Solo" and "<nav>" not in html and "1.5" in html

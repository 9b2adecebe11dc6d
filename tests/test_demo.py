"""``vlsdk demo``: runs every registered domain demo into one report, isolating failures."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

import vlsdk
from vlsdk.cli import main
from vlsdk.demo import DemoResult, run_demos
from vlsdk.plugins import hookimpl


class Boost(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc(x)


def toy_demo(out_dir, *, quick, device, seed):
    torch.manual_seed(seed)
    model = vlsdk.VLModel("tiny", in_chans=1)
    model.add_expert("toy.boost", Boost, init_bias=50.0)  # takes every token
    png = out_dir / "toy.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0, 1, 0])
    fig.savefig(png)
    plt.close(fig)
    return DemoResult("toy", "a toy domain", {"score": 0.75}, [png], model.eval(), torch.rand(2, 1, 32, 32),
                      expert="toy.boost", summary="trained on nothing")


def broken_demo(out_dir, *, quick, device, seed):
    raise RuntimeError("synthetic data generator exploded")


class ToyPlugin:
    @hookimpl
    def vlsdk_register_demos(self, register):
        register("toy", toy_demo)
        register("broken", broken_demo)


@pytest.fixture
def toy(plugin_host, register_plugin):
    register_plugin(ToyPlugin(), name="toyplugin")
    return plugin_host


def test_report_has_every_domain_routing_and_metrics(toy, tmp_path, capsys):
    path = run_demos(tmp_path, quick=True)
    html = path.read_text()
    HTMLParser().feed(html)
    assert "a toy domain" in html and "broken: failed" in html and "exploded" in html
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["toy.score"] == 0.75
    assert metrics["toy.own_expert_share"] == pytest.approx(1.0, abs=1e-3)  # the toy expert took every token
    assert html.count("data:image/png;base64,") >= 3  # the demo's PNG + routing map + utilisation
    out = capsys.readouterr().out
    assert "[demo] broken: failed" in out and "[demo] toy: done" in out


def test_command_and_domain_selection(toy, tmp_path):
    assert main(["demo", "--quick", "--domain", "toy", "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "a toy domain" in html and "broken" not in html
    with pytest.raises(ValueError, match=r"no demo for \['ocean'\]"):
        run_demos(tmp_path, domains=["ocean"])

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


def options_demo(out_dir, *, quick, device, seed, steps=None, data=None):
    """A demo on the extended contract: it reports the steps it was given and the folder it read."""
    files = sorted(p.name for p in data.iterdir()) if data is not None else []
    return DemoResult("keen", f"read {files}", {"files": float(len(files))}, train_steps=steps or 11,
                      summary=f"data={data}")


class OptionsPlugin:
    @hookimpl
    def vlsdk_register_demos(self, register):
        register("keen", options_demo)


@pytest.fixture
def keen(toy, register_plugin):
    register_plugin(OptionsPlugin(), name="keenplugin")
    return toy


def test_accepted_options_reads_the_signature():
    from vlsdk.demo import accepted_options

    assert accepted_options(toy_demo) == frozenset()
    assert accepted_options(options_demo) == {"steps", "data"}
    assert accepted_options(lambda out_dir, *, quick, device, seed, **more: None) == {"steps", "data"}
    assert accepted_options(lambda out_dir, quick, device, seed, steps: None) == {"steps"}
    assert accepted_options(print) == frozenset()  # no inspectable signature: the base contract only


def test_steps_and_data_reach_demos_that_accept_them(keen, tmp_path, capsys):
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--domain", "keen", "--domain", "toy", "--steps", "3",
                 "--data", f"keen={folder}", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["keen.train_steps"] == 3 and metrics["keen.files"] == 1.0  # it got both options
    assert "toy.train_steps" not in metrics  # the old-contract demo reports no steps
    html = (out / "report.html").read_text()
    assert "read [&#x27;a.png&#x27;]" in html or "read ['a.png']" in html
    # the old-contract demo ran with its defaults, and the terminal and the report say it ignored --steps
    printed = capsys.readouterr().out
    assert "[demo] toy: ignored --steps: its demo's run() takes no `steps` keyword" in printed
    assert "keen: ignored" not in printed
    assert html.count("toy: ignored --steps") == 1 and "toy.score" in html


def test_data_ignored_by_an_old_demo_is_reported(toy, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--domain", "toy", "--data", f"toy={tmp_path}", "--out", str(out)]) == 0
    assert "[demo] toy: ignored --data: its demo's run() takes no `data` keyword" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "toy: ignored --data" in html
    assert ">synthetic<" in html  # the summary's data column: the domain did not read the folder


@pytest.mark.parametrize(("argv", "message"), [
    (["--data", "tyo=."], "--data tyo=.: no installed domain 'tyo'; did you mean 'toy'?"),
    (["--data", "ocean=."], "no installed domain 'ocean'. Installed domains: broken, toy"),
    (["--domain", "broken", "--data", "toy=."], "domain 'toy' is not run (--domain selects broken); add --domain toy"),
    (["--data", "toy=.", "--data", "toy=.."], "--data toy= given twice"),
])
def test_bad_data_values_fail_before_any_demo_runs(toy, tmp_path, capsys, argv, message):
    out = tmp_path / "report"
    assert main(["demo", "--quick", *argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists()  # nothing ran, no half-written report


def test_missing_data_path_names_domain_and_path(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--data", "toy=no/such/folder", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "FileNotFoundError: --data toy=no/such/folder: the toy data folder" in err
    assert str(tmp_path / "no" / "such" / "folder") in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--data", "toy"], "expected DOMAIN=PATH"),
    (["--data", "=."], "expected DOMAIN=PATH"),
    (["--steps", "0"], "expected a whole number of steps >= 1, got '0'"),
    (["--steps", "many"], "expected a whole number of steps >= 1, got 'many'"),
])
def test_malformed_options_are_usage_errors(toy, tmp_path, capsys, argv, message):
    assert main(["demo", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        run_demos(tmp_path, steps=0)

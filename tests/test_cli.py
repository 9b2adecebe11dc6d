"""The ``vlsdk`` command line: core and plugin commands; broken plugins never break it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from vlsdk.cli import main
from vlsdk.plugins import PluginHost, hookimpl, use_host
from vlsdk.version import __version__


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("VLSDK_STRICT_PLUGINS", "VLSDK_LOAD_PLUGINS", "VLSDK_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)


def make_linear(dim, **options):
    return nn.Linear(dim, dim)


class Acme:
    """A plugin with an expert, a head, a dataset and two commands."""

    @hookimpl
    def vlsdk_register_experts(self, register):
        register("acme.texture", make_linear)

    @hookimpl
    def vlsdk_register_heads(self, register):
        register("acme-count", make_linear)

    @hookimpl
    def vlsdk_register_datasets(self, register):
        register("acme.boards", list, description="drawn PCB boards")

    @hookimpl
    def vlsdk_register_commands(self, register):
        def configure(parser):
            parser.add_argument("--name", default="world")
            parser.add_argument("--status", type=int, default=0)

        def run(args):
            print(f"hello {args.name}")
            return args.status

        def explode(args):
            raise RuntimeError("acme exploded")

        register("hello", run, help="say hello", configure=configure)
        register("explode", explode, help="always fails")


@pytest.fixture
def acme(plugin_host, register_plugin):
    register_plugin(Acme(), "acme", distribution="acme-vlsdk", version="2.0")
    return plugin_host


def run_cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_no_command_prints_help(plugin_host, capsys):
    status, out, _ = run_cli(capsys)
    assert status == 0
    assert out.startswith("usage: vlsdk")
    for command in ("plugins", "experts", "heads", "datasets", "info"):
        assert command in out


def test_version_and_usage_errors(plugin_host, capsys):
    status, out, _ = run_cli(capsys, "--version")
    assert (status, out.strip()) == (0, f"vlsdk {__version__}")
    status, _, err = run_cli(capsys, "no-such-command")
    assert status == 2 and "invalid choice" in err
    status, _, err = run_cli(capsys, "experts", "--bogus")
    assert status == 2 and "unrecognized arguments: --bogus" in err


def test_plugins_lists_plugins_and_what_they_registered(acme, capsys):
    status, out, err = run_cli(capsys, "plugins")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert f"vlsdk  vlsdk {__version__}  loaded" in lines
    assert "acme  acme-vlsdk 2.0  loaded" in lines
    assert "    experts: acme.texture" in lines
    assert "    datasets: acme.boards" in lines
    assert "    commands: hello, explode" in lines
    assert any(
        line.startswith("    hooks: vlsdk_register_commands, vlsdk_register_datasets")
        for line in lines
    )
    assert lines[-1] == "2 plugins: 2 loaded"


def test_plugins_json(acme, capsys):
    status, out, _ = run_cli(capsys, "plugins", "--json")
    data = {item["name"]: item for item in json.loads(out)}
    assert status == 0 and set(data) == {"vlsdk", "acme"}
    assert data["acme"]["distribution"] == "acme-vlsdk" and data["acme"]["version"] == "2.0"
    assert data["acme"]["status"] == "loaded" and data["acme"]["error"] is None
    assert data["acme"]["registered"]["experts"] == ["acme.texture"]
    assert "vlsdk_register_experts" in data["acme"]["hooks"]
    assert "traceback" not in data["acme"]


@pytest.mark.vlsdk_entry_points
def test_broken_plugins_are_reported_not_fatal(plugin_host, make_distribution, monkeypatch, capsys):
    make_distribution(
        "vt-cli-boom",
        {"vtcliboom": "vt_cli_boom"},
        {"vt_cli_boom": "raise RuntimeError('cli boom')\n"},
        version="0.3",
    )
    make_distribution(
        "vt-cli-extra",
        {"vtcliextra": "vt_cli_extra"},
        {
            "vt_cli_extra": "from vlsdk.plugins import require_extra\n"
            "require_extra('vtcliextra', 'vlsdk_no_such_module')\n"
        },
    )
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "vtcliboom,vtcliextra")
    status, out, err = run_cli(capsys, "plugins")
    assert status == 0
    assert "vtcliboom  vt-cli-boom 0.3  error" in out
    assert "    error: RuntimeError: cli boom" in out
    assert "vtcliextra  vt-cli-extra 1.0  missing-extra" in out
    assert 'pip install "vlsdk[vtcliextra]"' in out
    assert "medical  vlsdk" in out and "disabled" in out
    assert err.count("vlsdk: warning:") == 1 and "vtcliboom" in err and "cli boom" in err

    status, out, _ = run_cli(capsys, "plugins", "--check", "--verbose")
    assert status == 1 and "Traceback (most recent call last)" in out
    status, out, _ = run_cli(capsys, "experts")
    assert status == 0
    assert "(2 plugin(s) not loaded: vtcliboom, vtcliextra; see `vlsdk plugins`)" in out


@pytest.mark.vlsdk_entry_points
def test_strict_loading_failure_exits_cleanly(plugin_host, make_distribution, monkeypatch, capsys):
    make_distribution(
        "vt-cli-strict",
        {"vtclistrict": "vt_cli_strict"},
        {"vt_cli_strict": "raise RuntimeError('strict boom')\n"},
    )
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "vtclistrict")
    monkeypatch.setenv("VLSDK_STRICT_PLUGINS", "1")
    status, _, err = run_cli(capsys, "plugins")
    assert status == 1
    assert "VLSDK_STRICT_PLUGINS" in err and "RuntimeError: strict boom" in err


@pytest.mark.parametrize(
    ("kind", "name", "obj"),
    [
        ("experts", "acme.texture", "test_cli.make_linear"),
        ("heads", "acme-count", "test_cli.make_linear"),
        ("datasets", "acme.boards", "builtins.list"),
    ],
)
def test_listing_commands(acme, capsys, kind, name, obj):
    status, out, _ = run_cli(capsys, kind)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PLUGIN", "DISTRIBUTION", "OBJECT"]
    (row,) = [line for line in lines if line.startswith(name + " ")]
    assert row.split() == [name, "acme", "acme-vlsdk", "2.0", obj]
    assert lines[-1].startswith("contract: ")

    status, out, _ = run_cli(capsys, kind, "--json")
    rows = {item["name"]: item for item in json.loads(out)}
    assert rows[name]["plugin"] == "acme" and rows[name]["distribution"] == "acme-vlsdk"
    assert rows[name]["version"] == "2.0" and rows[name]["object"] == obj


def test_empty_listing(capsys):
    core_without_datasets = ("vlsdk.plugins.builtin", "vlsdk.cli.builtin")
    with use_host(PluginHost(discover=False, core_modules=core_without_datasets)):
        status, out, _ = run_cli(capsys, "datasets")
    assert status == 0 and "No datasets registered." in out


def test_info(plugin_host, capsys):
    status, out, _ = run_cli(capsys, "info")
    assert status == 0
    assert out.startswith(f"vlsdk {__version__}\npython ")
    assert "\ntorch " in out and "\nnumpy " in out
    assert "\ndevice: " in out
    assert "extras:" in out
    assert "model configs" in out

    status, out, _ = run_cli(capsys, "info", "--json")
    data = json.loads(out)
    assert data["vlsdk"] == __version__
    assert data["device"]["device"] in {"cpu", "cuda", "mps"}
    assert data["plugins"]["vlsdk"] == "loaded"
    assert isinstance(data["models"]["available"], bool)


def test_info_without_model_configs(plugin_host, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vlsdk.models.config", None)  # import fails
    status, out, _ = run_cli(capsys, "info")
    assert status == 0
    assert "model configs: unavailable (" in out


def test_plugin_commands(acme, capsys):
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0
    assert "say hello [plugin 'acme' (acme-vlsdk 2.0)]" in " ".join(out.split())
    assert run_cli(capsys, "hello", "--name", "vlsdk")[:2] == (0, "hello vlsdk\n")
    assert run_cli(capsys, "hello", "--status", "3")[0] == 3

    status, _, err = run_cli(capsys, "explode")
    assert status == 1
    assert "vlsdk explode: error: RuntimeError: acme exploded (command from plugin 'acme'" in err
    assert "Traceback" not in err
    status, _, err = run_cli(capsys, "--traceback", "explode")
    assert status == 1 and "Traceback (most recent call last)" in err


def test_a_command_whose_configure_raises(plugin_host, register_plugin, capsys):
    class BadConfigure:
        @hookimpl
        def vlsdk_register_commands(self, register):
            def configure(parser):
                raise RuntimeError("bad configure")

            register("broken-cmd", lambda args: 0, help="broken", configure=configure)

    register_plugin(BadConfigure(), "vtbadcfg")
    status, out, err = run_cli(capsys, "experts")
    assert status == 0 and "NAME" in out
    assert "broken-cmd" in err and "bad configure" in err
    status, _, err = run_cli(capsys, "broken-cmd")
    assert status == 1 and "command unavailable" in err and "plugin 'vtbadcfg'" in err


def _vlsdk_script() -> Path:
    script = Path(sys.executable).with_name("vlsdk")
    if not script.exists():
        pytest.skip("the vlsdk console script is not installed next to this Python")
    return script


def test_console_script_survives_a_broken_plugin(make_distribution):
    site = make_distribution(
        "vt-script-boom",
        {"vtscriptboom": "vt_script_boom"},
        {"vt_script_boom": "raise RuntimeError('script boom')\n"},
    )
    env = dict(os.environ, PYTHONPATH=str(site), VLSDK_LOAD_PLUGINS="vtscriptboom")
    env.pop("VLSDK_STRICT_PLUGINS", None)
    env.pop("VLSDK_DISABLE_PLUGINS", None)
    proc = subprocess.run(
        [str(_vlsdk_script()), "plugins"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vlsdk  vlsdk" in proc.stdout
    assert "vtscriptboom  vt-script-boom 1.0  error" in proc.stdout
    assert "vlsdk: warning:" in proc.stderr and "script boom" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_dash_m(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vlsdk", "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=dict(os.environ, VLSDK_LOAD_PLUGINS=""),
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, f"vlsdk {__version__}")

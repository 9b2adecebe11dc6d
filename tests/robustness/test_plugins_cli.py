"""The command line and plugins: what loads when, missing extras, replacements, load times.

Plugins here are real distributions (``*.dist-info`` + ``entry_points.txt`` on ``sys.path``, the
``make_distribution`` fixture of tests/conftest.py); the industrial plugin is the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlsdk.cli import main
from vlsdk.plugins import PluginHost, use_host
from vlsdk.version import __version__

#: a plugin whose import leaves a file behind: proof that it was imported
MARKER = """
import os, pathlib
pathlib.Path(os.environ["VT_MARKER"]).write_text("imported")
from vlsdk.plugins import hookimpl

@hookimpl
def vlsdk_register_datasets(register):
    register("vtmarker.points", list)
"""

OWNER = """
from vlsdk.plugins import hookimpl
from torch import nn

@hookimpl
def vlsdk_register_experts(register):
    register("vtowner.linear", nn.Linear)
"""

THIEF = """
from vlsdk.plugins import hookimpl
from torch import nn

@hookimpl
def vlsdk_register_experts(register):
    register("vtowner.linear", nn.Identity, replace=True)
"""


@pytest.fixture
def marker(make_distribution, monkeypatch, tmp_path) -> tuple[Path, Path]:
    """``(site, marker file)``: the plugin ``vtmarker`` writes the file when imported."""
    site = make_distribution("vt-marker", {"vtmarker": "vt_marker"}, {"vt_marker": MARKER})
    path = tmp_path / "imported.txt"
    monkeypatch.setenv("VT_MARKER", str(path))
    return site, path


def test_top_level_help_and_version_load_no_plugin(marker, capsys):
    _, path = marker
    host = PluginHost()  # discovers every installed plugin, vtmarker included
    with use_host(host):
        assert main(["--version"]) == 0
        assert capsys.readouterr().out.strip() == f"vlsdk {__version__}"
        assert main(["--help"]) == 0
        out = capsys.readouterr().out
        assert "plugins" in out and "pcb (industrial)" in " ".join(out.split())
        assert main([]) == 0 and main(["--traceback"]) == 0
        assert not path.exists() and "vt_marker" not in sys.modules
        assert not host.loaded and host._infos == {}, "not even the core plugin was loaded"

        assert main(["plugins", "--help"]) == 0, "a command's --help loads the plugins"
    assert path.read_text() == "imported" and host.loaded


def test_console_script_version_imports_no_plugin(marker):
    site, path = marker
    script = Path(sys.executable).with_name("vlsdk")
    if not script.exists():
        pytest.skip(f"the vlsdk console script is not installed next to {sys.executable}")
    env = dict(os.environ, PYTHONPATH=str(site))
    for argv in (["--version"], ["--help"]):
        proc = subprocess.run(
            [str(script), *argv], check=False, capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert not path.exists(), f"vlsdk {argv[0]} imported a plugin"
    env["VLSDK_LOAD_PLUGINS"] = "vtmarker"
    proc = subprocess.run(
        [str(script), "datasets"], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0 and "vtmarker.points" in proc.stdout, proc.stderr
    assert path.exists()


@pytest.mark.vlsdk_entry_points
def test_command_of_a_plugin_missing_its_extra_names_the_extra(plugin_host, monkeypatch, capsys):
    pytest.importorskip("vlsdk_industrial")
    # the real industrial plugin, imported afresh with its extra's dependency made unimportable
    monkeypatch.setitem(sys.modules, "albumentations", None)
    monkeypatch.delitem(sys.modules, "vlsdk_industrial.plugin", raising=False)
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "industrial")
    assert main(["pcb", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "invalid choice" not in err
    assert "the command 'pcb' comes from plugin 'industrial' (vlsdk " in err
    assert "not loaded (missing-extra)" in err
    assert 'install the \'industrial\' extra: pip install "vlsdk[industrial]"' in err
    assert 'from a checkout: pip install -e ".[industrial]"' in err


@pytest.mark.vlsdk_entry_points
def test_command_named_like_a_missing_third_party_plugin(plugin_host, make_distribution, monkeypatch, capsys):
    make_distribution(
        "acme-vlsdk",
        {"acmescan": "vt_acme_scan"},
        {"vt_acme_scan": "from vlsdk.plugins import require_extra\n"
                         "require_extra('scan', 'vlsdk_no_such_module', distribution='acme-vlsdk')\n"},
    )
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "acmescan")
    assert main(["acmescan"]) == 1
    err = capsys.readouterr().err
    assert "'acmescan' is plugin 'acmescan' (acme-vlsdk 1.0), which is not loaded (missing-extra)" in err
    assert 'pip install "acme-vlsdk[scan]"' in err and 'pip install -e ".[scan]"' in err
    assert main(["no-such-command"]) == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.vlsdk_entry_points
def test_disabled_plugin_command_says_why(plugin_host, monkeypatch, capsys):
    monkeypatch.setenv("VLSDK_DISABLE_PLUGINS", "industrial")
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "")
    assert main(["pcb"]) == 1
    err = capsys.readouterr().err
    assert "the command 'pcb' comes from plugin 'industrial'" in err and "(disabled)" in err


@pytest.fixture
def owner_and_thief(make_distribution, monkeypatch):
    make_distribution("vtowner-dist", {"vtowner": "vt_owner"}, {"vt_owner": OWNER})
    make_distribution("vtthief-dist", {"vtthief": "vt_thief"}, {"vt_thief": THIEF})
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "vtowner,vtthief")


@pytest.mark.vlsdk_entry_points
def test_replacing_another_plugins_entry_without_opt_in_fails(owner_and_thief, plugin_host, capsys):
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert "vtthief  vtthief-dist 1.0  error" in out
    assert "ReplaceNotAllowedError" in out and "VLSDK_ALLOW_REPLACE=vtthief" in out
    assert plugin_host.registry("experts").get("vtowner.linear").plugin == "vtowner"
    assert err.count("vlsdk: warning:") == 1 and "vtthief" in err


@pytest.mark.vlsdk_entry_points
def test_allowed_replacement_is_warned_and_listed(owner_and_thief, plugin_host, monkeypatch, capsys):
    monkeypatch.setenv("VLSDK_ALLOW_REPLACE", "vtthief")
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert "vtthief  vtthief-dist 1.0  loaded" in out
    assert "    replaced: experts 'vtowner.linear' of plugin 'vtowner' (vtowner-dist 1.0)" in out
    assert err.count("vlsdk: warning:") == 1
    assert "plugin 'vtthief' (vtthief-dist 1.0) replaced experts 'vtowner.linear'" in err
    entry = plugin_host.registry("experts").get("vtowner.linear")
    assert entry.plugin == "vtthief"

    assert main(["plugins", "--json"]) == 0
    data = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert data["vtthief"]["replaced"] == [
        {"kind": "experts", "name": "vtowner.linear", "previous": "plugin 'vtowner' (vtowner-dist 1.0)"}
    ]
    assert all(data[name]["load_ms"] >= 0 for name in ("vlsdk", "vtowner", "vtthief"))


@pytest.mark.vlsdk_entry_points
def test_plugins_shows_each_load_time(marker, plugin_host, monkeypatch, capsys):
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "vtmarker")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    times = [line for line in out.splitlines() if line.startswith("    load time: ")]
    assert len(times) == 2, out  # the core and vtmarker; disabled plugins were not loaded
    for line in times:
        assert line.endswith(" ms") or "(slow: over 2 s" in line

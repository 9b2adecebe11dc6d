"""Hostile plugins, installed as real distributions, never take vlsdk down.

Each plugin is a ``*.dist-info`` with an ``entry_points.txt`` on ``sys.path`` (the ``make_distribution``
fixture of tests/conftest.py), so ``importlib.metadata`` discovers it exactly as a pip-installed
one. ``VLSDK_LOAD_PLUGINS`` keeps the domain plugins out of these tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from vlsdk.cli import main
from vlsdk.plugins import PluginHost, VlsdkPluginWarning, get_registry

HEADER = "from vlsdk.plugins import hookimpl\nfrom torch import nn\n"

GOOD = HEADER + """
@hookimpl
def vlsdk_register_experts(register):
    register("vtfine.linear", nn.Linear)
"""

EXIT_AT_IMPORT = "import sys\nsys.exit(3)\n"

#: registers an expert, then raises something that is not an Exception
HOOK_RAISES = HEADER + """
class Hostile(BaseException):
    pass

@hookimpl
def vlsdk_register_experts(register):
    register("vthook.first", nn.Identity)
    raise {raise_}
"""

SLOW = HEADER + """
import time
time.sleep(0.4)

@hookimpl
def vlsdk_register_experts(register):
    register("vtslow.linear", nn.Linear)
"""


def _install(make_distribution, monkeypatch, plugins: dict[str, str]) -> Path:
    """One distribution ``<name>-dist`` 1.0 per plugin (entry point ``name = vt_<name>``)."""
    site = None
    for name, source in plugins.items():
        site = make_distribution(f"{name}-dist", {name: f"vt_{name}"}, {f"vt_{name}": source})
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", ",".join(plugins))
    return site


def _load(host: PluginHost) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host.load()
    return [str(w.message) for w in caught if issubclass(w.category, VlsdkPluginWarning)]


@pytest.mark.vlsdk_entry_points
def test_sys_exit_at_import_is_a_broken_plugin(make_distribution, monkeypatch, plugin_host):
    _install(make_distribution, monkeypatch, {"vtexit": EXIT_AT_IMPORT, "vtfine": GOOD})
    messages = _load(plugin_host)
    assert plugin_host.loaded
    info = plugin_host.plugin_info("vtexit")
    assert info.status == "error" and info.error == "SystemExit: 3"
    assert "sys.exit(3)" in info.traceback
    assert plugin_host.plugin_info("vtfine").status == "loaded"
    assert "vtfine.linear" in get_registry("experts")
    (message,) = messages
    assert "plugin 'vtexit' (vtexit-dist 1.0; entry point vtexit = vt_vtexit)" in message
    assert "SystemExit: 3" in message


@pytest.mark.vlsdk_entry_points
@pytest.mark.parametrize(
    ("raise_", "error"),
    [("SystemExit('bye')", "SystemExit: bye"), ("Hostile('not an Exception')", "Hostile: not an Exception")],
)
def test_base_exception_in_a_hook_is_rolled_back(
    make_distribution, monkeypatch, plugin_host, raise_, error
):
    _install(make_distribution, monkeypatch, {"vthook": HOOK_RAISES.format(raise_=raise_)})
    (message,) = _load(plugin_host)
    info = plugin_host.plugin_info("vthook")
    assert (info.status, info.error, info.registered) == ("error", error, {})
    assert "plugin 'vthook'" in message and error in message
    assert "vthook.first" not in get_registry("experts"), "what it registered is rolled back"
    assert plugin_host.pm.get_plugin("vthook") is None
    assert "plugins" in get_registry("commands"), "the core is untouched"


@pytest.mark.vlsdk_entry_points
def test_keyboard_interrupt_still_stops_loading(make_distribution, monkeypatch, plugin_host):
    _install(make_distribution, monkeypatch, {"vthook": HOOK_RAISES.format(raise_="KeyboardInterrupt")})
    with pytest.raises(KeyboardInterrupt):
        plugin_host.load()
    assert not plugin_host.loaded
    assert "vthook.first" not in plugin_host._registries["experts"], "rolled back before it propagates"
    assert plugin_host.pm.get_plugin("vthook") is None


@pytest.mark.vlsdk_entry_points
def test_strict_mode_reraises_sys_exit_and_the_cli_reports_it(
    make_distribution, monkeypatch, plugin_host, capsys
):
    _install(make_distribution, monkeypatch, {"vtexit": EXIT_AT_IMPORT})
    monkeypatch.setenv("VLSDK_STRICT_PLUGINS", "1")
    assert main(["plugins"]) == 1, "the plugin's SystemExit(3) must not become vlsdk's exit status"
    err = capsys.readouterr().err
    assert "VLSDK_STRICT_PLUGINS" in err and "SystemExit: 3" in err


@pytest.mark.vlsdk_entry_points
def test_slow_plugin_is_warned_with_its_name_and_time(make_distribution, monkeypatch, plugin_host):
    _install(make_distribution, monkeypatch, {"vtslow": SLOW})
    monkeypatch.setenv("VLSDK_SLOW_PLUGIN_SECONDS", "0.2")
    (message,) = _load(plugin_host)
    info = plugin_host.plugin_info("vtslow")
    assert info.status == "loaded" and info.load_ms >= 400
    assert f"plugin 'vtslow' (vtslow-dist 1.0) is slow to load: {info.load_ms / 1000:.2f} s" in message
    assert "VLSDK_SLOW_PLUGIN_SECONDS" in message and "VLSDK_DISABLE_PLUGINS=vtslow" in message


@pytest.mark.vlsdk_entry_points
def test_a_bad_slow_switch_is_named_once_and_loading_goes_on(
    make_distribution, monkeypatch, plugin_host
):
    _install(make_distribution, monkeypatch, {"vtfine": GOOD, "vtslow": SLOW})
    monkeypatch.setenv("VLSDK_SLOW_PLUGIN_SECONDS", "soon")
    (message,) = _load(plugin_host)
    assert message == "VLSDK_SLOW_PLUGIN_SECONDS: expected a number of seconds >= 0, got 'soon'; using 2 s"
    statuses = {i.name: i.status for i in plugin_host.plugin_infos()}
    assert statuses["vtfine"] == statuses["vtslow"] == statuses["vlsdk"] == "loaded"


def test_console_script_survives_sys_exit_in_a_plugin(make_distribution, monkeypatch):
    site = _install(make_distribution, monkeypatch, {"vtexit": EXIT_AT_IMPORT, "vtfine": GOOD})
    script = Path(sys.executable).with_name("vlsdk")
    if not script.exists():
        pytest.skip(f"the vlsdk console script is not installed next to {sys.executable}")
    env = dict(os.environ, PYTHONPATH=str(site), VLSDK_LOAD_PLUGINS="vtexit,vtfine")
    proc = subprocess.run(
        [str(script), "plugins"], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "vtexit  vtexit-dist 1.0  error" in proc.stdout
    assert "    error: SystemExit: 3" in proc.stdout
    assert "vtfine  vtfine-dist 1.0  loaded" in proc.stdout
    assert proc.stderr.count("vlsdk: warning:") == 1 and "SystemExit: 3" in proc.stderr
    assert "Traceback" not in proc.stderr

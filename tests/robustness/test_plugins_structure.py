"""The plugin host is a leaf: it imports neither the command line nor training, and the core
plugin is a tuple of modules imported by name (``CORE_PLUGIN_MODULES``), all attributed to ``vlsdk``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import vlsdk.plugins
from vlsdk.plugins import PluginHost, VlsdkPluginWarning
from vlsdk.plugins.manager import CORE_PLUGIN_MODULES

PLUGINS_DIR = Path(vlsdk.plugins.__file__).parent
FORBIDDEN = ("vlsdk.cli", "vlsdk.train")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` statement of ``path`` names, at any depth (functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_plugins_package_imports_no_cli_and_no_train():
    files = sorted(PLUGINS_DIR.glob("*.py"))
    assert len(files) >= 5
    bad = [
        f"{path.name}:{line} imports {name}"
        for path in files
        for line, name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert bad == []


def test_loading_the_core_plugin_leaves_cli_to_importlib():
    code = (
        "import sys\n"
        "from vlsdk.plugins import PluginHost, get_registry, build_expert\n"
        "print(sorted(m for m in sys.modules if m.startswith(('vlsdk.cli', 'vlsdk.train'))))\n"
        "host = PluginHost(discover=False, core_modules=('vlsdk.plugins.builtin',))\n"
        "print(sorted(host.registry('heads')), 'vlsdk.cli' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "['depth', 'detection', 'segmentation'] False"]


def test_core_plugin_modules_include_the_cli_commands():
    assert CORE_PLUGIN_MODULES[:2] == ("vlsdk.plugins.builtin", "vlsdk.cli.builtin")
    host = PluginHost(discover=False)
    entry = host.registry("commands").get("plugins")
    assert (entry.plugin, entry.distribution) == ("vlsdk", "vlsdk")
    assert host.plugin_info("vlsdk").status == "loaded"
    assert "vlsdk_register_commands" in host.plugin_info("vlsdk").hooks


@pytest.fixture
def core_modules(tmp_path, monkeypatch):
    """``write(name, source)``: a real module on ``sys.path``, removed from sys.modules after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


DATASETS_A = """
    from vlsdk.plugins import hookimpl

    @hookimpl
    def vlsdk_register_datasets(register):
        register("vt_a_points", list)
"""

DATASETS_B = """
    from vlsdk.plugins import hookimpl

    @hookimpl
    def vlsdk_register_datasets(register):
        register("vt_b_points", tuple)

    @hookimpl
    def vlsdk_register_metrics(register):
        register("vt_b.count", len)
"""


def test_two_core_modules_implement_the_same_hook(core_modules):
    a = core_modules("vt_core_a", DATASETS_A)
    b = core_modules("vt_core_b", DATASETS_B)
    host = PluginHost(discover=False, core_modules=(a, "vt_core_absent", "vt_core_pkg.absent", b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # absent modules are skipped silently
        host.load()
    datasets = host.registry("datasets")
    assert {datasets.get(n).plugin for n in ("vt_a_points", "vt_b_points")} == {"vlsdk"}
    info = host.plugin_info("vlsdk")
    assert sorted(info.registered["datasets"]) == ["vt_a_points", "vt_b_points"]
    assert info.hooks == ("vlsdk_register_datasets", "vlsdk_register_metrics")
    assert host.registry("metrics").get("vt_b.count").plugin == "vlsdk"


def test_a_broken_core_module_is_skipped_the_others_stay(core_modules, monkeypatch):
    a = core_modules("vt_core_a", DATASETS_A)
    broken_import = core_modules("vt_core_missing_dep", "import vt_no_such_dependency\n")
    broken_hook = core_modules(
        "vt_core_hook",
        """
        from vlsdk.plugins import hookimpl

        @hookimpl
        def vlsdk_register_datasets(register):
            register("vt_hook_points", set)
            raise SystemExit("core hook gave up")
        """,
    )
    host = PluginHost(discover=False, core_modules=(broken_import, a, broken_hook))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host.load()
    messages = [str(w.message) for w in caught if issubclass(w.category, VlsdkPluginWarning)]
    assert len(messages) == 2
    assert "core plugin module vt_core_missing_dep failed to load" in messages[0]
    assert "vt_no_such_dependency" in messages[0]
    assert "vt_core_hook failed to load and was skipped: SystemExit: core hook gave up" in messages[1]
    assert sorted(host.registry("datasets")) == ["vt_a_points"], "the failing hook is rolled back"
    assert host.plugin_info("vlsdk").status == "loaded"
    assert host.pm.get_plugin("vt_core_hook") is None

    monkeypatch.setenv("VLSDK_STRICT_PLUGINS", "1")
    with pytest.raises(ModuleNotFoundError, match="vt_no_such_dependency"):
        PluginHost(discover=False, core_modules=(broken_import, a)).load()

"""Entry-point discovery with a really installed third-party plugin (examples/custom_expert_plugin).

The module fixture ``pip install``s a copy of the example into this interpreter's environment and
uninstalls it afterwards, so these tests exercise exactly what a user's ``pip install`` does.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlsdk.plugins.manager import PluginHost, use_host

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_expert_plugin"
DIST = "vlsdk-example-plugin"
PACKAGE = "vlsdk_example_plugin"


def _pip(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)


def _forget_example_modules() -> None:
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _installed() -> bool:
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory) -> str:
    """Install the example plugin from a copy (no build files land in the repository).

    If it is already installed (``pip install -e examples/custom_expert_plugin``), that install
    is used and left in place. Yields the directory the installed plugin was built from.
    """
    if _installed():
        yield str(EXAMPLE)
        return
    source = tmp_path_factory.mktemp("example") / "custom_expert_plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache"))
    result = _pip("install", "--no-deps", "--no-build-isolation", "-q", str(source))
    if result.returncode != 0:
        pytest.fail(f"pip install {source} failed (needs setuptools>=68 in this environment):\n"
                    f"{result.stdout}\n{result.stderr}")
    _forget_example_modules()
    try:
        yield str(source)
    finally:
        result = _pip("uninstall", "-y", "-q", DIST)
        _forget_example_modules()
        assert result.returncode == 0, result.stderr
        assert not _installed()


@pytest.fixture(autouse=True)
def _default_switches(monkeypatch):
    """The user's plugin switches must not decide what these tests see."""
    for variable in ("VLSDK_LOAD_PLUGINS", "VLSDK_DISABLE_PLUGINS", "VLSDK_STRICT_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)


def _vlmodel():
    try:
        from vlsdk import VLModel, get_config
    except ImportError as exc:
        pytest.skip(f"vlsdk.VLModel is not importable yet: {exc}")
    return VLModel, get_config


def test_entry_point_is_discovered(example_installed):
    eps = importlib.metadata.entry_points(group="vlsdk.plugins")
    assert "vlsdk_example_plugin.plugin" in [ep.value for ep in eps if ep.name == "example"]

    host = PluginHost()
    host.load()
    info = host.plugin_info("example")
    assert info.status == "loaded", info.error
    assert (info.distribution, info.version) == (DIST, "0.1.0")
    assert info.entry_point == "vlsdk_example_plugin.plugin"
    assert set(info.hooks) >= {"vlsdk_register_experts", "vlsdk_register_datasets"}
    assert info.registered["experts"] == ("example.gated_mlp",)
    assert info.registered["datasets"] == ("example.checkerboard",)
    entry = host.registry("experts").get("example.gated_mlp")
    assert (entry.plugin, entry.distribution) == ("example", DIST)


def test_builds_the_expert_and_the_dataset(example_installed):
    host = PluginHost()
    expert = host.build_expert("example.gated_mlp", 24, hidden=12)
    assert type(expert).__module__ == "vlsdk_example_plugin.experts"
    x = torch.randn(7, 24)
    assert expert(x).shape == (7, 24)
    dataset = host.registry("datasets").get("example.checkerboard").obj(length=3, image_size=16)
    sample = dataset[0]
    assert sample["image"].shape == (3, 16, 16) and sample["label"] in (0, 1)


def test_switches_apply_to_the_installed_plugin(example_installed, monkeypatch):
    monkeypatch.setenv("VLSDK_DISABLE_PLUGINS", "example")
    host = PluginHost()
    host.load()
    assert host.plugin_info("example").status == "disabled"
    assert "example.gated_mlp" not in host.registry("experts")


def test_model_round_trip_with_the_plugin_expert(example_installed, tmp_path):
    VLModel, get_config = _vlmodel()
    with use_host(PluginHost()):
        torch.manual_seed(0)
        model = VLModel(get_config("tiny"))
        # a positive router bias so the new expert really receives tokens
        model.add_expert("example.gated_mlp", init_bias=5.0, hidden=32)
        model.eval()
        images = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            before = model(images)
        for stats in before.features.router_stats:
            slot = stats.expert_names.index("example.gated_mlp")
            assert int(stats.tokens_per_expert[slot]) > 0
        model.save_pretrained(tmp_path / "ckpt")
        loaded = VLModel.from_pretrained(tmp_path / "ckpt").eval()
        with torch.no_grad():
            after = loaded(images)
    assert "example.gated_mlp" in loaded.expert_names
    torch.testing.assert_close(after.features.tokens, before.features.tokens, rtol=0, atol=0)
    for stride, fmap in before.features.pyramid.items():
        torch.testing.assert_close(after.features.pyramid[stride], fmap, rtol=0, atol=0)


def test_example_plugin_own_tests_pass(example_installed):
    """The copy-me package's own test suite passes against the installed plugin."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        check=False, cwd=example_installed, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]

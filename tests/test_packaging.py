"""The wheel, installed without extras into a clean venv: the core works, domains say how to enable them.

Slow (about a minute and a half, most of it installing torch into the new venv); skip with
``-m "not slow"``. Needs pip access to torch (``VLSDK_TORCH_SPEC``, default ``torch==2.13.0``) and to
numpy, pluggy, safetensors and tqdm.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("medical", "driving", "industrial")
EXTRA_MODULES = ("monai", "pydicom", "nibabel", "nuscenes", "albumentations", "peft", "onnx")
PACKAGES = ("vlsdk", "vlsdk_medical", "vlsdk_driving", "vlsdk_industrial")
# Not part of the source tree the wheel is built from (virtualenvs, caches, build output).
IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                ".pytest_cache", ".ruff_cache", "out", ".pack", ".whl", "vlsdk-report*")


def _run(cmd: list[str], *, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "VLSDK_LOAD_PLUGINS", "VLSDK_DISABLE_PLUGINS",
                        "VLSDK_STRICT_PLUGINS")}
    return subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, timeout=timeout,
                          env=env, **kwargs)


def _ok(cmd: list[str], **kwargs) -> str:
    result = _run(cmd, **kwargs)
    assert result.returncode == 0, (f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the project's wheel from a copy of the source tree (no build files in the repo)."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    _ok([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp / "dist", source])
    wheels = sorted((tmp / "dist").glob("vlsdk-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def clean_venv(wheel, tmp_path_factory) -> Path:
    """A new venv with torch, then the wheel without extras. Returns its bin directory."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    _ok([sys.executable, "-m", "venv", venv])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    pip = [python, "-m", "pip", "--disable-pip-version-check", "install", "-q", "--progress-bar", "off"]
    _ok([*pip, os.environ.get("VLSDK_TORCH_SPEC", "torch==2.13.0")])
    _ok([*pip, wheel])
    return bindir


def test_wheel_holds_only_the_packages(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    dist_info = [n for n in names if n.split("/")[0].endswith(".dist-info")]
    code = [n for n in names if n not in dist_info]
    assert {n.split("/")[0] for n in code} == set(PACKAGES)
    assert not [n for n in names if ".data/" in n.split("/")[0] + "/"], "wheel has a .data directory"
    strays = [n for n in code if not n.endswith((".py", "py.typed"))]
    assert not strays, f"data files in the wheel: {strays}"
    tests = [n for n in names if "tests" in n.split("/") or n.rsplit("/", 1)[-1].startswith("test_")]
    assert not tests, f"tests in the wheel: {tests}"
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names
    for domain in DOMAINS:
        assert f"vlsdk_{domain}/plugin.py" in names and f"vlsdk_{domain}/experts.py" in names


def test_wheel_metadata_extras_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as zf:
        dist_info = next(n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert extras >= {"medical", "driving", "industrial", "lora", "export", "all", "dev"}, extras
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("torch") and "extra" not in r for r in requires), requires
    assert any(r.startswith("monai") and 'extra == "medical"' in r for r in requires), requires
    assert "[vlsdk.plugins]" in entry_points
    for domain in DOMAINS:
        assert f"{domain} = vlsdk_{domain}.plugin" in entry_points
    assert "vlsdk = vlsdk.cli:main" in entry_points


def test_core_without_extras(clean_venv):
    python = clean_venv / "python"
    probe = ("import importlib.util, json; "
             f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {EXTRA_MODULES!r}}}))")
    present = json.loads(_ok([python, "-c", probe]))
    assert not any(present.values()), f"extras leaked into a no-extras install: {present}"
    out = _ok([python, "-c", "import vlsdk, vlsdk.plugins; print(vlsdk.__version__, vlsdk.__file__)"])
    _, location = out.split()
    assert Path(location).resolve().is_relative_to(clean_venv.parent.resolve()), location  # not the repo


def test_cli_lists_domains_as_unavailable_with_hints(clean_venv):
    vlsdk = clean_venv / "vlsdk"
    result = _run([vlsdk, "plugins"])
    assert result.returncode == 0, result.stdout + result.stderr
    blocks: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line and not line.startswith(" "):
            current = line.split()[0]
            blocks[current] = line
        elif blocks:
            blocks[current] += "\n" + line
    for domain in DOMAINS:
        assert domain in blocks, result.stdout
        assert "loaded" not in blocks[domain].splitlines()[0], blocks[domain]
        assert f'pip install "vlsdk[{domain}]"' in blocks[domain], blocks[domain]

    infos = {i["name"]: i for i in json.loads(_ok([vlsdk, "plugins", "--json"]))}
    for domain in DOMAINS:
        assert infos[domain]["status"] == "missing-extra", infos[domain]
        assert infos[domain]["hint"] == f'pip install "vlsdk[{domain}]"'
    assert infos["vlsdk"]["status"] == "loaded"
    # A missing extra is not an error: --check still passes.
    assert _run([vlsdk, "plugins", "--check"]).returncode == 0

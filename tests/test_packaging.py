"""Packaging: the wheel's contents and metadata, every direct import declared, the README's install
lines, the licence and changelog, and the wheel installed without extras next to numpy 2.

The wheel is built once per module from a copy of the source tree (about 15 s). The clean-venv tests
are slow (a minute or more, most of it installing torch); skip them with ``-m "not slow"``. They need
pip access to torch (``VLSDK_TORCH_SPEC``, default ``torch==2.13.0``: a CPU build where pip's
configuration offers one), numpy 2, pluggy, safetensors, tqdm and pyyaml.
"""

from __future__ import annotations

import ast
import email
import email.message
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("medical", "driving", "industrial")
EXTRA_MODULES = ("monai", "pydicom", "highdicom", "nibabel", "nuscenes", "albumentations", "cv2", "peft",
                 "onnx", "matplotlib")
PACKAGES = ("vlsdk", "vlsdk_medical", "vlsdk_driving", "vlsdk_industrial")
# Not part of the source tree the wheel is built from (virtualenvs, caches, build output).
IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                ".pytest_cache", ".ruff_cache", "out", ".pack", ".whl", "vlsdk-report*")
#: Core modules loaded only by a tool that brings its own import: ``vlsdk.testing`` is a pytest plugin.
OPT_IN_MODULES = {"vlsdk/testing.py": {"pytest"}, "vlsdk/train/loggers.py": {"mlflow"}}  # mlflow: the user installs it


def _run(cmd: list[str], *, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
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
def source(tmp_path_factory) -> Path:
    """A copy of the source tree, as a fresh clone has it (no venv, no build output)."""
    source = tmp_path_factory.mktemp("packaging") / "src"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    return source


@pytest.fixture(scope="module")
def wheel(source) -> Path:
    """The project's wheel, built into ``dist/`` of the copied tree (where ``python -m build`` puts it)."""
    _ok([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", source / "dist", source])
    wheels = sorted((source / "dist").glob("vlsdk-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def metadata(wheel) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name))


def _requirements(metadata: email.message.Message) -> dict[str, list[Requirement]]:
    """Requires-Dist by extra (``""``: the core)."""
    by_extra: dict[str, list[Requirement]] = {}
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        extra = re.search(r'extra == "([^"]+)"', str(req.marker)) if req.marker else None
        by_extra.setdefault(extra.group(1) if extra else "", []).append(req)
    return by_extra


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
    assert "vlsdk/py.typed" in names, "PEP 561 marker missing: type checkers would ignore vlsdk's hints"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in dist_info), dist_info


def test_wheel_metadata_extras_and_entry_points(wheel, metadata):
    with zipfile.ZipFile(wheel) as zf:
        dist_info = next(n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert extras >= {"medical", "driving", "industrial", "lora", "export", "plot", "all", "dev"}, extras
    requires = _requirements(metadata)
    assert {r.name for r in requires[""]} == {"torch", "numpy", "pluggy", "safetensors", "tqdm", "pyyaml"}
    assert "highdicom" in {r.name for r in requires["medical"]}, requires["medical"]
    assert "[vlsdk.plugins]" in entry_points
    for domain in DOMAINS:
        assert f"{domain} = vlsdk_{domain}.plugin" in entry_points
    assert "vlsdk = vlsdk.cli:main" in entry_points


def test_metadata_licence_classifiers_and_urls(metadata):
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.10"
    classifiers = set(metadata.get_all("Classifier") or [])
    expected = {"Development Status :: 3 - Alpha", "Operating System :: OS Independent",
                "Topic :: Scientific/Engineering :: Image Recognition",
                "Topic :: Scientific/Engineering :: Medical Science Apps.", "Typing :: Typed",
                *(f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12))}
    assert expected <= classifiers, sorted(expected - classifiers)
    # PEP 639: the licence is the SPDX expression; a "License ::" classifier beside it is an error.
    assert not [c for c in classifiers if c.startswith("License ::")], classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Issues"}, urls
    assert all(u.startswith("https://") for u in urls.values()), urls


def test_numpy_2_allowed_except_by_driving(metadata):
    """nuscenes-devkit needs numpy < 2: the cap lives in the driving extra, not in the core."""
    caps = {extra: [r for r in reqs if r.name == "numpy" and not r.specifier.contains("2.1.0")]
            for extra, reqs in _requirements(metadata).items()}
    assert {extra for extra, capped in caps.items() if capped} == {"driving"}, caps
    core_numpy = [r for r in _requirements(metadata)[""] if r.name == "numpy"]
    assert core_numpy and core_numpy[0].specifier.contains("2.1.0"), core_numpy


def test_licence_file_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    for marker in ("Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION",
                   "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert marker in text, marker
    assert re.search(r"Copyright \d{4} the vlsdk authors", text)


def test_changelog_has_unreleased_and_this_version(metadata):
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert headings and headings[0] == "Unreleased", headings
    assert metadata["Version"] in headings, f"CHANGELOG.md has no section for {metadata['Version']}: {headings}"
    for heading in headings:  # Keep a Changelog: every section links to its diff or tag
        assert re.search(rf"^\[{re.escape(heading)}\]: https://", text, flags=re.M), heading


class _Imports(ast.NodeVisitor):
    """Top-level names of absolute imports, each with whether it runs only on demand.

    On demand: inside a function, or in a ``try`` that catches ImportError. Imports under
    ``if TYPE_CHECKING:`` never run and are left out.
    """

    def __init__(self) -> None:
        self.found: list[tuple[str, int, bool]] = []
        self._lazy = 0

    def _lazily(self, nodes: list[ast.stmt]) -> None:
        self._lazy += 1
        for node in nodes:
            self.visit(node)
        self._lazy -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._lazily(node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        caught = " ".join(ast.unparse(h.type) for h in node.handlers if h.type is not None)
        if "ImportError" in caught or "ModuleNotFoundError" in caught:
            self._lazily(node.body)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name.split(".")[0], node.lineno, self._lazy > 0) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.found.append((node.module.split(".")[0], node.lineno, self._lazy > 0))


def test_direct_imports_are_declared(metadata):
    """Each third-party import is declared where it is imported, never left to a transitive dependency.

    A core module's import that runs with the module is a core dependency; one made on demand is in
    an extra (or the core). A domain plugin's imports are in its extra (or the core).
    """
    requires = {extra: {canonicalize_name(r.name) for r in reqs} for extra, reqs in _requirements(metadata).items()}
    core = requires[""]
    any_extra = set().union(*(names for extra, names in requires.items() if extra))
    providers = importlib.metadata.packages_distributions()
    first_party = set(PACKAGES)
    trees = [(ROOT / "core" / "vlsdk", None), *((ROOT / "plugins" / d / f"vlsdk_{d}", d) for d in DOMAINS)]
    problems, unknown = [], []
    for tree, domain in trees:
        for path in sorted(tree.rglob("*.py")):
            visitor = _Imports()
            visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
            where = path.relative_to(tree.parent).as_posix()
            for name, line, lazy in visitor.found:
                if name in sys.stdlib_module_names or name in first_party or name in OPT_IN_MODULES.get(where, ()):
                    continue
                dists = {canonicalize_name(d) for d in providers.get(name, [])}
                if not dists:
                    unknown.append(f"{where}:{line} imports {name}")
                    continue
                allowed = core | requires.get(domain, set()) if domain else (core | any_extra if lazy else core)
                if not dists & allowed:
                    scope = f"the {domain!r} extra" if domain else ("an extra" if lazy else "the core dependencies")
                    problems.append(f"{where}:{line} imports {name} ({', '.join(sorted(dists))}), not in {scope}")
    assert not unknown, ("imports of packages not installed here (cannot tell their distribution):\n"
                         + "\n".join(unknown))
    assert not problems, "undeclared direct imports:\n" + "\n".join(problems)


def _readme_install_lines() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Install one domain", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, "no bash block in the README's 'Install one domain' section"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [words for words in lines if words[:2] == ["pip", "install"]]


def test_readme_install_lines_install(source, wheel):
    """Every ``pip install`` line of "Install one domain" installs vlsdk with the extra it names, run
    in a fresh checkout that holds the built wheel in ``dist/`` (offline: no index, no dependencies)."""
    lines = _readme_install_lines()
    assert lines, "no pip install line in the README's 'Install one domain' section"
    for i, words in enumerate(lines):
        targets = [w for w in words[2:] if not w.startswith("-")]
        assert len(targets) == 1, words
        target, extras = re.fullmatch(r"(.+?)(?:\[([^\]]*)\])?", targets[0]).groups()
        assert target not in ("vlsdk", "vlsdk[all]"), f"{' '.join(words)}: vlsdk is on no package index"
        assert (source / target).exists(), (f"README line `{' '.join(words)}` names {target}, which a checkout "
                                            f"does not have; the build made {wheel.relative_to(source)}")
        report = source.parent / f"report-{i}.json"
        _ok([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", "--no-build-isolation",
             "--quiet", "--report", report, *words[2:]], cwd=source)
        installs = json.loads(report.read_text())["install"]
        assert [item["metadata"]["name"] for item in installs] == ["vlsdk"], installs
        wanted = set(filter(None, (extras or "").split(",")))
        assert set(installs[0].get("requested_extras") or []) == wanted, installs[0]
        assert wanted <= set(installs[0]["metadata"].get("provides_extra", [])), installs[0]["metadata"]


@pytest.fixture(scope="module")
def clean_venv(wheel, tmp_path_factory) -> Path:
    """A new venv with torch, numpy 2 and the wheel without extras. Returns its bin directory.

    The venv has no pip of its own: this interpreter's pip installs into it (``--python``), and
    nothing is byte-compiled, which roughly halves the time torch takes to install.
    """
    venv = tmp_path_factory.mktemp("venv") / "env"
    _ok([sys.executable, "-m", "venv", "--without-pip", venv])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    torch_spec = os.environ.get("VLSDK_TORCH_SPEC", "torch==2.13.0")
    _ok([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", bindir / "python", "install",
         "-q", "--progress-bar", "off", "--no-compile", torch_spec, "numpy>=2", wheel])
    return bindir


@pytest.mark.slow
def test_core_without_extras_next_to_numpy_2(clean_venv):
    python = clean_venv / "python"
    probe = ("import importlib.util, json, numpy, torch; "
             f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {EXTRA_MODULES!r}}})); "
             "print(numpy.__version__, torch.version.cuda)")
    extras_line, versions = _ok([python, "-c", probe]).splitlines()
    present = json.loads(extras_line)
    assert not any(present.values()), f"extras leaked into a no-extras install: {present}"
    numpy_version, cuda = versions.split()
    assert numpy_version.startswith("2."), numpy_version
    if "VLSDK_TORCH_SPEC" not in os.environ:
        assert cuda == "None", f"pip pulled a CUDA build of torch (CUDA {cuda}) for torch==2.13.0"
    build = "import vlsdk; m = vlsdk.VLModel('tiny', in_chans=1); print(vlsdk.__version__, vlsdk.__file__)"
    out = _ok([python, "-c", build])
    version, location = out.split()
    assert Path(location).resolve().is_relative_to(clean_venv.parent.resolve()), location  # not the repo
    assert _ok([clean_venv / "vlsdk", "--version"]).strip() == f"vlsdk {version}"


@pytest.mark.slow
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
        assert infos[domain]["hint"] == f'pip install "vlsdk[{domain}]" (from a checkout: pip install -e ".[{domain}]")'
    assert infos["vlsdk"]["status"] == "loaded"
    # A missing extra is not an error: --check still passes.
    assert _run([vlsdk, "plugins", "--check"]).returncode == 0

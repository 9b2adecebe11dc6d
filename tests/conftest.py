"""Shared test setup: vlsdk's own pytest plugin, and installed-looking plugin distributions."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

# The MoE's Triton kernels (vlsdk.models.moe_kernels) run in Triton's CPU interpreter where there is
# no GPU; Triton reads the switch when it is first imported, so it is set before any test imports it.
if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["vlsdk.testing"]


@pytest.fixture
def make_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Path]]:
    """``make_distribution(name, entry_points, modules, version="1.0")``: a really installed dist.

    Writes ``<name>-<version>.dist-info`` (``METADATA`` and ``entry_points.txt`` declaring
    ``entry_points`` in the ``vlsdk.plugins`` group) and the ``modules`` (name -> source) into a
    temporary site directory on ``sys.path``, so ``importlib.metadata.entry_points`` discovers
    them. The modules are removed from ``sys.modules`` afterwards.
    """
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules_made: list[str] = []

    def make(
        name: str,
        entry_points: dict[str, str],
        modules: dict[str, str] | None = None,
        version: str = "1.0",
    ) -> Path:
        for module, source in (modules or {}).items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            modules_made.append(module)
        dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (dist_info / "entry_points.txt").write_text(f"[vlsdk.plugins]\n{lines}")
        importlib.invalidate_caches()
        return site

    yield make
    for module in modules_made:
        sys.modules.pop(module, None)


@pytest.fixture(autouse=True)
def _single_thread_torch() -> Iterator[None]:
    """Run each test with one torch thread (restored after).

    The suite's tensors are small; on a 2-core runner two OpenMP threads mostly wait on each other
    (measured: the driving suite went from 86 s to 16 s under load). Benchmarks choose their own.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: The real data sets (see ../shared/data/README.md); never copied into the project.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; the test skips, naming the folder, when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (CI always has it)")
    return SHARED_DATA

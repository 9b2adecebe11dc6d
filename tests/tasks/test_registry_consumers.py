"""Every registry kind has a consumer: a code path that looks entries up by name (a listing does not count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vlsdk.plugins.manager import KINDS
from vlsdk.plugins.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
#: Where lookups may live: the core and the plugins, minus the host itself and the listing commands.
SOURCES = [p for base in ("core/vlsdk", "plugins") for p in (ROOT / base).rglob("*.py")
           if "plugins/__" not in str(p) and "core/vlsdk/plugins/" not in str(p)
           and p.name != "commands.py"]
LOOKUPS = {"get_registry", "registry", "build", "get_entry", "task_registry"}


def _consumed_kinds() -> dict[str, list[str]]:
    """kind -> the ``file:line`` of each call ``get_registry("kind")``, ``host.registry("kind")``, ``build("kind", ...)``."""
    found: dict[str, list[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            first = node.args[0]
            if name in LOOKUPS and isinstance(first, ast.Constant) and first.value in KINDS:
                found.setdefault(first.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_registry_kind_is_looked_up_by_name_somewhere():
    found = _consumed_kinds()
    missing = [kind for kind in KINDS if kind not in found]
    assert not missing, f"registry kinds nothing looks up (filled but never consumed): {missing}"


def test_a_config_task_looks_up_datasets_transforms_metrics_synthesizers_experts_and_heads(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The composition kinds are looked up at run time by one config-only task, not just named in code."""
    from vlsdk.cli.main import main
    from vlsdk.plugins import get_registry

    from .conftest import write_coco

    seen: set[str] = set()
    original = Registry.get

    def spy(self: Registry, name: str):
        seen.add(self.kind)
        return original(self, name)

    monkeypatch.setattr(Registry, "get", spy)
    get_registry("synthesizers").get("industrial.boards")  # the industrial plugin is installed in CI
    seen.clear()
    from vlsdk_industrial.samples import DEEPPCB_CLASSES

    data = write_coco(tmp_path / "coco", classes=DEEPPCB_CLASSES)  # the synthetic boards' classes
    config = tmp_path / "task.yaml"
    config.write_text("task: detection\ndataset: {name: coco, annotations: annotations.json}\n"
                      "experts: [industrial.pcb_defect]\nsynthesizer: industrial.boards\n"
                      "synthetic_pretrain_steps: 1\nchannels: 1\nsynthetic_ratio: 4\n")
    status = main(["train", str(config), f"data={data}", f"out={tmp_path / 'run'}", "--quick", "device=cpu",
                   "max_steps=1", "draw=0"])
    assert status == 0
    assert {"tasks", "datasets", "transforms", "metrics", "synthesizers", "experts", "heads"} <= seen, seen

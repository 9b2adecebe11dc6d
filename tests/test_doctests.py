"""The docstring examples of vlsdk's public modules run as doctests.

Covered: the public top-level modules (:data:`TOP_LEVEL`; the lazily exported names of ``vlsdk``
live in ``models`` and ``plugins``) and every module of the public packages in :data:`PACKAGES`.
A module whose examples need an extra that is not installed is skipped, naming the extra; an
example that cannot run in a test (a GPU, a trained model, files it does not make) carries
``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

#: Public packages whose modules are all collected (submodules included).
PACKAGES = ("models", "heads", "plugins", "train", "export", "quant", "inspect", "ops", "tasks", "data", "metrics",
            "report")
#: Public top-level modules (``vlsdk`` itself holds the lazily exported names' overview).
TOP_LEVEL = ("vlsdk", "vlsdk.settings", "vlsdk.predict", "vlsdk.demo")

#: Module-name prefix -> (extra, the import names that extra provides and the module's examples use).
NEEDS_EXTRA = {
    "vlsdk.export": ("export", ("onnx", "onnxruntime")),
    "vlsdk.train.lora": ("lora", ("peft",)),
    "vlsdk.models.hf_text": ("lora", ("transformers",)),
    "vlsdk.inspect.plots": ("plot", ("matplotlib",)),
    "vlsdk.train.log": ("plot", ("matplotlib",)),
}

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public_modules() -> list[str]:
    """:data:`TOP_LEVEL` and every module of :data:`PACKAGES`, found without importing them."""
    names = list(TOP_LEVEL)
    for package in PACKAGES:
        name = f"vlsdk.{package}"
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"{name} is not a package"
        names.append(name)
        names += sorted(m.name for m in pkgutil.walk_packages(spec.submodule_search_locations, f"{name}."))
    return names


def _has_examples(module: str) -> bool:
    origin = importlib.util.find_spec(module).origin
    return origin is not None and ">>>" in Path(origin).read_text(encoding="utf-8")


def _missing_extra(module: str) -> str | None:
    for prefix, (extra, imports) in NEEDS_EXTRA.items():
        if module == prefix or module.startswith(prefix + "."):
            missing = [m for m in imports if importlib.util.find_spec(m) is None]
            if missing:
                return f'{module} needs the "{extra}" extra ({", ".join(missing)} not installed)'
    return None


MODULES = _public_modules()
WITH_EXAMPLES = [m for m in MODULES if _has_examples(m)]


def test_collection_finds_the_public_api() -> None:
    """The walk really reaches the modules the lazy exports point at (a broken walk tests nothing)."""
    import vlsdk

    targets = {vlsdk._EXPORTS[name] for name in vlsdk.__all__ if name != "__version__"}
    assert targets <= set(MODULES), sorted(targets - set(MODULES))


def test_examples_are_collected() -> None:
    """Not every module has examples, but the public API does: an empty run would test nothing."""
    assert {"vlsdk", "vlsdk.models.model", "vlsdk.models.config", "vlsdk.plugins.registry"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = _missing_extra(name)
    if reason:
        pytest.skip(reason)
    module = importlib.import_module(name)
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report: list[str] = []
    tests = finder.find(module, name)
    assert any(t.examples for t in tests), f"{name} has '>>>' in its source but doctest found no examples in it"
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, (f"{runner.failures} of {runner.tries} docstring examples in {name} failed:\n"
                                  + "".join(report))

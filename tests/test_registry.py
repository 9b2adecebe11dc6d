"""Registry semantics and the errors that teach: duplicates, misses, bad names, missing extras."""

from __future__ import annotations

import pickle
import sys
from dataclasses import FrozenInstanceError

import pytest

from vlsdk.plugins import (
    DuplicateNameError,
    MissingExtraError,
    Registrar,
    Registry,
    UnknownNameError,
    require_extra,
)
from vlsdk.plugins.commands import Command, CommandRegistrar


def _callable_only(obj):
    return None if callable(obj) else f"expected a callable, got {type(obj).__name__}"


@pytest.fixture
def reg() -> Registry:
    return Registry("metrics", "factory(**options) -> metric", validate=_callable_only)


def factory_a():
    return "a"


def factory_b():
    return "b"


def test_register_get_and_container_protocol(reg):
    entry = reg.register(
        "acc",
        factory_a,
        plugin="p",
        distribution="dist-p",
        version="1.2",
        metadata={"higher_is_better": True},
    )
    reg.register("dice", factory_b)
    assert reg.get("acc") is entry
    assert (entry.name, entry.obj, entry.plugin, entry.distribution, entry.version) == (
        "acc",
        factory_a,
        "p",
        "dist-p",
        "1.2",
    )
    assert entry.metadata["higher_is_better"] is True
    assert reg.names() == ["acc", "dice"] == list(reg)
    assert [e.name for e in reg.entries()] == ["acc", "dice"]
    assert "acc" in reg and "nope" not in reg and 3 not in reg
    assert len(reg) == 2
    assert reg.contract == "factory(**options) -> metric"
    assert "metrics" in repr(reg)


def test_entry_is_frozen(reg):
    entry = reg.register("acc", factory_a)
    with pytest.raises(FrozenInstanceError):
        entry.name = "other"
    with pytest.raises(TypeError):
        entry.metadata["x"] = 1


def test_same_object_twice_is_a_noop(reg):
    first = reg.register("acc", factory_a, plugin="p1")
    again = reg.register("acc", factory_a, plugin="p2")
    assert again is first and again.plugin == "p1"
    assert len(reg) == 1


def test_duplicate_names_both_registrants(reg):
    reg.register("acc", factory_a, plugin="medical", distribution="vlsdk", version="0.1.0")
    with pytest.raises(DuplicateNameError) as info:
        reg.register("acc", factory_b, plugin="acme", distribution="acme-vlsdk", version="2.0")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "plugin 'medical' (vlsdk 0.1.0)" in message
    assert "plugin 'acme' (acme-vlsdk 2.0)" in message
    assert "replace=True" in message
    assert reg.get("acc").obj is factory_a


def test_replace_overrides(reg):
    reg.register("acc", factory_a, plugin="medical")
    entry = reg.register("acc", factory_b, plugin="acme", replace=True)
    assert reg.get("acc") is entry and entry.obj is factory_b and entry.plugin == "acme"


def test_unknown_name_lists_available_and_closest(reg):
    reg.register("accuracy", factory_a)
    reg.register("dice", factory_b)
    with pytest.raises(UnknownNameError) as info:
        reg.get("acuracy")
    err = info.value
    assert isinstance(err, KeyError)
    assert err.suggestion == "accuracy"
    text = str(err)
    assert not text.startswith(("'", '"')), "str() must be readable, not a quoted KeyError repr"
    assert "Did you mean 'accuracy'?" in text
    assert "Available: accuracy, dice." in text


def test_unknown_name_in_empty_registry_and_unhashable(reg):
    with pytest.raises(UnknownNameError, match="No metrics are registered"):
        reg.get("x")
    with pytest.raises(KeyError):
        reg.get(["not", "hashable"])


def test_unknown_name_uses_explain_missing():
    reg = Registry(
        "experts", "c", explain_missing=lambda name: f"because {name.split('.')[0]} broke"
    )
    with pytest.raises(UnknownNameError, match="because medical broke"):
        reg.get("medical.lesion")


@pytest.mark.parametrize("bad", ["", "  padded", None, 3])
def test_names_are_validated(reg, bad):
    with pytest.raises(ValueError, match="non-empty strings"):
        reg.register(bad, factory_a)


def test_expert_name_pattern():
    experts = Registry(
        "experts",
        "factory(dim, **options)",
        name_pattern=r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*",
        name_help="Expert names look like '<group>.<name>'.",
    )
    experts.register("medical.lesion", factory_a)
    for bad in ("lesion", "medical-lesion", "medical.", "1med.lesion", "a.b.c"):
        with pytest.raises(ValueError, match="<group>.<name>"):
            experts.register(bad, factory_a)


def test_wrong_type_names_plugin_and_contract(reg):
    with pytest.raises(TypeError) as info:
        reg.register("acc", 42, plugin="acme", distribution="acme-vlsdk", version="2.0")
    message = str(info.value)
    assert "plugin 'acme' (acme-vlsdk 2.0)" in message
    assert "expected a callable, got int" in message
    assert "factory(**options) -> metric" in message


def test_unregister_and_restore(reg):
    entry = reg.register("acc", factory_a)
    assert reg.unregister("acc") is entry and "acc" not in reg
    with pytest.raises(UnknownNameError):
        reg.unregister("acc")


def test_registrar_attributes_and_records_changes(reg):
    registrar = Registrar(reg, "acme", "acme-vlsdk", "2.0")
    entry = registrar("acc", factory_a, higher_is_better=True)
    registrar("acc", factory_a)  # no-op: not recorded twice
    assert (entry.plugin, entry.distribution, entry.version) == ("acme", "acme-vlsdk", "2.0")
    assert entry.metadata == {"higher_is_better": True}
    assert registrar.kind == "metrics" and registrar.contract == reg.contract
    assert [(name, prev) for _, name, prev, _ in registrar.changes] == [("acc", None)]


def test_command_registrar_builds_commands():
    commands = Registry(
        "commands", "Command", validate=lambda o: None if isinstance(o, Command) else "no"
    )

    def run(args):
        return 0

    registrar = CommandRegistrar(commands, "acme")
    entry = registrar("hello", run, help="say hello")
    assert (
        isinstance(entry.obj, Command) and entry.obj.help == "say hello" and entry.plugin == "acme"
    )
    assert registrar("hello", run, help="say hello") is entry  # the same command again: no-op
    with pytest.raises(DuplicateNameError):
        registrar("hello", lambda args: 1, help="other")
    with pytest.raises(TypeError, match="run must be callable"):
        registrar("bad", "not callable")
    with pytest.raises(TypeError, match="needs run"):
        registrar("bad")


# -- require_extra / MissingExtraError ---------------------------------------------------------


def test_require_extra_passes_when_importable():
    assert require_extra("medical", "json", "os.path") is None


def test_require_extra_names_requester_modules_and_install_line():
    with pytest.raises(MissingExtraError) as info:
        require_extra(
            "medical",
            "json",
            "vlsdk_no_such_module_x",
            "vlsdk_no_such_module_y",
            requester="vlsdk_medical",
        )
    err = info.value
    assert isinstance(err, ImportError)
    assert err.extra == "medical"
    assert err.modules == ("vlsdk_no_such_module_x", "vlsdk_no_such_module_y")
    assert err.hint == 'pip install "vlsdk[medical]" (from a checkout: pip install -e ".[medical]")'
    assert str(err) == (
        "vlsdk_medical needs vlsdk_no_such_module_x, vlsdk_no_such_module_y: "
        'pip install "vlsdk[medical]" (from a checkout: pip install -e ".[medical]")'
    )
    assert pickle.loads(pickle.dumps(err)).modules == err.modules


def test_require_extra_defaults_requester_to_caller_package():
    with pytest.raises(MissingExtraError, match=r"^tests needs|^test_registry needs"):
        require_extra("driving", "vlsdk_no_such_module_z")


def test_require_extra_fails_for_a_broken_install(tmp_path, monkeypatch):
    (tmp_path / "vlsdk_broken_dep.py").write_text("raise AttributeError('half-installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(MissingExtraError) as info:
            require_extra(
                "industrial", "vlsdk_broken_dep", requester="vlsdk_industrial", distribution="acme",
                import_now=True,
            )
    finally:
        sys.modules.pop("vlsdk_broken_dep", None)
    message = str(info.value)
    assert message.startswith(
        'vlsdk_industrial needs vlsdk_broken_dep: pip install "acme[industrial]"'
    )
    assert "AttributeError: half-installed" in message


def test_require_extra_finds_without_importing(tmp_path, monkeypatch):
    (tmp_path / "vlsdk_heavy_dep.py").write_text("raise AttributeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert require_extra("industrial", "vlsdk_heavy_dep") is None  # found, not imported
    assert "vlsdk_heavy_dep" not in sys.modules
    with pytest.raises(MissingExtraError, match="vlsdk_gone_dep"):
        require_extra("industrial", "vlsdk_heavy_dep", "vlsdk_gone_dep")


def test_require_extra_needs_modules():
    with pytest.raises(ValueError):
        require_extra("medical")

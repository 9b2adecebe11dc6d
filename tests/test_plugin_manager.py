"""Plugin discovery, isolation of broken plugins, switches, attribution and the build functions.

Entry-point tests install real-looking distributions (``*.dist-info`` with ``entry_points.txt``) on
``sys.path``, so ``importlib.metadata.entry_points`` discovers them exactly as it would a
pip-installed plugin; ``VLSDK_LOAD_PLUGINS`` keeps the real domain plugins out of them.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from vlsdk.plugins import (
    DuplicateNameError,
    PluginHost,
    UnknownNameError,
    VlsdkPluginWarning,
    build_expert,
    build_head,
    builtin,
    get_registry,
    hookimpl,
    load_plugins,
    manager,
    plugin_infos,
    use_host,
)
from vlsdk.testing import check_expert


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("VLSDK_STRICT_PLUGINS", "VLSDK_LOAD_PLUGINS", "VLSDK_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)


HEADER = "from vlsdk.plugins import hookimpl, require_extra\n"

GOOD = (
    HEADER
    + """
from torch import nn

CALLS = []

def make_linear(dim, **options):
    return nn.Linear(dim, dim)

@hookimpl
def vlsdk_register_experts(register):
    CALLS.append("experts")
    register("vtgood.linear", make_linear, description="a linear expert")

@hookimpl
def vlsdk_register_datasets(register):
    register("vtgood.points", list)
"""
)

BROKEN = {
    # entry point name: (module name, source); None source = the module does not exist
    "vtboom": ("vt_boom", "raise RuntimeError('boom on import')\n"),
    "vtmissing": ("vt_does_not_exist", None),
    "vtextra": (
        "vt_extra",
        HEADER + "require_extra('vtextra', 'vlsdk_no_such_module', requester='vt_extra')\n",
    ),
    "vtbadarg": (
        "vt_badarg",
        HEADER + "@hookimpl\ndef vlsdk_register_experts(register, nonsense):\n    pass\n",
    ),
    "vtunknownhook": (
        "vt_unknownhook",
        HEADER + "@hookimpl\ndef vlsdk_register_expertz(register):\n    pass\n",
    ),
    "vthookraises": (
        "vt_hookraises",
        HEADER + "from torch import nn\n@hookimpl\n"
        "def vlsdk_register_experts(register):\n"
        "    register('vthookraises.first', nn.Identity)\n"
        "    raise ValueError('hook failed half-way')\n",
    ),
    "vtwrongtype": (
        "vt_wrongtype",
        HEADER + "@hookimpl\ndef vlsdk_register_heads(register):\n"
        "    register('vtwrongtype-head', 42)\n",
    ),
}
ERRORS = {"vtboom", "vtmissing", "vtbadarg", "vtunknownhook", "vthookraises", "vtwrongtype"}


@pytest.fixture
def installed(make_distribution, monkeypatch):
    """One good and seven broken plugins, each in a distribution of its own; only they load."""
    make_distribution("vt-good-dist", {"vtgood": "vt_good"}, {"vt_good": GOOD}, version="1.2.3")
    for ep_name, (module, source) in BROKEN.items():
        modules = {module: source} if source is not None else {}
        make_distribution(f"{ep_name}-dist", {ep_name: module}, modules, version="0.9")
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", ",".join(["vtgood", *BROKEN]))


def _load_recording(host: PluginHost) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host.load()
    return [w for w in caught if issubclass(w.category, VlsdkPluginWarning)]


# -- discovery and isolation -------------------------------------------------------------------


@pytest.mark.vlsdk_entry_points
def test_broken_plugins_do_not_stop_the_others(installed, plugin_host):
    caught = _load_recording(plugin_host)
    infos = {info.name: info for info in plugin_host.plugin_infos()}

    good = infos["vtgood"]
    assert good.status == "loaded" and good.error is None
    assert (good.distribution, good.version, good.entry_point) == (
        "vt-good-dist",
        "1.2.3",
        "vt_good",
    )
    assert good.hooks == ("vlsdk_register_datasets", "vlsdk_register_experts")
    assert good.registered == {"experts": ("vtgood.linear",), "datasets": ("vtgood.points",)}
    entry = get_registry("experts").get("vtgood.linear")
    assert (entry.plugin, entry.distribution, entry.version) == ("vtgood", "vt-good-dist", "1.2.3")
    assert entry.metadata == {"description": "a linear expert"}
    assert infos["vlsdk"].status == "loaded"

    assert {name for name, info in infos.items() if info.status == "error"} == ERRORS
    assert infos["vtextra"].status == "missing-extra"
    assert infos["vtextra"].hint == 'pip install "vlsdk[vtextra]" (from a checkout: pip install -e ".[vtextra]")'
    assert "vt_extra needs vlsdk_no_such_module" in infos["vtextra"].error
    assert "RuntimeError: boom on import" in infos["vtboom"].error
    assert "vt_does_not_exist" in infos["vtmissing"].error
    assert (
        "PluginValidationError" in infos["vtbadarg"].error and "nonsense" in infos["vtbadarg"].error
    )
    assert "vlsdk_register_expertz" in infos["vtunknownhook"].error
    assert "hook failed half-way" in infos["vthookraises"].error
    assert "plugin 'vtwrongtype' (vtwrongtype-dist 0.9)" in infos["vtwrongtype"].error
    assert "expected a callable factory, got int" in infos["vtwrongtype"].error
    assert all(infos[name].traceback for name in ERRORS)
    for name in ERRORS | {"vtextra"}:
        assert infos[name].distribution == f"{name}-dist" and infos[name].version == "0.9"
        assert infos[name].registered == {}
        assert plugin_host.pm.get_plugin(name) is None, f"{name} must be unregistered from pluggy"

    # what a failing hook registered before raising was rolled back
    assert "vthookraises.first" not in get_registry("experts")
    # one warning per broken plugin (not for a missing extra), naming plugin, dist, version, error
    messages = [str(w.message) for w in caught]
    assert len(messages) == len(ERRORS)
    for name in ERRORS:
        module = BROKEN[name][0]
        origin = f"plugin {name!r} ({name}-dist 0.9; entry point {name} = {module})"
        (message,) = [m for m in messages if origin in m]
        assert infos[name].error.splitlines()[0] in message


@pytest.mark.vlsdk_entry_points
def test_loading_is_lazy_and_idempotent(installed, plugin_host):
    assert not plugin_host.loaded and "vt_good" not in sys.modules and "vt_boom" not in sys.modules
    first = _load_recording(plugin_host)
    assert plugin_host.loaded and first
    again = _load_recording(plugin_host)
    get_registry("experts")
    plugin_host.load()
    assert again == [], "a broken plugin is warned about once"
    assert sys.modules["vt_good"].CALLS == ["experts"], "hooks run once"


@pytest.mark.vlsdk_entry_points
def test_strict_mode_reraises(installed, plugin_host, monkeypatch):
    monkeypatch.setenv("VLSDK_STRICT_PLUGINS", "1")
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "vtextra,vtboom,vtgood")
    with pytest.raises(RuntimeError, match="boom on import") as info:
        plugin_host.load()
    assert any("vtboom" in note for note in getattr(info.value, "__notes__", []))
    assert not plugin_host.loaded
    # a missing extra is reported, never raised; the next call carries on with the others
    assert plugin_host.plugin_info("vtextra").status == "missing-extra"
    assert plugin_host.plugin_info("vtgood").status == "loaded"


@pytest.mark.vlsdk_entry_points
def test_strict_mode_reraises_hook_errors(installed, plugin_host, monkeypatch):
    monkeypatch.setenv("VLSDK_STRICT_PLUGINS", "true")
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "vthookraises")
    with pytest.raises(ValueError, match="hook failed half-way"):
        plugin_host.load()
    assert "vthookraises.first" not in plugin_host._registries["experts"]


@pytest.mark.vlsdk_entry_points
def test_load_switch_selects_plugins(installed, plugin_host, monkeypatch):
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", " vtgood , ")
    assert _load_recording(plugin_host) == []
    infos = {info.name: info for info in plugin_host.plugin_infos()}
    assert infos["vtgood"].status == "loaded"
    assert infos["vtboom"].status == "disabled" and "VLSDK_LOAD_PLUGINS" in infos["vtboom"].error
    assert "vt_boom" not in sys.modules


@pytest.mark.vlsdk_entry_points
def test_load_switch_empty_means_none(installed, plugin_host, monkeypatch):
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "")
    plugin_host.load()
    statuses = {info.name: info.status for info in plugin_host.plugin_infos()}
    assert statuses.pop("vlsdk") == "loaded", "the core plugin always loads"
    assert set(statuses.values()) == {"disabled"}
    assert "vtgood.linear" not in get_registry("experts")


@pytest.mark.vlsdk_entry_points
def test_load_switch_warns_about_unknown_names(installed, plugin_host, monkeypatch):
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "vtgood,vtgoood")
    (warning,) = _load_recording(plugin_host)
    assert "vtgoood" in str(warning.message) and "vtgood" in str(warning.message)


@pytest.mark.vlsdk_entry_points
def test_disable_switch_blocks_plugins(installed, plugin_host, monkeypatch):
    monkeypatch.setenv("VLSDK_DISABLE_PLUGINS", ",".join(ERRORS))
    assert _load_recording(plugin_host) == []
    infos = {info.name: info for info in plugin_host.plugin_infos()}
    for name in ERRORS:
        assert infos[name].status == "disabled" and "VLSDK_DISABLE_PLUGINS" in infos[name].error
    assert infos["vtgood"].status == "loaded"


@pytest.mark.vlsdk_entry_points
def test_missing_name_points_at_the_plugin_that_did_not_load(installed, plugin_host):
    _load_recording(plugin_host)
    with pytest.raises(UnknownNameError) as info:
        get_registry("experts").get("vtextra.thing")
    message = str(info.value)
    assert "Plugin 'vtextra' (missing-extra) is not loaded" in message
    assert 'pip install "vlsdk[vtextra]"' in message
    with pytest.raises(UnknownNameError, match="RuntimeError: boom on import"):
        build_expert("vtboom.thing", 8)
    with pytest.raises(UnknownNameError, match="did not load") as info:
        get_registry("experts").get("vtgood.linaer")
    assert info.value.suggestion == "vtgood.linear"


@pytest.mark.vlsdk_entry_points
def test_two_distributions_declaring_one_name(make_distribution, plugin_host, monkeypatch):
    make_distribution("vt-first", {"vtdup": "vt_dup_a"}, {"vt_dup_a": GOOD})
    make_distribution("vt-second", {"vtdup": "vt_dup_b"}, {"vt_dup_b": GOOD})
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "vtdup")
    (warning,) = _load_recording(plugin_host)
    assert "declared twice" in str(warning.message)
    assert plugin_host.plugin_info("vtdup").status == "loaded"


# -- the core plugin ---------------------------------------------------------------------------


def test_core_plugin_is_registered_first(plugin_host):
    core = plugin_infos()[0]
    assert (core.name, core.distribution, core.status) == ("vlsdk", "vlsdk", "loaded")
    assert {"plugins", "experts", "heads", "datasets", "info"} <= set(get_registry("commands"))
    assert get_registry("commands").get("plugins").plugin == "vlsdk"
    assert "vlsdk_register_heads" in core.hooks


def test_core_objects_missing_or_broken(tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert builtin._load("head", "x", "vlsdk_no_such_module.sub", "X") is None  # not installed
    (tmp_path / "vt_broken_head.py").write_text("raise SyntaxError('bad head')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.warns(VlsdkPluginWarning, match="core head 'x'.*bad head"):
            assert builtin._load("head", "x", "vt_broken_head", "X") is None
        monkeypatch.setenv("VLSDK_STRICT_PLUGINS", "1")
        with pytest.raises(SyntaxError):
            builtin._load("head", "x", "vt_broken_head", "X")
    finally:
        sys.modules.pop("vt_broken_head", None)


def test_nothing_heavy_is_imported_by_the_plugin_api():
    code = (
        "import sys, vlsdk.plugins, vlsdk.plugins.hookspecs, vlsdk.cli; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- registering plugin objects ----------------------------------------------------------------


class ExpertPlugin:
    def __init__(self, name="vtobj.linear", factory=None):
        self.name = name
        self.factory = factory or (lambda dim, **options: nn.Linear(dim, dim))
        self.calls = 0

    @hookimpl
    def vlsdk_register_experts(self, register):
        self.calls += 1
        register(self.name, self.factory)


def test_register_plugin_attributes_and_unregisters(plugin_host, register_plugin):
    plugin = ExpertPlugin()
    info = register_plugin(plugin, "vtobj", distribution="vt-obj", version="3.0")
    assert info.status == "loaded" and info.registered == {"experts": ("vtobj.linear",)}
    entry = get_registry("experts").get("vtobj.linear")
    assert (entry.plugin, entry.distribution, entry.version) == ("vtobj", "vt-obj", "3.0")
    assert plugin.calls == 1
    plugin_host.unregister_plugin("vtobj")
    assert "vtobj.linear" not in get_registry("experts")
    assert plugin_host.pm.get_plugin("vtobj") is None
    with pytest.raises(ValueError, match="already known"):
        register_plugin(ExpertPlugin(), "vlsdk")


class Replacer:
    @hookimpl
    def vlsdk_register_experts(self, register):
        register("vtobj.linear", nn.Identity, replace=True)


def test_replacement_is_restored_on_unregister(plugin_host, register_plugin, monkeypatch):
    monkeypatch.setenv("VLSDK_ALLOW_REPLACE", "vtother, vtreplacer")
    first = ExpertPlugin()
    register_plugin(first, "vtfirst")

    with pytest.warns(VlsdkPluginWarning, match="plugin 'vtreplacer' replaced experts 'vtobj.linear' "
                      "of plugin 'vtfirst'.*VLSDK_ALLOW_REPLACE"):
        info = register_plugin(Replacer(), "vtreplacer")
    assert [(r.kind, r.name, r.previous) for r in info.replaced] == [
        ("experts", "vtobj.linear", "plugin 'vtfirst'")
    ]
    assert get_registry("experts").get("vtobj.linear").plugin == "vtreplacer"
    plugin_host.unregister_plugin("vtreplacer")
    assert get_registry("experts").get("vtobj.linear").plugin == "vtfirst"


def test_replacing_another_plugins_entry_needs_the_users_opt_in(plugin_host, register_plugin):
    register_plugin(ExpertPlugin(), "vtfirst")
    with pytest.warns(VlsdkPluginWarning, match="VLSDK_ALLOW_REPLACE=vtreplacer"):
        info = register_plugin(Replacer(), "vtreplacer", strict=False)
    assert info.status == "error" and "ReplaceNotAllowedError" in info.error
    assert "plugin 'vtfirst'" in info.error and info.registered == {}
    assert get_registry("experts").get("vtobj.linear").plugin == "vtfirst"
    assert plugin_host.pm.get_plugin("vtreplacer") is None


def test_replacing_its_own_entry_needs_no_opt_in(plugin_host, register_plugin):
    class Twice:
        @hookimpl
        def vlsdk_register_experts(self, register):
            register("vtobj.linear", nn.Linear)
            register("vtobj.linear", nn.Identity, replace=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = register_plugin(Twice(), "vttwice")
    assert info.replaced == () and get_registry("experts").get("vtobj.linear").obj is nn.Identity


def test_duplicate_between_plugins_names_both(plugin_host, register_plugin):
    register_plugin(ExpertPlugin(), "vtfirst", distribution="vt-first", version="1.0")
    with pytest.raises(DuplicateNameError) as info:
        register_plugin(ExpertPlugin(), "vtsecond", distribution="vt-second", version="2.0")
    message = str(info.value)
    assert (
        "plugin 'vtfirst' (vt-first 1.0)" in message
        and "plugin 'vtsecond' (vt-second 2.0)" in message
    )
    with pytest.raises(KeyError):
        plugin_host.plugin_info("vtsecond")  # a strict registration leaves nothing behind
    assert plugin_host.pm.get_plugin("vtsecond") is None


def test_non_strict_registration_records_and_warns(plugin_host, register_plugin):
    class UnknownArgument:
        @hookimpl
        def vlsdk_register_experts(self, register, unknown):
            pass

    with pytest.warns(VlsdkPluginWarning, match="plugin 'vtunknownarg'"):
        info = register_plugin(UnknownArgument(), "vtunknownarg", strict=False)
    assert info.status == "error" and "unknown" in info.error
    assert plugin_host.pm.get_plugin("vtunknownarg") is None
    assert plugin_host.plugin_info("vtunknownarg") is info


def test_hook_raising_in_one_plugin_is_attributed_to_it(plugin_host, register_plugin):
    good = ExpertPlugin()
    register_plugin(good, "vtgoodobj")

    class Raises:
        @hookimpl
        def vlsdk_register_experts(self, register):
            raise RuntimeError("only mine")

    with pytest.warns(VlsdkPluginWarning, match="plugin 'vtraises'.*only mine"):
        info = register_plugin(Raises(), "vtraises", strict=False)
    assert info.status == "error"
    assert good.calls == 1, "registering a plugin calls only that plugin's hooks"
    assert "vtobj.linear" in get_registry("experts")


def test_unknown_registry_kind(plugin_host):
    with pytest.raises(UnknownNameError, match="Did you mean 'experts'"):
        get_registry("expert")


# -- building ----------------------------------------------------------------------------------


def test_build_expert(plugin_host, register_plugin):
    register_plugin(
        ExpertPlugin("vtobj.linear", lambda dim, bias=True: nn.Linear(dim, dim, bias=bias)), "vtobj"
    )
    expert = build_expert("vtobj.linear", 16, bias=False)
    assert isinstance(expert, nn.Linear) and expert.bias is None
    assert expert(torch.zeros(5, 16)).shape == (5, 16)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            build_expert("vtobj.linear", bad)


def test_build_expert_checks_the_result_type(plugin_host, register_plugin):
    register_plugin(
        ExpertPlugin("vtobj.bad", lambda dim: "not a module"),
        "vtobj",
        distribution="vt-obj",
        version="3.0",
    )
    with pytest.raises(TypeError) as info:
        build_expert("vtobj.bad", 8)
    message = str(info.value)
    assert "plugin 'vtobj' (vt-obj 3.0)" in message and "not a torch.nn.Module" in message


def test_build_expert_notes_the_plugin_when_the_factory_raises(plugin_host, register_plugin):
    register_plugin(ExpertPlugin("vtobj.linear", lambda dim: nn.Linear(dim, dim)), "vtobj")
    with pytest.raises(TypeError, match="unknown_option") as info:
        build_expert("vtobj.linear", 8, unknown_option=1)
    assert any("plugin 'vtobj'" in note for note in info.value.__notes__)


def test_build_head(plugin_host, register_plugin):
    class Heads:
        @hookimpl
        def vlsdk_register_heads(self, register):
            register(
                "vt-count", lambda channels, classes=1: nn.Linear(max(channels.values()), classes)
            )
            register("vt-bad", lambda channels: {"not": "a module"})

    register_plugin(Heads(), "vtheads")
    head = build_head("vt-count", {8: 32, 16: 64}, classes=3)
    assert isinstance(head, nn.Linear) and head.out_features == 3
    with pytest.raises(TypeError, match="plugin 'vtheads'"):
        build_head("vt-bad", {8: 32})
    with pytest.raises(ValueError, match="channels"):
        build_head("vt-count", [32, 64])
    with pytest.raises(UnknownNameError):
        build_head("vt-cuont", {8: 32})


# -- the default host --------------------------------------------------------------------------


def test_use_host_swaps_and_restores(plugin_host):
    other = PluginHost(discover=False, builtin=False)
    with use_host(other):
        assert manager.get_host() is other
        assert load_plugins() == [] and len(get_registry("commands")) == 0
    assert manager.get_host() is plugin_host


# -- vlsdk.testing helpers ---------------------------------------------------------------------


def test_check_expert_accepts_a_good_expert(plugin_host, register_plugin):
    class ContextExpert(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.proj = nn.Linear(dim, dim)
            self.seen = None

        def forward(self, x, context=None):
            self.seen = context
            return self.proj(x + context.tokens.mean(0))

    module = check_expert(ContextExpert, dim=12)
    assert module.seen is not None and module.seen.grid == (1, 4, 4)
    register_plugin(ExpertPlugin("vtobj.linear"), "vtobj")
    assert isinstance(check_expert("vtobj.linear", dim=8), nn.Linear)


class _ToDouble(nn.Linear):
    def __init__(self, dim):
        super().__init__(dim, dim)

    def forward(self, x):
        return super().forward(x).double()


class _Crashes(nn.Linear):
    def __init__(self, dim):
        super().__init__(dim, dim)

    def forward(self, x):
        raise RuntimeError("kaput")


class _HalfUsed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.used = nn.Linear(dim, dim)
        self.unused = nn.Linear(dim, dim)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda dim: "nope", "must return a torch.nn.Module"),
        (lambda dim: nn.Linear(dim, dim + 1), r"must map \(n, dim\) -> \(n, dim\)"),
        (lambda dim: nn.Identity(), "no trainable parameters"),
        (_HalfUsed, "no gradient reached parameter.*unused"),
        (_ToDouble, "output dtype torch.float64 != input dtype torch.float32"),
        (_Crashes, r"forward on \(7, 8\) tokens raised RuntimeError: kaput"),
    ],
)
def test_check_expert_explains_failures(factory, message):
    with pytest.raises(AssertionError, match=message):
        check_expert(factory, dim=8)


def test_missing_core_object_is_explained(plugin_host, monkeypatch):
    monkeypatch.setitem(builtin.CORE_HEADS, "vt-core-head", ("vlsdk_no_such_module", "Head"))
    with pytest.raises(UnknownNameError) as info:
        get_registry("heads").get("vt-core-head")
    assert "'vt-core-head' is a core head (vlsdk_no_such_module.Head)" in str(info.value)


def test_hookimpl_parameter_with_a_default_is_rejected(plugin_host, register_plugin):
    class WithDefault:
        @hookimpl
        def vlsdk_register_experts(self, register=None):
            pass

    with pytest.warns(VlsdkPluginWarning, match="default value"):
        info = register_plugin(WithDefault(), "vtdefault", strict=False)
    assert info.status == "error" and "register" in info.error

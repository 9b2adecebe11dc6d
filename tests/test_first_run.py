"""First-run polish: a missing plotting package names ``pip install "vlsdk[plot]"`` (and the checkout form),
an extra's hint names both install forms, and ``vlsdk demo --quick`` says it is a smoke run."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

from vlsdk.cli import main
from vlsdk.demo import QUICK_NOTE, DemoResult
from vlsdk.plugins import MissingExtraError, hookimpl, require_extra
from vlsdk.report import Report

PLOT_HINT = ('pip install "vlsdk[plot]"', 'pip install -e ".[plot]"')


def _names_the_plot_extra(err: BaseException, package: str) -> None:
    message = str(err)
    assert isinstance(err, ImportError) and f"needs {package}" in message, message
    assert all(hint in message for hint in PLOT_HINT), message


def test_extra_hint_names_the_index_and_the_checkout_forms():
    with pytest.raises(MissingExtraError) as info:
        require_extra("medical", "vlsdk_no_such_module_q", requester="vlsdk_medical")
    assert info.value.hint == 'pip install "vlsdk[medical]" (from a checkout: pip install -e ".[medical]")'
    assert str(info.value) == f"vlsdk_medical needs vlsdk_no_such_module_q: {info.value.hint}"


def test_routing_plots_without_matplotlib_name_the_plot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    monkeypatch.delitem(sys.modules, "vlsdk.inspect.plots", raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module("vlsdk.inspect.plots")
    _names_the_plot_extra(info.value, "matplotlib")
    assert "vlsdk.inspect.plots (routing plots)" in str(info.value)


def test_predict_pictures_without_matplotlib_or_pillow_name_the_plot_extra(tmp_path, monkeypatch):
    from vlsdk import predict

    image = torch.rand(3, 16, 16)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    calls = {
        "_figure": lambda: predict._figure(image),
        "_draw_boxes": lambda: predict._draw_boxes(image, torch.tensor([[1.0, 1, 8, 8]]), torch.tensor([0.9]),
                                                   ["scratch"], tmp_path / "boxes.png"),
        "overlay_labels": lambda: predict.overlay_labels(image, torch.zeros(16, 16, dtype=torch.long),
                                                         tmp_path / "overlay.png"),
        "_colour": lambda: predict._colour(torch.rand(16, 16), tmp_path / "depth.png"),
    }
    for call in calls.values():  # keyed by the helper each one calls
        with pytest.raises(ImportError) as info:
            call()
        _names_the_plot_extra(info.value, "matplotlib")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError) as info:
        predict._save_labels(torch.zeros(16, 16, dtype=torch.long), tmp_path / "labels.png")
    _names_the_plot_extra(info.value, "PIL")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_report_image_array_without_matplotlib_names_the_plot_extra(tmp_path, monkeypatch):
    report = Report("first run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError) as info:
        report.add_image(np.zeros((8, 8), dtype=np.float32))
    _names_the_plot_extra(info.value, "matplotlib")
    assert "Report.add_image of an array" in str(info.value)


def _light_demo(out_dir, *, quick, device, seed):
    return DemoResult("light", "a light domain", {"score": 0.5 if quick else 0.9})


class LightPlugin:
    @hookimpl
    def vlsdk_register_demos(self, register):
        register("light", _light_demo)


def test_demo_quick_says_it_is_a_smoke_run(plugin_host, register_plugin, tmp_path, capsys):
    register_plugin(LightPlugin(), name="lightplugin")
    assert main(["demo", "--quick", "--domain", "light", "--out", str(tmp_path / "quick")]) == 0
    out = capsys.readouterr().out
    assert out.count("smoke run") == 1 and f"[demo] --quick: {QUICK_NOTE}" in out
    assert "not a benchmark" in QUICK_NOTE
    assert QUICK_NOTE in (tmp_path / "quick" / "report.html").read_text()  # the report says so too
    assert main(["demo", "--domain", "light", "--out", str(tmp_path / "full")]) == 0
    assert "smoke run" not in capsys.readouterr().out
    assert "smoke run" not in (tmp_path / "full" / "report.html").read_text()

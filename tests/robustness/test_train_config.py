"""Typed settings: values from YAML, JSON and the command line converted or refused by name."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Literal

import pytest

from vlsdk.settings import convert, field_help, settings_from
from vlsdk.train import TrainConfig, load_train_config


@pytest.mark.parametrize(("value", "annotation", "expected"), [
    ("1e-3", float, 1e-3), (3, float, 3.0), ("3", int, 3), (7, int, 7), (" -2 ", int, -2),
    ("yes", bool, True), ("0", bool, False), ("False", bool, False), (1, bool, True),
    ("none", float | None, None), ("null", int | None, None), (None, str | None, None), ("2.5", float | None, 2.5),
    ("x.yaml", pathlib.Path, pathlib.Path("x.yaml")), (pathlib.Path("a"), str, "a"),
    ("bf16", Literal["off", "bf16"], "bf16"), ("2", Literal[1, 2], 2),
    ("1,2, 3", tuple[int, ...], (1, 2, 3)), ([1, 2.5], tuple[float, ...], (1.0, 2.5)),
    ("[4, 5]", tuple[int, int], (4, 5)),
    ("a, b", list[str], ["a", "b"]), ("", list[str], []), ({"a": "1e-2"}, dict[str, float], {"a": 0.01}),
    ('{"k": 1}', dict, {"k": 1}),
])
def test_convert_accepts(value, annotation, expected):
    out = convert(value, annotation, "config.yaml: x")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(("value", "annotation", "message"), [
    (True, int, "expected an integer, got True (bool)"),
    (2.5, int, "expected an integer, got 2.5 (float)"),
    (3.0, int, "expected an integer, got 3.0 (float)"),
    ("3.0", int, "expected an integer, got '3.0' (str)"),
    ("fast", float, "expected a finite number, got 'fast' (str)"),
    (float("nan"), float, "expected a finite number, got nan (float)"),
    (".inf", float, "expected a finite number"),
    (False, float, "expected a finite number, got False (bool)"),
    ("maybe", bool, "expected true or false, got 'maybe' (str)"),
    (2, bool, "expected true or false, got 2 (int)"),
    (3, str, "expected a string, got 3 (int)"),
    ("x", float | None, "expected a finite number or None, got 'x' (str)"),
    ("1,a", tuple[int, ...], "config.yaml: x[1]: expected an integer, got 'a' (str)"),
    ("1,2,3", tuple[int, int], "expected 2 values"),
    (5, list[str], "expected a list or a comma-separated string, got 5 (int)"),
])
def test_convert_refuses_with_where_what_and_value(value, annotation, message):
    with pytest.raises(ValueError) as err:
        convert(value, annotation, "config.yaml: x")
    assert str(err.value).startswith("config.yaml: x")
    assert message in str(err.value)


def test_literal_error_lists_the_choices_and_the_closest():
    with pytest.raises(ValueError, match=r"expected one of 'auto', 'off', 'bf16', 'fp16', got 'bf61' \(str\); "
                                         r"did you mean 'bf16'\?"):
        convert("bf61", Literal["auto", "off", "bf16", "fp16"], "run.yaml: amp")


@dataclass
class _Settings:
    """Settings of a made-up task.

    Args:
        size: input size in pixels,
            height then width.
        mode: how to run.

    Example:
        not_a_field: this is prose.
    """

    size: tuple[int, ...] = (64, 64)
    mode: Literal["fast", "exact"] = "fast"
    rate: float = field(default=0.5, metadata={"help": "sampling rate."})
    undocumented: int = 1


def test_settings_from_converts_keeps_base_and_names_unknown_keys():
    made = settings_from(_Settings, {"size": "32,48", "rate": "1e-1"}, "task.yaml")
    assert made == _Settings(size=(32, 48), mode="fast", rate=0.1)
    again = settings_from(_Settings, {"mode": "exact"}, "command line", base=made)
    assert again == _Settings(size=(32, 48), mode="exact", rate=0.1)
    with pytest.raises(ValueError, match=r"task.yaml: unknown option 'sise'; did you mean 'size'\? "
                                         r"valid options: size, mode, rate, undocumented"):
        settings_from(_Settings, {"sise": 3}, "task.yaml")
    with pytest.raises(ValueError, match=r"task.yaml: mode: expected one of 'fast', 'exact', got 'slow'"):
        settings_from(_Settings, {"mode": "slow"}, "task.yaml")


def test_field_help_from_metadata_and_docstring():
    assert field_help(_Settings) == {"size": "input size in pixels, height then width.", "mode": "how to run.",
                                     "rate": "sampling rate.", "undocumented": ""}
    assert "wall-time budget" in field_help(TrainConfig)["max_seconds"]


def test_train_config_converts_yaml_strings(tmp_path):
    (tmp_path / "t.yaml").write_text("lr: 1e-3\nclip_grad: null\nmax_seconds: 60\nout_dir: runs/a\n")
    cfg = load_train_config(tmp_path / "t.yaml", ["progress=false", "max_skipped_steps=3", "device=cuda:1"])
    assert cfg.lr == 1e-3 and type(cfg.lr) is float
    assert (cfg.clip_grad, cfg.max_seconds, cfg.progress, cfg.max_skipped_steps, cfg.device) == \
        (None, 60.0, False, 3, "cuda:1")
    assert type(cfg.max_seconds) is float
    assert TrainConfig(out_dir=tmp_path).out_dir == str(tmp_path)  # a Path becomes the str train_config.json needs


@pytest.mark.parametrize(("text", "message"), [
    ("batch_size: 2.5\n", "t.yaml: batch_size: expected an integer, got 2.5 (float)"),
    ("steps: true\n", "t.yaml: steps: expected an integer, got True (bool)"),
    ("device: cdua\n", "t.yaml: device: expected 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"),
    ("amp: fp8\n", "t.yaml: amp: expected one of 'auto', 'off', 'bf16', 'fp16', got 'fp8'"),
    ("lr: fast\n", "t.yaml: lr: expected a finite number, got 'fast' (str)"),
    ("steps: 0\n", "t.yaml: steps must be >= 1, got 0"),
    ("max_skipped_steps: -1\n", "t.yaml: max_skipped_steps must be >= 0, got -1"),
])
def test_train_config_errors_name_the_file_and_the_key(tmp_path, text, message):
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(ValueError) as err:
        load_train_config(tmp_path / "t.yaml")
    assert str(err.value).startswith(f"{tmp_path / 't.yaml'}: {message.removeprefix('t.yaml: ')}")


def test_train_config_device_error_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'cuda'"):
        TrainConfig(device="cdua")
    for ok in ("auto", "cpu", "cuda", "cuda:3", "mps"):
        assert TrainConfig(device=ok).device == ok


def test_valid_configs_keep_their_values():
    cfg = TrainConfig(steps=50, batch_size=16, lr=0.001, amp="bf16", clip_grad=10.0, max_seconds=30)
    assert cfg.to_dict() | {"max_skipped_steps": 10} == {**TrainConfig().to_dict(), "steps": 50, "batch_size": 16,
                                                         "lr": 0.001, "amp": "bf16", "clip_grad": 10.0,
                                                         "max_seconds": 30.0}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg

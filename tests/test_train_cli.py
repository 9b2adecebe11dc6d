"""``vlsdk train``: each domain recipe through the real CLI entry, task registration, config errors."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlsdk.cli.main import main
from vlsdk.plugins import PluginHost, VlsdkPluginWarning, hookimpl, use_host
from vlsdk.train.recipes import TrainRecipe
from vlsdk.train.task_config import prepare_task
from vlsdk.train.tasks import task_registry

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"

#: task -> (example config, data folder under ../shared/data, extra overrides, files the run must write)
DOMAINS = {
    "industrial.pcb": ("industrial_pcb.yaml", "deeppcb", ["max_steps=2", "train_pairs=4", "eval_pairs=2"],
                       ["metrics.json", "predictions.png", "model/config.json", "train/checkpoint/trainer_state.pt"]),
}


def _finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value)


@pytest.mark.parametrize("task", sorted(DOMAINS))
def test_recipe_trains_through_the_cli(task, tmp_path, shared_data, capsys):
    config, data, overrides, files = DOMAINS[task]
    out = tmp_path / "run"
    status = main(["train", "--config", str(CONFIGS / config), "--quick", f"out={out}", f"data={shared_data / data}",
                   "progress=false", "device=cpu", *overrides])
    assert status == 0, capsys.readouterr().err
    for name in files:
        assert (out / name).exists(), f"{task} did not write {name}"
    result = json.loads((out / "train_result.json").read_text())
    assert result["task"] == task
    assert set(result["metrics"]) == set(task_registry().get(task).obj.headline)
    assert all(_finite(v) for v in result["metrics"].values()), result["metrics"]
    recorded = json.loads((out / "task_config.json").read_text())
    assert recorded["task"] == task and recorded["config_file"] == str(CONFIGS / config)
    assert f"[train] {task} done:" in capsys.readouterr().out


def test_quick_uses_the_pipeline_setting_and_overrides_win(tmp_path, shared_data):
    run = prepare_task(CONFIGS / "industrial_pcb.yaml", [f"out={tmp_path}", "epochs=5", "model=edge"], quick=True)
    assert run.options["config"] == "edge" and run.options["epochs"] == 5  # the command line over --quick
    assert run.options["image_size"] == 256 and run.options["workers"] == 0  # --quick over the file
    full = prepare_task(CONFIGS / "industrial_pcb.yaml", [f"out={tmp_path}"])
    assert full.options["image_size"] == 640 and full.options["config"] == "small"  # the file as written


def test_list_names_every_recipe_and_plugin(capsys):
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    for task, plugin in (("medical.lesion", "medical"), ("industrial.pcb", "industrial"), ("driving.bev", "driving")):
        assert any(line.split()[:2] == [task, plugin] for line in out.splitlines()), out
    assert main(["train", "--list", "--json"]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    assert listed["medical.lesion"]["extra"] == "medical" and listed["medical.lesion"]["kind"] == "task"
    assert listed["industrial.pcb"]["distributed"] is True
    assert listed["driving.bev"]["kind"] == listed["driving.depth"]["kind"] == "task"


def _write(tmp_path: Path, text: str, name: str = "task.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("text", "overrides", "expected"), [
    ("task: medical.lesio\n", [], ["no entry named 'medical.lesio'", "Did you mean 'medical.lesion'?"]),
    ("task: medical.lesion\nepoch: 3\n", [], ["task.yaml: unknown option 'epoch'; did you mean 'epochs'?"]),
    ("task: industrial.pcb\n", ["btach_size=2"], ["command line: unknown option 'btach_size'; did you mean "
                                                  "'batch_size'?"]),
    ("task: industrial.pcb\nbatch_size: many\n", [], ["task.yaml: batch_size expects an integer, got 'many'"]),
    ("task: driving.bev\nprecision: fp8\n", [], ["task.yaml: precision", "'fp8'"]),
    ("epochs: 3\n", [], ["task.yaml: needs a 'task' key", "vlsdk train --list"]),
    ("task: medical.lesion\nout: a\nout_dir: b\n", [], ["task.yaml: unknown option 'out_dir'; did you mean 'out'?"]),
    ("task: medical.lesion\n", ["epochs"], ["override 'epochs' must look like key=value"]),
    ("task: industrial.pcb\ndata: /no/such/deeppcb\n", [], ["task.yaml: data (data) /no/such/deeppcb does not exist"]),
    ("- task\n- medical.lesion\n", [], ["task.yaml must hold a mapping of options", "got list"]),
    ("task: [medical\n", [], ["task.yaml cannot be read"]),
])
def test_bad_configs_say_which_file_key_and_what_was_expected(tmp_path, capsys, text, overrides, expected):
    status = main(["train", "--config", _write(tmp_path, text), *overrides])
    err = capsys.readouterr().err
    assert status == 2
    for part in expected:
        assert part in err


def test_json_config_and_missing_file(tmp_path, capsys):
    path = _write(tmp_path, json.dumps({"task": "industrial.pcb", "epochs": 1, "out": str(tmp_path / "o")}), "t.json")
    assert prepare_task(path).options["epochs"] == 1
    assert main(["train", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "pass --config FILE" in capsys.readouterr().err


def test_own_loop_recipe_refuses_torchrun(register_plugin, plugin_host, tmp_path, monkeypatch):
    register_plugin(ToyPlugin(), "toy")  # a recipe without distributed=True: its own loop, one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="toy.fit.*cannot run under torchrun"):
        prepare_task(_write(tmp_path, "task: toy.fit\n"), [f"out={tmp_path}"], host=plugin_host)


def test_missing_extra_names_the_pip_install(tmp_path, monkeypatch, capsys):
    # a really missing dependency: importing monai fails, so the medical plugin reports its extra
    monkeypatch.setitem(sys.modules, "monai", None)
    monkeypatch.delitem(sys.modules, "vlsdk_medical.plugin", raising=False)
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "medical")
    with use_host(PluginHost()):
        status = main(["train", "--config", str(CONFIGS / "medical_lesion.yaml"), f"out={tmp_path}"])
        err = capsys.readouterr().err
        assert status == 2
        assert "medical.lesion" in err and 'pip install "vlsdk[medical]"' in err
        assert main(["train", "--list"]) == 0
        assert 'pip install "vlsdk[medical]"' in capsys.readouterr().out


@dataclass
class ToySettings:
    out: str = "runs/toy"
    epochs: int = 2


def _toy_run(settings: ToySettings) -> None:
    Path(settings.out).mkdir(parents=True, exist_ok=True)
    Path(settings.out, "metrics.json").write_text(json.dumps({"score": settings.epochs / 10}))


class ToyPlugin:
    @hookimpl
    def vlsdk_register_tasks(self, register):
        register("toy.fit", TrainRecipe.from_dataclass(ToySettings, _toy_run, headline=("score",)), extra="toy")


class ClashingPlugin:
    @hookimpl
    def vlsdk_register_tasks(self, register):
        register("toy.other", TrainRecipe.from_dataclass(ToySettings, _toy_run))
        register("toy.fit", TrainRecipe.from_dataclass(ToySettings, print))


def test_plugin_recipes_are_attributed_and_clashes_roll_back(register_plugin, plugin_host, tmp_path, capsys):
    register_plugin(ToyPlugin(), "toy", distribution="toy-dist", version="1.2")
    entry = task_registry(plugin_host).get("toy.fit")
    assert (entry.plugin, entry.distribution, entry.version, entry.metadata["extra"]) == \
        ("toy", "toy-dist", "1.2", "toy")
    assert main(["train", "--config", _write(tmp_path, "task: toy.fit\nepochs: 7\n"), f"out={tmp_path / 'o'}"]) == 0
    assert json.loads((tmp_path / "o" / "train_result.json").read_text())["metrics"] == {"score": 0.7}
    with pytest.warns(VlsdkPluginWarning, match="'toy.fit' is already registered by plugin 'toy'"):
        info = register_plugin(ClashingPlugin(), "clash", strict=False)
    assert info.status == "error"
    registry = task_registry(plugin_host)
    assert "toy.other" not in registry and registry.get("toy.fit").plugin == "toy"  # the clash rolled back
    assert "toy.fit" in dict(plugin_host.plugin_info("toy").registered).get("tasks", ())


def test_medical_config_trains_then_evaluates_the_saved_model(tmp_path, shared_data, capsys):
    out, data = tmp_path / "run", shared_data / "brats_lesion_mri"
    assert main(["train", str(CONFIGS / "medical_lesion.yaml"), "--quick", f"out={out}", f"data={data}", "device=cpu",
                 "max_steps=2", "eval_slices=4"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["task"] == "medical.lesion" and summary["primary_metric"] == "dice_mean"
    assert _finite(summary["primary"]) and summary["steps"] == 2 and summary["settings"]["model"] == "tiny"
    for name in ("predictions.png", "model/task.json", "model/config.json", "train/checkpoint/trainer_state.pt",
                 "report/report.html"):
        assert (out / name).is_file(), f"medical.lesion did not write {name}"
    assert "[train] medical.lesion done in" in capsys.readouterr().out
    assert main(["eval", str(out / "model"), f"out={tmp_path / 'eval'}"]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["primary"] == summary["primary"]  # the same model, data and held-out slices


def test_medical_quick_under_the_file_and_the_command_line_over_both():
    from vlsdk.tasks import get_task
    from vlsdk.tasks.config import read_config_file, resolve_settings

    task, config = get_task("medical.lesion"), read_config_file(CONFIGS / "medical_lesion.yaml")
    full = resolve_settings(task, config, "medical_lesion.yaml")
    assert (full.model, full.roi_size, full.max_steps, full.modalities) == ("small", 128, 600, ["flair", "t1c"])
    quick = resolve_settings(task, config, "medical_lesion.yaml", {"model": "edge", "held_out": "brats_2013_pat0004_1"},
                             quick=True)
    assert (quick.model, quick.roi_size, quick.max_steps, quick.batch_size) == ("edge", 96, 6, 4)
    assert quick.held_out == ["brats_2013_pat0004_1"] and quick.train_splits == ["train"]


def test_medical_task_runs_data_parallel_under_torchrun(tmp_path, shared_data):
    import os
    import subprocess

    import torch

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vlsdk",
           "train", str(CONFIGS / "medical_lesion.yaml"), "--quick", f"out={out}", "device=cpu",
           f"data={shared_data / 'brats_lesion_mri'}", "max_steps=2", "batch_size=2", "eval_slices=4"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[train] medical.lesion done in") == 1  # rank 0 evaluates and reports
    state = torch.load(out / "train" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2 and state["samples_seen"] == 2 * 2 * 2  # steps x batch_size x 2 ranks
    assert _finite(json.loads((out / "metrics.json").read_text())["primary"])


#: driving task -> (example config, overrides of a CI-sized run, files the run must write)
DRIVING = {
    "driving.bev": ("driving_bev.yaml", ["epochs=1", "train_scenes=2", "test_scenes=1"],
                    ["predictions.png", "model/task.json", "train/checkpoint/trainer_state.pt", "train/curves.png",
                     "nuscenes_eval/synthetic/submission.json", "nuscenes_eval/data/metrics_summary.json"]),
    "driving.depth": ("driving_depth.yaml", ["max_steps=2", "train_scenes=1", "test_scenes=1"],
                      ["predictions.png", "model/task.json", "train/checkpoint/trainer_state.pt"]),
}


@pytest.mark.parametrize("task", sorted(DRIVING))
def test_driving_config_trains_then_evaluates_the_saved_model(task, tmp_path, shared_data, capsys):
    config, overrides, files = DRIVING[task]
    out, data = tmp_path / "run", shared_data / "nuscenes_mini"
    assert main(["train", str(CONFIGS / config), "--quick", f"out={out}", f"data={data}", "device=cpu",
                 *overrides]) == 0, capsys.readouterr().err
    summary = json.loads((out / "metrics.json").read_text())
    primary = summary["primary_metric"]
    assert summary["task"] == task and _finite(summary["primary"]) and summary["settings"]["model"] == "tiny"
    for name in files:
        assert (out / name).is_file(), f"{task} did not write {name}"
    assert f"[train] {task} done in" in capsys.readouterr().out
    assert main(["eval", str(out / "model"), f"out={tmp_path / 'eval'}"]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["primary"] == summary["primary"] and again["primary_metric"] == primary  # the same model, data, seed


def test_driving_task_runs_data_parallel_under_torchrun(tmp_path, shared_data):
    import os
    import subprocess

    import torch

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vlsdk",
           "train", str(CONFIGS / "driving_bev.yaml"), "--quick", f"out={out}", "device=cpu",
           f"data={shared_data / 'nuscenes_mini'}", "epochs=1", "train_scenes=2", "test_scenes=1", "batch_size=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[train] driving.bev done in") == 1  # rank 0 evaluates and reports
    state = torch.load(out / "train" / "checkpoint" / "trainer_state.pt", weights_only=True)
    # 2 scenes x 4 keyframes = 8 samples, 2 per rank and step: an epoch is 2 steps of 4 samples
    assert state["step"] == 2 and state["samples_seen"] == 2 * 2 * 2
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["primary_metric"] == "car_ap_2m" and _finite(summary["primary"])
    assert (out / "model" / "task.json").is_file()

"""``vlsdk train`` on each domain's example config: train, evaluate the saved model, quick values, torchrun."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from vlsdk.cli.main import main
from vlsdk.plugins import PluginHost, use_host

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


def _finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def test_list_names_every_domain_task_and_its_plugin(capsys):
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    for task, plugin in (("medical.lesion", "medical"), ("industrial.pcb", "industrial"), ("driving.bev", "driving"),
                         ("driving.depth", "driving")):
        assert any(line.split()[:3] == [task, plugin, "task"] for line in out.splitlines()), out


def test_industrial_config_trains_then_evaluates_the_saved_model(tmp_path, shared_data, capsys):
    out, data = tmp_path / "run", shared_data / "deeppcb"
    assert main(["train", str(CONFIGS / "industrial_pcb.yaml"), "--quick", f"out={out}", f"data={data}", "device=cpu",
                 "max_steps=2", "train_pairs=4", "eval_pairs=2"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["task"] == "industrial.pcb" and summary["primary_metric"] == "map_deeppcb"
    assert _finite(summary["primary"]) and summary["steps"] == 2 and summary["settings"]["model"] == "tiny"
    for name in ("predictions.png", "model/task.json", "model/config.json", "model/README.md",
                 "train/checkpoint/trainer_state.pt", "report/report.html"):
        assert (out / name).is_file(), f"industrial.pcb did not write {name}"
    assert main(["eval", str(out / "model"), f"out={tmp_path / 'eval'}"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["primary"] == summary["primary"]


def test_industrial_quick_under_the_file_and_the_command_line_over_both(tmp_path):
    from vlsdk.tasks import get_task
    from vlsdk.tasks.config import read_config_file, resolve_settings

    task, config = get_task("industrial.pcb"), read_config_file(CONFIGS / "industrial_pcb.yaml")
    quick = resolve_settings(task, config, "industrial_pcb.yaml", {"epochs": 5, "model": "edge"}, quick=True)
    assert quick.model == "edge" and quick.epochs == 5  # the command line over --quick
    assert quick.image_size == 256 and quick.num_workers == 0  # --quick over the file
    full = resolve_settings(task, config, "industrial_pcb.yaml")
    assert full.image_size == 640 and full.model == "small" and full.lr == 1e-3  # the file as written
    path = tmp_path / "t.json"  # JSON configs too
    path.write_text(json.dumps({"task": "industrial.pcb", "epochs": 1, "precision": "bf16"}))
    as_json = resolve_settings(task, read_config_file(path), str(path))
    assert as_json.epochs == 1 and as_json.precision == "bf16"


def test_missing_extra_names_the_pip_install(tmp_path, monkeypatch, capsys):
    # a really missing dependency: importing monai fails, so the medical plugin reports its extra
    monkeypatch.setitem(sys.modules, "monai", None)
    monkeypatch.delitem(sys.modules, "vlsdk_medical.plugin", raising=False)
    monkeypatch.setenv("VLSDK_LOAD_PLUGINS", "medical")
    with use_host(PluginHost()):
        status = main(["train", str(CONFIGS / "medical_lesion.yaml"), f"out={tmp_path}"])
        err = capsys.readouterr().err
        assert status == 2
        assert "medical.lesion" in err and 'pip install "vlsdk[medical]"' in err
        assert main(["train", "--list"]) == 0
        assert 'pip install "vlsdk[medical]"' in capsys.readouterr().out


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

"""``vlsdk train``: listing, config errors that name the file and key, plugin tasks, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlsdk.cli.main import main
from vlsdk.plugins import VlsdkPluginWarning, hookimpl
from vlsdk.tasks import RunSettings, Task, help_field
from vlsdk.tasks.registry import task_registry

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "coco_detection.yaml"


def test_list_names_the_tasks_and_their_plugins(capsys):
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    for task, plugin in (("detection", "vlsdk"), ("segmentation", "vlsdk"), ("industrial.pcb", "industrial")):
        assert any(line.split()[:2] == [task, plugin] for line in out.splitlines()), out
    assert main(["train", "--list", "--json"]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    assert listed["detection"]["kind"] == "task" and listed["industrial.pcb"]["extra"] == "industrial"


def _write(tmp_path: Path, text: str, name: str = "task.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("text", "overrides", "expected"), [
    ("task: detectoin\n", [], ["'detectoin'", "'detection'"]),
    ("task: detection\nepoch: 3\n", [], ["task.yaml", "'epoch'", "'epochs'"]),
    ("task: detection\n", ["btach_size=2"], ["command line", "'btach_size'", "'batch_size'"]),
    ("task: detection\nbatch_size: many\n", [], ["task.yaml: batch_size", "'many'"]),
    ("task: detection\nprecision: fp8\n", [], ["task.yaml: precision", "'fp8'", "bf16"]),
    ("task: detection\nsteps: true\n", [], ["task.yaml", "'steps'", "'max_steps'"]),
    ("epochs: 3\n", [], ["task.yaml: needs a 'task' key"]),
    ("task: detection\ndata: /no/such/folder\n", [], ["/no/such/folder does not exist"]),
    ("- task\n- detection\n", [], ["task.yaml must hold a mapping of options", "got list"]),
    ("task: [detection\n", [], ["task.yaml cannot be read"]),
])
def test_bad_configs_say_which_file_key_and_what_was_expected(tmp_path, capsys, text, overrides, expected):
    status = main(["train", _write(tmp_path, text), *overrides])
    err = capsys.readouterr().err
    assert status == 2, err
    for part in expected:
        assert part in err, err
    assert "Traceback" not in err


def test_missing_config_and_no_arguments(tmp_path, capsys):
    assert main(["train", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "pass a task config" in capsys.readouterr().err


@dataclass
class CountSettings(RunSettings):
    scale: float = help_field(0.5, "what the toy metric is multiplied by")


class CountTask(Task):
    """A task a plugin brings: datasets of numbers, a one-weight model, a metric; no pipeline of its own."""

    name, settings_type, primary_metric, description = "toy.count", CountSettings, "score", "a toy task"

    def datasets(self, settings, split):
        import torch

        return [(torch.full((1,), float(i)), torch.full((1,), 2.0 * i)) for i in range(8 if split == "train" else 4)]

    def build_model(self, settings, data):
        import torch

        class OneWeight(torch.nn.Linear):
            def save_pretrained(self, directory):  # what the runner asks of a model besides nn.Module
                from safetensors.torch import save_file

                Path(directory).mkdir(parents=True, exist_ok=True)
                save_file(self.state_dict(), str(Path(directory) / "model.safetensors"))

        return OneWeight(1, 1)

    def collate(self, samples):
        import torch

        return torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])

    def loss(self, model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean()

    def evaluate(self, model, data, settings):
        return {"score": settings.scale * len(data)}


class CountPlugin:
    @hookimpl
    def vlsdk_register_tasks(self, register):
        register("toy.count", CountTask, extra="toy")


class ClashingPlugin:
    @hookimpl
    def vlsdk_register_tasks(self, register):
        register("toy.other", CountTask)
        register("toy.count", type("OtherCount", (CountTask,), {}))  # another object under a taken name


def test_a_plugin_task_runs_from_the_command_line_and_clashes_roll_back(register_plugin, plugin_host, tmp_path,
                                                                        capsys):
    register_plugin(CountPlugin(), "toy", distribution="toy-dist", version="1.2")
    entry = task_registry(plugin_host).get("toy.count")
    assert (entry.plugin, entry.distribution, entry.version, entry.metadata["extra"]) == \
        ("toy", "toy-dist", "1.2", "toy")
    out = tmp_path / "o"
    assert main(["train", "--task", "toy.count", f"data={tmp_path}", f"out={out}", "epochs=2", "--batch-size", "4",
                 "--scale", "0.25", "--no-progress", "draw=0", "device=cpu"]) == 0
    assert "[train] toy.count done" in capsys.readouterr().out
    summary = json.loads((out / "metrics.json").read_text())
    assert (summary["primary_metric"], summary["primary"], summary["steps"]) == ("score", 1.0, 4)
    assert json.loads((out / "model" / "task.json").read_text())["settings"]["scale"] == 0.25
    with pytest.warns(VlsdkPluginWarning, match="'toy.count' is already registered by plugin 'toy'"):
        info = register_plugin(ClashingPlugin(), "clash", strict=False)
    assert info.status == "error"
    registry = task_registry(plugin_host)
    assert "toy.other" not in registry and registry.get("toy.count").plugin == "toy"  # the clash rolled back


def test_a_task_trains_data_parallel_under_torchrun(coco_dir, tmp_path):
    import torch

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vlsdk",
           "train", str(CONFIG), "--quick", f"out={out}", f"data={coco_dir}", "device=cpu", "max_steps=2",
           "batch_size=2", "draw=0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[train] detection done") == 1  # rank 0 evaluates and reports
    state = torch.load(out / "train" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2 and state["samples_seen"] == 2 * 2 * 2  # steps x batch_size x 2 ranks
    assert json.loads((out / "train" / "train_world.json").read_text())["world_size"] == 2


def test_resume_continues_each_stage_from_its_checkpoint(tmp_path):
    from vlsdk.tasks.runner import train

    task = CountTask()
    settings = task.settings(data=tmp_path, out=tmp_path / "o", epochs=2, batch_size=4, progress=False, draw=0,
                             device="cpu")
    first = train(task, settings)
    rows = (tmp_path / "o" / "train" / "metrics.jsonl").read_text()
    again = train(CountTask(), task.settings(**{**settings.__dict__, "resume": True}))
    assert again.steps == first.steps == 4  # the checkpoint was at the last step: nothing left to train
    assert (tmp_path / "o" / "train" / "metrics.jsonl").read_text() == rows  # no step trained twice

"""Experiment loggers (``TrainConfig.loggers``): TensorBoard event files read back with tensorboard's own
EventAccumulator, MLflow runs read back with MlflowClient (when mlflow is installed), and the errors of a
logger whose package is missing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from vlsdk.train import TrainConfig, Trainer
from vlsdk.train.loggers import ExperimentLog

pytest.importorskip("tensorboard", reason='TensorBoard logging needs the extra: pip install "vlsdk[tensorboard]"')


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    return TensorDataset(x, x @ torch.randn(4, 2, generator=g))


def _loss(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    x, y = batch
    err = model(x) - y
    return {"loss": err.pow(2).mean(), "mae": err.abs().mean().detach()}


def _eval(model: nn.Module) -> dict[str, float]:
    x, y = _data().tensors
    return {"mse": float((model(x) - y).pow(2).mean()), "one": 1.0}


def _config(tmp_path, **kw) -> TrainConfig:
    base = {"steps": 4, "batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "log_every": 1, "eval_every": 2,
            "progress": False, "out_dir": str(tmp_path / "run"), "device": "cpu", "amp": "off"}
    return TrainConfig(**{**base, **kw})


def _trainer(config: TrainConfig) -> Trainer:
    torch.manual_seed(0)
    return Trainer(nn.Linear(4, 2), _loss, _data(), config, eval_fn=_eval)


def _jsonl_series(run) -> dict[str, list[tuple[int, float]]]:
    """``{"<split>/<name>": [(step, value as float32), ...]}`` from metrics.jsonl."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for k, v in row.items():
            if k not in ("split", "step"):
                series.setdefault(f"{row['split']}/{k}", []).append((row["step"], float(np.float32(v))))
    return series


def _event_series(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_events_hold_every_logged_scalar_at_its_step(tmp_path):
    result = _trainer(_config(tmp_path, loggers=("tensorboard",))).fit()
    run = tmp_path / "run"
    expected = _jsonl_series(run)
    assert {"train/loss", "train/mae", "train/lr", "train/grad_norm", "eval/mse", "eval/one"} <= set(expected)
    assert [s for s, _ in expected["eval/mse"]] == [2, 4] and [s for s, _ in expected["train/loss"]] == [1, 2, 3, 4]
    assert _event_series(run) == expected  # same tags, steps and (float32) values
    # the default outputs are unchanged beside them
    assert result.files["tensorboard"] == run / "tensorboard"
    assert {"jsonl", "csv", "png"} <= set(result.files) and (run / "curves.png").stat().st_size > 1000
    assert json.loads((run / "train_config.json").read_text())["loggers"] == ["tensorboard"]


def test_resumed_run_purges_the_events_after_its_checkpoint(tmp_path):
    killed = _trainer(_config(tmp_path, loggers=("tensorboard",), save_every=2, eval_every=0))
    killed.stop_after = 3  # dies after logging step 3; the checkpoint is step 2
    killed.fit()
    run = tmp_path / "run"
    assert [s for s, _ in _event_series(run)["train/loss"]] == [1, 2, 3]
    _trainer(_config(tmp_path, loggers=("tensorboard",), save_every=2, eval_every=0)).fit(resume=True)
    expected = _jsonl_series(run)
    assert [s for s, _ in expected["train/loss"]] == [1, 2, 3, 4]  # step 3 of the killed run was dropped
    assert _event_series(run) == expected  # ... from the event files too: one value per step


def test_no_loggers_by_default(tmp_path):
    config = _config(tmp_path, steps=2, eval_every=0)
    assert config.loggers == ()
    result = _trainer(config).fit()
    assert not (tmp_path / "run" / "tensorboard").exists() and "tensorboard" not in result.files
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_loggers_from_files_and_the_command_line(tmp_path):
    assert TrainConfig().override(["loggers=tensorboard"]).loggers == ("tensorboard",)
    assert TrainConfig.from_dict({"loggers": ["tensorboard"]}, "run.yaml").loggers == ("tensorboard",)
    with pytest.raises(ValueError, match=r"^run\.yaml: loggers: unknown logger 'wandb'; expected some of "
                                         r"'tensorboard', 'mlflow'"):
        TrainConfig.from_dict({"loggers": ["wandb"]}, "run.yaml")
    with pytest.raises(ValueError, match="each logger once"):
        TrainConfig(loggers=("tensorboard", "tensorboard"))


def test_missing_tensorboard_is_named_when_the_options_are_built(tmp_path, monkeypatch):
    config = _config(tmp_path, loggers=("tensorboard",))  # built while tensorboard imports
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(ImportError) as info:
        _config(tmp_path, loggers=("tensorboard",))
    message = str(info.value)
    assert "TrainConfig.loggers 'tensorboard' needs tensorboard" in message
    assert 'pip install "vlsdk[tensorboard]"' in message and 'pip install -e ".[tensorboard]"' in message
    # a Trainer given options built before the package went missing fails at construction, not mid-run
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r'pip install "vlsdk\[tensorboard\]"'):
        _trainer(config)
    assert not (tmp_path / "run").exists()  # nothing was trained or written


def test_missing_mlflow_names_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match="TrainConfig.loggers 'mlflow' needs the mlflow package, which vlsdk does "
                                          "not install: pip install mlflow"):
        _config(tmp_path, loggers=("mlflow",))
    with pytest.raises(ImportError, match="pip install mlflow"):
        ExperimentLog(tmp_path / "run", ("mlflow",))


def test_mlflow_run_holds_every_logged_scalar_and_the_options(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the MLflow logger is tested only where mlflow is installed (vlsdk does "
                                         "not install it: pip install mlflow)")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow >= 3.x: a file store only when allowed
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "vlsdk-test")
    _trainer(_config(tmp_path, loggers=("mlflow",))).fit()
    run_dir = tmp_path / "run"
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient()
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["steps"] == "4"
    expected = {k: [(s, v) for s, v in series] for k, series in _jsonl_series(run_dir).items()}
    for tag, series in expected.items():
        history = sorted((m.step, float(np.float32(m.value))) for m in client.get_metric_history(run.info.run_id, tag))
        assert history == series, tag


def test_mlflow_resume_continues_the_run_and_an_unusable_store_is_named(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the MLflow logger is tested only where mlflow is installed (vlsdk does "
                                         "not install it: pip install mlflow)")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    killed = _trainer(_config(tmp_path, loggers=("mlflow",), save_every=2, eval_every=0))
    killed.stop_after = 3
    killed.fit()
    first = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"]
    _trainer(_config(tmp_path, loggers=("mlflow",), save_every=2, eval_every=0)).fit(resume=True)
    assert json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"] == first
    client = MlflowClient()
    assert client.get_run(first).info.status == "FINISHED"
    # step 3 of the killed run stays beside the resumed one's (documented: MLflow deletes no values)
    assert sorted(m.step for m in client.get_metric_history(first, "train/loss")) == [1, 2, 3, 3, 4]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://x")
    with pytest.raises(RuntimeError, match="TrainConfig.loggers 'mlflow': cannot log to MLflow's tracking URI "
                                           "'nosuchscheme://x'"):
        _trainer(_config(tmp_path, loggers=("mlflow",), out_dir=str(tmp_path / "other"))).fit()

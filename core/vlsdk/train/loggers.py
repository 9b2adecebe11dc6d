"""Experiment loggers beside ``metrics.jsonl``: TensorBoard event files and MLflow runs.

:class:`~vlsdk.train.TrainConfig` ``loggers`` names them (``("tensorboard",)``, ``("mlflow",)``);
``metrics.jsonl``, ``metrics.csv`` and ``curves.png`` are written whatever it holds. Each logged
row (``split`` train or eval, ``step``, scalars) goes to every logger as ``<split>/<name>`` at
its step, from rank 0 only.

- ``"tensorboard"``: event files in ``out_dir/tensorboard`` (``torch.utils.tensorboard``; the
  ``tensorboard`` extra installs the package). ``tensorboard --logdir out_dir/tensorboard``
  shows them. A resumed run purges the events after its checkpoint's step, as
  ``metrics.jsonl`` drops those rows.
- ``"mlflow"``: one MLflow run per ``out_dir`` in the experiment ``$MLFLOW_EXPERIMENT_NAME``
  (default ``"vlsdk"``) of MLflow's own tracking URI (``$MLFLOW_TRACKING_URI``, else MLflow's
  default), with the training options as parameters; a resumed run logs into the same MLflow
  run (recorded in ``out_dir/mlflow_run.json``), where the steps a killed run logged after its
  checkpoint keep their first values beside the new ones (MLflow deletes no metric values).
  vlsdk does not install MLflow; a tracking URI it cannot use is a ``RuntimeError`` at the
  start of :meth:`~vlsdk.train.Trainer.fit`, before the first step.

A logger whose package is missing is an error when the options are built (:func:`check_loggers`),
not in the middle of a run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlsdk.plugins.errors import require_extra
from vlsdk.train.log import MetricsLog

__all__ = ["LOGGERS", "ExperimentLog", "check_loggers"]

#: The logger names ``TrainConfig.loggers`` accepts.
LOGGERS = ("tensorboard", "mlflow")
MLFLOW_RUN = "mlflow_run.json"


def check_loggers(names: Sequence[str], *, import_now: bool = False) -> None:
    """Check that every logger in ``names`` is known and its package is installed.

    Args:
        names: logger names (see :data:`LOGGERS`).
        import_now: import the packages rather than only finding them, so that a broken install
            is reported too (the :class:`~vlsdk.train.Trainer` does, before it trains).

    Raises:
        ValueError: an unknown or repeated name.
        ImportError: a logger's package is missing or does not import; the message names the
            package and the ``pip install`` line.

    Example:
        >>> check_loggers(())
        >>> check_loggers(["wandb"])
        Traceback (most recent call last):
        ...
        ValueError: loggers: unknown logger 'wandb'; expected some of 'tensorboard', 'mlflow'
    """
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"loggers: unknown logger {name!r}; expected some of {', '.join(map(repr, LOGGERS))}")
    if len(set(names)) != len(names):
        raise ValueError(f"loggers: each logger once, got {list(names)}")
    if "tensorboard" in names:  # torch.utils.tensorboard imports the tensorboard package
        require_extra("tensorboard", "torch.utils.tensorboard" if import_now else "tensorboard",
                      requester="TrainConfig.loggers 'tensorboard'", import_now=import_now)
    if "mlflow" in names:
        try:
            if import_now:
                importlib.import_module("mlflow")
            elif importlib.util.find_spec("mlflow") is None:
                raise ModuleNotFoundError("No module named 'mlflow'", name="mlflow")
        except Exception as err:  # noqa: BLE001 - a broken install may raise anything
            raise ImportError(f"TrainConfig.loggers 'mlflow' needs the mlflow package, which vlsdk does not install: "
                              f"pip install mlflow ({type(err).__name__}: {err})", name="mlflow") from err


class ExperimentLog(MetricsLog):
    """:class:`~vlsdk.train.log.MetricsLog` that also sends every row to the experiment loggers.

    Args:
        directory: the run directory (``TrainConfig.out_dir``).
        loggers: logger names (see :data:`LOGGERS`); ``()`` writes ``metrics.jsonl`` only.
        resume: the step a resumed run continues from (rows and events after it are dropped);
            ``None`` for a fresh run.
        options: the training options, recorded as MLflow parameters.

    Raises:
        ValueError, ImportError: as :func:`check_loggers`.
    """

    def __init__(self, directory: str | Path, loggers: Sequence[str] = (), *, resume: int | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        check_loggers(loggers, import_now=True)
        super().__init__(directory, resume=resume)
        self.loggers: list[_TensorBoard | _MLflow] = []
        if "tensorboard" in loggers:
            self.loggers.append(_TensorBoard(self.directory, resume))
        if "mlflow" in loggers:
            self.loggers.append(_MLflow(self.directory, resume, options or {}))

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        """Append one row to ``metrics.jsonl`` and send its scalars to every logger as ``<split>/<name>``."""
        super().write(split, step, values)
        scalars = {f"{split}/{k}": float(v) for k, v in values.items()}
        for logger in self.loggers:
            logger.write(step, scalars)

    def finish(self) -> dict[str, Path]:
        """Write ``metrics.csv`` and ``curves.png`` and close the loggers; returns the files written."""
        out = super().finish()
        for logger in self.loggers:
            out |= logger.close()
        self.loggers = []
        return out


class _TensorBoard:
    """Scalars into event files under ``<run>/tensorboard``, flushed at every row."""

    def __init__(self, directory: Path, resume: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = directory / "tensorboard"
        # purge_step: readers drop the events a killed run wrote after the checkpoint it resumes from
        self.writer = SummaryWriter(str(self.path), purge_step=None if resume is None else resume + 1)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a run killed later keeps what was logged, as metrics.jsonl does

    def close(self) -> dict[str, Path]:
        self.writer.close()
        return {"tensorboard": self.path}


class _MLflow:
    """One MLflow run per run directory, through ``MlflowClient`` (no global active run)."""

    def __init__(self, directory: Path, resume: int | None, options: Mapping[str, Any]) -> None:
        import mlflow

        try:
            self._open(directory, resume, options)
        except Exception as err:  # noqa: BLE001 - MLflow raises its own types for an unusable store
            raise RuntimeError(f"TrainConfig.loggers 'mlflow': cannot log to MLflow's tracking URI "
                               f"{mlflow.get_tracking_uri()!r} ({type(err).__name__}: {str(err)[:300]}); set "
                               f"MLFLOW_TRACKING_URI to a tracking server (http://...) or a store this MLflow "
                               f"install supports, or leave 'mlflow' out of loggers") from None

    def _open(self, directory: Path, resume: int | None, options: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.record = directory / MLFLOW_RUN
        saved = json.loads(self.record.read_text(encoding="utf-8")) if resume is not None and \
            self.record.is_file() else None
        if saved is not None:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "vlsdk")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=directory.name,
                                     tags={"vlsdk.out_dir": str(directory.resolve())})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:500]) for k, v in options.items()])
        self.record.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.client.tracking_uri,
                                           "experiment": name}, indent=2) + "\n", encoding="utf-8")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def close(self) -> dict[str, Path]:
        self.client.set_terminated(self.run_id)
        return {"mlflow_run": self.record}

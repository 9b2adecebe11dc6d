"""What a task run leaves on disk: the saved model with its task record, ``metrics.json``, the report.

Everything here runs on rank 0 after training (:mod:`vlsdk.tasks.runner`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlsdk.models.model import VLModel
    from vlsdk.tasks.protocol import Task
    from vlsdk.tasks.settings import RunSettings

__all__ = ["METRICS_FILE", "TASK_FILE", "jsonable", "load_record", "run_facts", "save", "write_json", "write_report"]

#: Written beside a saved model: the task's registered name and its settings.
TASK_FILE = "task.json"
#: The run's summary under ``settings.out``.
METRICS_FILE = "metrics.json"


def save(task: Task, settings: RunSettings, model: VLModel, data: Any, directory: Path, *,
         training: Mapping[str, Any] | None = None) -> Path:
    """``save_pretrained`` plus ``task.json`` (the task's name and settings) and the task's metadata.

    Args:
        task: the task.
        settings: its settings.
        model: the trained model.
        data: a dataset of the task (its classes name the labels).
        directory: the model folder.
        training: facts of the run for the model card (seed, steps, metrics, command).
    """
    meta = dict(task.metadata(settings, data))
    if training:
        meta["training"] = {"data": str(settings.data), **meta.get("training", {}), **training}
    if meta and hasattr(model, "metadata"):
        model.metadata = _metadata(model, meta)
    model.save_pretrained(directory)
    record = {"task": task.name, "settings": jsonable(dataclasses.asdict(settings)), "metadata": jsonable(meta)}
    write_json(directory / TASK_FILE, record)
    return directory


def load_record(model_dir: str | Path) -> dict[str, Any]:
    """The ``task.json`` of a saved task model: ``{"task", "settings", "metadata"}``.

    Raises:
        FileNotFoundError: ``model_dir`` has no ``task.json``.
        ValueError: it is not JSON, or lacks ``task`` or ``settings``.
    """
    path = Path(model_dir) / TASK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {model_dir} was not saved by a vlsdk task "
                                "(vlsdk train CONFIG writes out/model/task.json)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record.get("task"), str) or not isinstance(record.get("settings"), dict):
            raise TypeError("'task' must be a name and 'settings' an object")
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ValueError(f"{path}: expected a JSON object with 'task' and 'settings' ({exc})") from None
    return record


def jsonable(value: Any) -> Any:
    """``value`` with paths as strings, tuples as lists and non-finite floats as strings."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return jsonable(value.item())
    return value


def run_facts(settings: RunSettings, steps: int, primary: tuple[str, float]) -> dict[str, Any]:
    """Facts of a training run for the model card: seed, steps, the primary metric, the command."""
    command = (" ".join(["vlsdk", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("vlsdk", "__main__.py")
               else " ".join(sys.argv))
    return {"seed": settings.seed, "steps": steps, "metrics": {primary[0]: primary[1]}, "command": command}


def _metadata(model: Any, meta: Mapping[str, Any]) -> Any:
    """The model's metadata object updated with the task's (where the model class has one)."""
    current = model.metadata
    if hasattr(current, "to_dict") and hasattr(type(current), "from_dict"):
        merged = {**current.to_dict(), **{k: v for k, v in meta.items() if v is not None}}
        return type(current).from_dict(merged)
    return meta


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(data), indent=2) + "\n", encoding="utf-8")


def write_report(task: Task, settings: RunSettings, summary: Mapping[str, Any], picture: Path | None) -> None:
    from vlsdk.report import Report

    report = Report(f"vlsdk task {task.name}", subtitle=task.description or None)
    report.section("Evaluation", f"Primary metric {summary['primary_metric']}: {summary['primary']:.4f} on "
                                 f"{summary['val_samples']} validation samples.")
    report.add_metrics({k: v for k, v in summary["metrics"].items() if not isinstance(v, (dict, list))})
    report.section("Training", f"{summary['steps']} steps on {summary['train_samples']} samples in "
                               f"{summary['seconds']:.1f} s on {summary['device']}.")
    curves = Path(settings.out) / "train" / "curves.png"
    if curves.is_file():
        report.add_image(curves, caption="training losses", name="curves.png")
    if picture is not None and Path(picture).is_file():
        report.section("Predictions").add_image(picture, caption="validation samples: ground truth and predictions",
                                                name="predictions.png")
    meta = summary.get("metadata") or {}
    if meta:
        rows = [{"what": f"classes ({head})", "value": ", ".join(names)}
                for head, names in (meta.get("class_names") or {}).items()]
        for key in ("channels", "scaling", "image_size", "voxel_spacing"):
            value = (meta.get("input") or {}).get(key)
            if value is not None:
                rows.append({"what": f"input {key.replace('_', ' ')}",
                             "value": ", ".join(map(str, value)) if isinstance(value, list) else str(value)})
        report.section("Model", f"Saved to {summary['model']} with what it expects (config.json, README.md).")
        report.add_table(rows)
    report.section("Settings").add_table([{"setting": k, "value": str(v)} for k, v in summary["settings"].items()])
    html_dir = Path(settings.out) / "report"
    report.write(html_dir)

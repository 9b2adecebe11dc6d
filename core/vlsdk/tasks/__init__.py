"""Tasks: one runtime for every domain.

A task (:class:`Task`) says how to build the model, the datasets of each split, the loss and the
evaluation; the runner (:func:`train`, :func:`evaluate`, :func:`load`) does everything else.
Configs name a registered task and compose registered datasets, transforms, metrics,
synthesizers, experts and heads by name (:mod:`vlsdk.tasks.config`); ``vlsdk train CONFIG``,
``vlsdk eval MODEL_DIR``, ``vlsdk predict`` and ``vlsdk export`` run any task.

Example:
    >>> from vlsdk.tasks import get_task
    >>> task = get_task("detection")
    >>> task.settings(data="boards", image_size=256).image_size
    256
"""

from __future__ import annotations

from vlsdk.tasks.protocol import Split, Stage, Task
from vlsdk.tasks.registry import get_task, task_registry
from vlsdk.tasks.runner import RunResult, evaluate, load, train
from vlsdk.tasks.settings import Precision, RunSettings, help_field

__all__ = ["Precision", "RunResult", "RunSettings", "Split", "Stage", "Task", "evaluate", "get_task", "help_field",
           "load", "task_registry", "train"]

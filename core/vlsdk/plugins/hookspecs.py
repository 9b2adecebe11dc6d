"""The hooks a vlsdk plugin can implement.

Every hook is a ``vlsdk_register_<kind>(register)`` call. ``register`` is a registrar bound to the
registry of that kind *and* to the plugin being called, so each entry records the plugin name,
distribution and version it came from; the core owns storage, name-clash policy and error
messages. A plugin implements only the hooks it needs::

    # my_plugin.py, declared in pyproject.toml as
    # [project.entry-points."vlsdk.plugins"]
    # acme = "my_plugin"
    from vlsdk.plugins import hookimpl

    @hookimpl
    def vlsdk_register_experts(register):
        from my_plugin.experts import TextureExpert  # heavy imports inside the hook
        register("acme.texture", TextureExpert)

``register(name, obj, *, replace=False, **metadata)`` raises
:class:`~vlsdk.plugins.errors.DuplicateNameError` when ``name`` is taken by a different object
(re-registering the same object is a no-op) and ``ValueError``/``TypeError`` for a bad name or an
object of the wrong type. A hook that raises marks its plugin as ``"error"``: everything that
plugin registered is rolled back, the other plugins are unaffected.

Importing this module imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlsdk.plugins.markers import _hookspec

if TYPE_CHECKING:
    from vlsdk.plugins.commands import CommandRegistrar
    from vlsdk.plugins.registry import Registrar

__all__ = [
    "vlsdk_register_commands",
    "vlsdk_register_datasets",
    "vlsdk_register_demos",
    "vlsdk_register_experts",
    "vlsdk_register_heads",
    "vlsdk_register_input_readers",
    "vlsdk_register_metrics",
    "vlsdk_register_output_writers",
    "vlsdk_register_synthesizers",
    "vlsdk_register_tasks",
    "vlsdk_register_transforms",
]


@_hookspec
def vlsdk_register_experts(register: Registrar) -> None:
    """Register domain experts for the mixture-of-experts layers.

    Contract: ``factory(dim: int, **options) -> torch.nn.Module`` whose ``forward(x)`` maps the
    ``(n, dim)`` tokens routed to it to ``(n, dim)`` (``n`` may be 0). An expert that also needs
    the token neighbourhood declares a keyword parameter ``context`` and receives a
    :class:`vlsdk.models.features.ExpertContext`. Names look like ``<group>.<name>`` made of
    identifiers, the group being the domain: ``"medical.lesion"``. Check a factory with
    :func:`vlsdk.testing.check_expert`.

    Args:
        register: ``register(name, factory, *, replace=False, **metadata)``.

    Example::

        @hookimpl
        def vlsdk_register_experts(register):
            register("medical.lesion", LesionExpert, description="lesion texture")
    """


@_hookspec
def vlsdk_register_heads(register: Registrar) -> None:
    """Register task heads.

    Contract: ``factory(channels: Mapping[int, int], **options) -> vlsdk.heads.base.Head``, where
    ``channels`` maps each feature stride to its channel count.

    Args:
        register: ``register(task, factory, *, replace=False, **metadata)``.

    Example::

        @hookimpl
        def vlsdk_register_heads(register):
            register("lesion-seg", LesionSegmentationHead)
    """


@_hookspec
def vlsdk_register_datasets(register: Registrar) -> None:
    """Register dataset factories.

    Contract: ``factory(**options)`` returning a map-style dataset (``__getitem__`` and
    ``__len__``). Prefix names with the domain: ``"medical.msd-spleen"``.

    Args:
        register: ``register(name, factory, *, replace=False, **metadata)``.
    """


@_hookspec
def vlsdk_register_transforms(register: Registrar) -> None:
    """Register data transforms.

    Contract: ``factory(**options)`` returning a callable ``transform(sample) -> sample``.

    Args:
        register: ``register(name, factory, *, replace=False, **metadata)``.
    """


@_hookspec
def vlsdk_register_metrics(register: Registrar) -> None:
    """Register evaluation metrics.

    Contract: ``factory(**options)`` returning a metric object with ``update(...)``,
    ``compute()`` and ``reset()``.

    Args:
        register: ``register(name, factory, *, replace=False, **metadata)``.
    """


@_hookspec
def vlsdk_register_synthesizers(register: Registrar) -> None:
    """Register synthetic-data generators (for tests, demos and smoke training).

    Contract: ``factory(**options)`` returning a callable that makes samples from a seed, in the
    same format as the domain's datasets.

    Args:
        register: ``register(name, factory, *, replace=False, **metadata)``.
    """


@_hookspec
def vlsdk_register_demos(register: Registrar) -> None:
    """Register the domain's part of ``vlsdk demo``.

    Contract: ``run(out_dir: pathlib.Path, *, quick: bool, device: str, seed: int) ->
    vlsdk.demo.DemoResult``, on data the plugin synthesises itself (no downloads, no data folder),
    in about a minute on a 2-core CPU (``quick``: well under half a minute, for tests).

    Two optional keyword-only arguments may be added; ``vlsdk demo`` passes each only when the
    user gave it and ``run``'s signature accepts it (inspected once; otherwise the report says the
    domain ignored the option):

    * ``steps: int | None = None``: training steps (``--steps N``), overriding the demo's default;
      report what was trained in ``DemoResult.train_steps``.
    * ``data: pathlib.Path | None = None``: a real folder of the domain's dataset
      (``--data DOMAIN=PATH``, checked to exist) to run on instead of synthetic data; raise a
      ``ValueError`` naming the folder when it does not hold the expected layout.

    Args:
        register: ``register(name, run, *, replace=False, **metadata)``; name = the domain.
    """


@_hookspec
def vlsdk_register_tasks(register: Registrar) -> None:
    """Register tasks for ``vlsdk train``, ``vlsdk eval`` and the runner (:mod:`vlsdk.tasks`).

    Contract: a subclass of :class:`vlsdk.tasks.Task`: its settings dataclass (``settings_type``,
    the config keys and command-line options), ``datasets``, ``build_model``, ``loss``,
    ``evaluate`` with a ``primary_metric``, and optionally ``predict``, ``render``, ``stages``,
    ``metadata``. Names look like ``<domain>.<task>`` (``"medical.lesion"``); the core's generic
    tasks are ``detection`` and ``segmentation``.

    Args:
        register: ``register(name, task_class, *, replace=False, **metadata)``; ``extra="medical"``
            names the extra the task needs.

    Example::

        @hookimpl
        def vlsdk_register_tasks(register):
            from acme.task import ScratchTask

            register("acme.scratches", ScratchTask, description=ScratchTask.description)
    """


@_hookspec
def vlsdk_register_commands(register: CommandRegistrar) -> None:
    """Add subcommands to the ``vlsdk`` command line.

    The core's own commands (``plugins``, ``info``, ...) are registered through this hook too.

    Args:
        register: ``register(name, run, *, help, configure=None, description=None,
            replace=False, **metadata)`` where ``configure(parser: argparse.ArgumentParser)``
            adds the command's arguments and ``run(args: argparse.Namespace) -> int | None``
            executes it (``None`` means exit status 0).

    Example::

        @hookimpl
        def vlsdk_register_commands(register):
            def configure(parser):
                parser.add_argument("path")

            def run(args):
                print(convert(args.path))

            register("dicom2nii", run, help="convert a DICOM series", configure=configure)
    """


@_hookspec
def vlsdk_register_input_readers(register: Registrar) -> None:
    """Register file types that ``vlsdk predict`` reads into model inputs.

    Contract: a :class:`vlsdk.predict_io.InputReader` whose ``read(path, model, model_dir)``
    returns a :class:`vlsdk.predict_io.PredictInput` (``(B, C, H, W)`` model inputs plus what
    the domain's writers need, e.g. the volume's affine). Names look like
    ``<domain>.<format>``: ``"medical.nifti"``; the name is the inputs' ``kind``.

    Args:
        register: ``register(name, reader, *, replace=False, **metadata)``.

    Example::

        @hookimpl
        def vlsdk_register_input_readers(register):
            from vlsdk.predict_io import InputReader
            from acme.io import read_raw

            register("acme.raw", InputReader(suffixes=(".raw",), read=read_raw))
    """


@_hookspec
def vlsdk_register_output_writers(register: Registrar) -> None:
    """Register how ``vlsdk predict`` writes the predictions of a head task.

    Contract: a :class:`vlsdk.predict_io.OutputWriter` for one head ``task`` (and, optionally,
    only some input kinds) whose ``write(prediction: HeadPrediction) -> dict`` writes files into
    ``prediction.out_dir`` and returns the JSON-ready ``predictions.json`` entry. A plugin
    writer wins over the core's writer for the same task.

    Args:
        register: ``register(name, writer, *, replace=False, **metadata)``.

    Example::

        @hookimpl
        def vlsdk_register_output_writers(register):
            from vlsdk.predict_io import OutputWriter
            from acme.io import write_mask

            register("acme.mask", OutputWriter(task="segmentation", write=write_mask, inputs=("acme.raw",)))
    """

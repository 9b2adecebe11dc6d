"""``vlsdk export onnx``: a saved model to ONNX (and INT8), with a parity check.

Declared as :data:`EXPORT_COMMAND`, a core :class:`~vlsdk.plugins.commands.Command`. Importing
this module imports no torch; ``run`` does.

Example:
    ``vlsdk export onnx --model runs/pcb --out pcb.onnx --image-size 512 512 --int8``
"""

from __future__ import annotations

import argparse

from vlsdk.plugins.commands import Command

__all__ = ["EXPORT_COMMAND", "configure_export", "run_export"]


def configure_export(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vlsdk export`` (one sub-command per format; ``onnx`` for now).

    Args:
        parser: the ``export`` subcommand's parser.
    """
    formats = parser.add_subparsers(title="formats", metavar="FORMAT", dest="export_format")
    formats.required = True
    onnx = formats.add_parser("onnx", help="ONNX with the static all-experts MoE path (onnxruntime)",
                              description="Export a model saved with save_pretrained() to ONNX: every head "
                                          "(or --heads), every expert, dynamic batch, fixed image size.")
    onnx.add_argument("--model", required=True, metavar="DIR", help="a directory written by save_pretrained()")
    onnx.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    onnx.add_argument("--image-size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"),
                      help="input image size, fixed in the graph (default 224 224)")
    onnx.add_argument("--heads", nargs="*", default=None, metavar="NAME",
                      help="heads to export (default: all; none given: the feature pyramid)")
    onnx.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    onnx.add_argument("--static-batch", action="store_true", help="fix the batch size instead of a dynamic axis")
    onnx.add_argument("--dynamic-size", action="store_true",
                      help="make the spatial axes dynamic too (parity is then also checked at a second size)")
    onnx.add_argument("--allow-tracer-warnings", action="store_true",
                      help="export even though the tracer warned that a value of the example input was frozen "
                           "into the graph (the warnings are printed and recorded in the file)")
    onnx.add_argument("--int8", action="store_true",
                      help="also write FILE.int8.onnx (onnxruntime dynamic INT8, routers and shared experts float)")
    onnx.add_argument("--no-check", action="store_true",
                      help="skip the onnxruntime-vs-PyTorch parity check (two batch sizes; two image sizes with "
                           "--dynamic-size)")
    onnx.add_argument("--atol", type=float, default=1e-4,
                      help="parity tolerance, absolute part (exit 1 above atol + rtol x |reference|; default 1e-4)")
    onnx.add_argument("--rtol", type=float, default=1e-4, help="parity tolerance, relative part (default 1e-4)")


def run_export(args: argparse.Namespace) -> int:
    """Run ``vlsdk export onnx``; exit 1 when a check fails or the model cannot be read.

    Prints the file's metadata (task, class names, input channels, scaling, image size), the
    parity table (one row per batch size, image size and output) and any tracer warning let
    through by ``--allow-tracer-warnings``. On a failed check no file is left at ``--out``.

    Args:
        args: parsed :func:`configure_export` options.
    """
    from pathlib import Path

    import torch

    from vlsdk.export.metadata_props import read_props
    from vlsdk.export.onnx import DEFAULT_OPSET, read_metadata, to_onnx
    from vlsdk.export.parity import ParityCase, ParityError, parity_table
    from vlsdk.export.quantize import int8_drift, quantize_onnx
    from vlsdk.export.tracing import TracerWarningError
    from vlsdk.models.model import VLModel

    if args.export_format != "onnx":  # pragma: no cover - argparse only offers onnx
        print(f"error: unknown export format {args.export_format!r}")
        return 2
    try:
        model = VLModel.from_pretrained(args.model).eval()  # with the metadata block of config.json
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot load a model from {args.model}: {exc}")
        return 1
    try:
        path = to_onnx(model, args.out, heads=args.heads, image_size=tuple(args.image_size),
                       opset=args.opset or DEFAULT_OPSET, dynamic_batch=not args.static_batch,
                       dynamic_size=args.dynamic_size, verify=not args.no_check, atol=args.atol, rtol=args.rtol,
                       allow_tracer_warnings=args.allow_tracer_warnings)
    except ParityError as exc:
        print(parity_table(exc.cases))
        print(f"error: {exc}")
        return 1
    except TracerWarningError as exc:
        print(f"error: {exc}")
        return 1
    except ValueError as exc:
        where = f" (metadata block of {Path(args.model) / 'config.json'})" if "metadata field" in str(exc) else ""
        print(f"error: {exc}{where}")
        return 1
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    for key, value in read_props(path).items():
        print(f"  {key}: {value}")
    meta = read_metadata(path)
    if meta["tracer_warnings"]:
        print(f"  tracer warnings allowed by --allow-tracer-warnings ({len(meta['tracer_warnings'])}):")
        for line in meta["tracer_warnings"]:
            print(f"    {line}")
    if "parity" in meta:
        cases = [ParityCase(**{**c, "image_size": tuple(c["image_size"]), "shape": tuple(c["shape"])})
                 for c in meta["parity"]["cases"]]
        print(f"parity (onnxruntime vs PyTorch, atol {args.atol:.0e} + rtol {args.rtol:.0e} x |reference|):")
        print(parity_table(cases))
    if args.int8:
        images = torch.randn(2, model.config.in_chans, *args.image_size, generator=torch.Generator().manual_seed(0))
        int8_path = quantize_onnx(path, Path(args.out).with_suffix(".int8.onnx"))
        print(f"wrote {int8_path} ({int8_path.stat().st_size / 2**20:.1f} MiB)")
        for name, row in int8_drift(path, int8_path, images).items():
            print(f"  int8 drift {name}: rel rms {row['rel_rms']:.2e}, max abs {row['max_abs']:.2e}")
    return 0


#: ``vlsdk export onnx --model DIR --out FILE [--int8] [--image-size H W]``.
EXPORT_COMMAND = Command(
    "export",
    run_export,
    help="export a saved model: `vlsdk export onnx --model DIR --out FILE [--int8]`",
    configure=configure_export,
)

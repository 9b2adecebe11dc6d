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
    onnx.add_argument("--int8", action="store_true",
                      help="also write FILE.int8.onnx (onnxruntime dynamic INT8, routers and shared experts float)")
    onnx.add_argument("--no-check", action="store_true",
                      help="skip the onnxruntime-vs-PyTorch parity check on a random batch")
    onnx.add_argument("--atol", type=float, default=1e-4, help="parity tolerance (exit 1 above it; default 1e-4)")


def run_export(args: argparse.Namespace) -> int:
    """Run ``vlsdk export onnx``; exit 1 when the parity check fails or the model cannot be read.

    Args:
        args: parsed :func:`configure_export` options.
    """
    from pathlib import Path

    import torch

    from vlsdk.export.onnx import DEFAULT_OPSET, to_onnx
    from vlsdk.export.parity import check_parity
    from vlsdk.export.quantize import int8_drift, quantize_onnx
    from vlsdk.models.model import VLModel

    if args.export_format != "onnx":  # pragma: no cover - argparse only offers onnx
        print(f"error: unknown export format {args.export_format!r}")
        return 2
    try:
        model = VLModel.from_pretrained(args.model).eval()
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot load a model from {args.model}: {exc}")
        return 1
    try:
        path = to_onnx(model, args.out, heads=args.heads, image_size=tuple(args.image_size),
                       opset=args.opset or DEFAULT_OPSET, dynamic_batch=not args.static_batch)
    except ValueError as exc:
        print(f"error: {exc}")
        return 1
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    status = 0
    images = torch.randn(2, model.config.in_chans, *args.image_size, generator=torch.Generator().manual_seed(0))
    if not args.no_check:
        errors = check_parity(model, path, images)
        worst = max(errors.values(), default=0.0)
        for name, err in errors.items():
            print(f"  parity {name}: max abs error {err:.2e}")
        if worst > args.atol:
            print(f"error: parity {worst:.2e} above --atol {args.atol:.0e}")
            status = 1
    if args.int8:
        int8_path = quantize_onnx(path, Path(args.out).with_suffix(".int8.onnx"))
        print(f"wrote {int8_path} ({int8_path.stat().st_size / 2**20:.1f} MiB)")
        for name, row in int8_drift(path, int8_path, images).items():
            print(f"  int8 drift {name}: rel rms {row['rel_rms']:.2e}, max abs {row['max_abs']:.2e}")
    return status


#: ``vlsdk export onnx --model DIR --out FILE [--int8] [--image-size H W]``.
EXPORT_COMMAND = Command(
    "export",
    run_export,
    help="export a saved model: `vlsdk export onnx --model DIR --out FILE [--int8]`",
    configure=configure_export,
)

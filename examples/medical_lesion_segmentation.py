"""Train a lesion segmenter on BraTS MRI, evaluate on a held-out patient, save model and overlay.

Whole tumour (label > 0) from FLAIR + T1c slices, with the vlsdk backbone, the ``medical.lesion``
MoE expert and the core segmentation head. Same as ``vlsdk medical-lesion``.

    python examples/medical_lesion_segmentation.py --quick                 # CPU smoke run, < 60 s
    python examples/medical_lesion_segmentation.py --device cuda --amp bf16 --epochs 30 --batch-size 32

Prints the Dice per held-out patient, writes ``<out>/model`` (``save_pretrained``),
``<out>/results.json`` and ``<out>/overlay.png`` (green: ground truth, red: prediction).
"""

from __future__ import annotations

import argparse
import sys

from vlsdk_medical.pipeline import add_arguments, run_from_args

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the pipeline.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

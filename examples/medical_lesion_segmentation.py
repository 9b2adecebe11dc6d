"""Train a lesion segmenter on BraTS MRI, evaluate on a held-out patient, save model and overlay.

Whole tumour (label > 0) from FLAIR + T1c slices, with the vlsdk backbone, the ``medical.lesion``
MoE expert and the core segmentation head: the ``medical.lesion`` task run by the task runtime.
Same as ``vlsdk medical-lesion`` (and, from a config file, ``vlsdk train
examples/configs/medical_lesion.yaml data=DIR``).

    python examples/medical_lesion_segmentation.py --quick                 # CPU smoke run, < 60 s
    python examples/medical_lesion_segmentation.py --device cuda --amp bf16 --epochs 30 --batch-size 32

Prints the Dice per held-out patient, writes ``<out>/model`` (``save_pretrained``),
``<out>/metrics.json``, ``<out>/predictions.png`` (green: ground truth, red: prediction) and
``<out>/report/``. ``--data`` defaults to ``../shared/data/brats_lesion_mri`` here.
"""

from __future__ import annotations

import argparse
import sys

from vlsdk_medical.cli import add_arguments, run_from_args

__all__ = ["main"]

DEFAULT_DATA = "../shared/data/brats_lesion_mri"


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the task.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(data=DEFAULT_DATA)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

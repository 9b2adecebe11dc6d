"""PCB defect detection on DeepPCB with vlsdk (the same as ``vlsdk pcb``).

CI, a few steps on a few pairs on a CPU (< 60 s)::

    python examples/industrial_pcb_defects.py --quick --out /tmp/pcb

Full run on a GPU (template as second channel, synthetic boards mixed 3:1)::

    python examples/industrial_pcb_defects.py --device cuda --amp bf16 --config small \
        --epochs 24 --batch-size 32 --synthetic-ratio 3 --out runs/pcb-full

Writes ``model/`` (``VLModel.save_pretrained``), ``metrics.json`` and ``predictions.png``, and
prints the per-class table (AP at DeepPCB's IoU > 0.33, AP@0.5, AP@0.5:0.95).
"""

from __future__ import annotations

import argparse
import os
import sys

# Only the industrial plugin is needed here; skip importing the medical and driving stacks (the core
# plugin always loads). Set VLSDK_LOAD_PLUGINS yourself to change that.
os.environ.setdefault("VLSDK_LOAD_PLUGINS", "industrial")

from vlsdk_industrial.cli import configure, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the pipeline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

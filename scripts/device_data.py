"""Pack ../shared/data small enough to travel to a GPU machine, and unpack it there.

The device machine sees only the checkout (64 MiB in all), not ``../shared``. DeepPCB's 2,500
binarised JPEGs (108 MB) become 1-bit PNGs (about 8 MB: the images are black and white, the JPEG
grey levels are compression ringing; 0.06% of pixels are mid-grey); every other set is copied as is::

    python scripts/device_data.py pack .pack                  # here: writes .pack/ (git-ignored)
    python scripts/device_data.py unpack .pack ../shared/data # there: DeepPCB back to JPEG files

After ``unpack`` the pipelines' default ``../shared/data/...`` paths work unchanged on the device.
Only the standard library, numpy and Pillow are used, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

COPIED = ("brats_lesion_mri", "nuscenes_mini", "kitti", "README.md")
THRESHOLD = 127  # DeepPCB pixels are 0 or 255 before JPEG compression


def _to_png(src: Path, dst: Path) -> None:
    grey = np.asarray(Image.open(src).convert("L"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey > THRESHOLD).convert("1").save(dst, optimize=True)


def _to_jpg(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).convert("L").save(dst, quality=100)


def _convert(pairs: list[tuple[Path, Path]], fn, threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: fn(*p), pairs))


def _mirror(src: Path, dest: Path, image_suffix: str, convert, out_suffix: str, threads: int) -> int:
    """Copy the plain sets and DeepPCB's text files; convert DeepPCB's ``image_suffix`` files."""
    for name in COPIED:
        if (src / name).is_dir():
            shutil.copytree(src / name, dest / name, dirs_exist_ok=True)
        elif (src / name).exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dest / name)
    pairs = []
    for f in sorted((src / "deeppcb").rglob("*")):
        out = dest / "deeppcb" / f.relative_to(src / "deeppcb")
        if f.suffix == image_suffix:
            pairs.append((f, out.with_suffix(out_suffix)))
        elif f.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)
    _convert(pairs, convert, threads)
    return len(pairs)


def pack(src: Path, dest: Path, threads: int = 8) -> None:
    """Write ``dest``: DeepPCB images as 1-bit PNG, its text files and the other sets copied."""
    if not (src / "deeppcb" / "PCBData").is_dir():
        raise SystemExit(f"{src}: expected the shared data folder (with deeppcb/PCBData); see its README.md")
    n = _mirror(src, dest, ".jpg", _to_png, ".png", threads)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"packed {n} DeepPCB images as 1-bit PNG; {dest} holds {size / 2**20:.1f} MiB")


def unpack(src: Path, dest: Path, threads: int = 16) -> None:
    """Rebuild the shared data layout at ``dest`` from a packed folder."""
    n = _mirror(src, dest, ".png", _to_jpg, ".jpg", threads)
    print(f"unpacked {n} DeepPCB images to {dest / 'deeppcb'}")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``pack DEST [--src DIR]`` or ``unpack SRC DEST``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack ../shared/data into DEST")
    p.add_argument("dest", type=Path)
    p.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    u = sub.add_parser("unpack", help="rebuild the data layout from SRC at DEST")
    u.add_argument("src", type=Path)
    u.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "pack":
        pack(args.src, args.dest)
    else:
        unpack(args.src, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

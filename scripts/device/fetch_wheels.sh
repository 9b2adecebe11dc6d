#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (python 3.12, x86-64) into .whl/ (git-ignored),
# pinned to the versions this checkout's venv runs. Carry .whl and .pack (scripts/device_data.py)
# with the run and start the command with `source scripts/device/setup.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${VLSDK_VENV:-.venv}/bin/python"
mkdir -p .whl
pkgs="monai pydicom nibabel albumentations albucore pycocotools nuscenes-devkit pyquaternion shapely descartes
      fire termcolor cachetools pydantic pydantic_core typing-inspection annotated-types simsimd stringzilla
      parameterized"
for name in $pkgs; do
    version="$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
    [ -n "$version" ] || { echo "fetch_wheels: $name is not installed in the venv" >&2; exit 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d .whl "$name==$version"
done
du -sh .whl

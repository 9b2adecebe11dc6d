#!/usr/bin/env bash
# Set up a virtual environment for vlsdk and run the demo or the tests.
#
#   bash scripts/bootstrap.sh demo [ARGS...]  # vlsdk demo ARGS... (report in ./vlsdk-demo)
#   bash scripts/bootstrap.sh test [ARGS...]  # python -m pytest ARGS...
#
# Creates the venv if missing, installs torch first when it does not import there, then
# `pip install -e ".[dev]"`, saying what it installs and how far it got (pip's full output goes to
# <venv>/bootstrap-pip.log). A second run skips installing while pyproject.toml is unchanged.
#
# Environment:
#   VLSDK_VENV        venv directory (default: <repo>/.venv)
#   VLSDK_PYTHON      interpreter that creates the venv (default: python3; needs >= 3.10)
#   VLSDK_TORCH_SPEC  what pip installs for torch (default: torch==2.13.0)
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(dirname "$(dirname "$SELF")")"
VENV="${VLSDK_VENV:-$ROOT/.venv}"
PYTHON="${VLSDK_PYTHON:-python3}"
TORCH_SPEC="${VLSDK_TORCH_SPEC:-torch==2.13.0}"
PY="$VENV/bin/python"
STAMP="$VENV/.vlsdk-bootstrap"

say() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,14p' "$SELF" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

create_venv() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; install Python >= 3.10 or set VLSDK_PYTHON"
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        die "vlsdk needs Python >= 3.10, but '$PYTHON' is $("$PYTHON" -c 'import platform; print(platform.python_version())'); set VLSDK_PYTHON to a newer interpreter"
    fi
    say "creating $VENV with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PYTHON" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt install python3-venv)"
}

stamp_value() {
    # What the installed state depends on: pyproject.toml, this script, the checkout, the torch spec.
    local digest
    digest="$("$PY" -c 'import hashlib, sys; print(*(hashlib.sha256(open(p, "rb").read()).hexdigest()[:16] for p in sys.argv[1:]))' \
        "$ROOT/pyproject.toml" "$SELF")"
    printf '%s %s %s\n' "$digest" "$ROOT" "$TORCH_SPEC"
}

pip_install() {
    # pip_install WHAT ROUGHLY PIP-ARGS...: say what is installed and roughly how long it takes, then
    # one line per requirement pip collects (a running count) and the elapsed time. pip's full
    # output goes to $LOG; its last lines are shown if it fails.
    local what="$1" roughly="$2" start=$SECONDS logged
    shift 2
    logged="$(wc -l <"$LOG")"
    say "installing $what ($roughly)"
    if ! "$PY" -m pip --disable-pip-version-check install --progress-bar off "$@" 2>&1 | tee -a "$LOG" | show_progress
    then
        tail -n "+$((logged + 1))" "$LOG" | tail -n 25 >&2
        die "installing $what failed; pip's full output is in $LOG"
    fi
    say "installed $what in $((SECONDS - start)) s"
}

show_progress() {
    # Read pip's output line by line (a pipe through awk or sed would hold lines back in a buffer).
    local line n=0
    while IFS= read -r line; do
        case "$line" in
            Collecting\ *|Processing\ *|Obtaining\ *)
                n=$((n + 1))
                line="${line#* }"
                line="${line%% *}"
                [[ "$line" == file://* ]] || line="${line##*/}"  # a wheel's file name, not its folder
                printf '[bootstrap]   %3d  %s\n' "$n" "$line" >&2 ;;
            Installing\ collected\ packages*)
                say "  installing what was collected (the longest step; no output until it ends)" ;;
        esac
    done
}

install() {
    LOG="$VENV/bootstrap-pip.log"
    : >"$LOG"
    if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
        pip_install "$TORCH_SPEC" "the CPU build: 190 MB to fetch, 750 MB installed, 1 to 4 minutes; a CUDA build is several GB" "$TORCH_SPEC"
    fi
    # The tests build wheels and install the example plugin with --no-build-isolation.
    pip_install "the build tools" "seconds" "setuptools>=77" wheel
    pip_install "vlsdk (editable) with the dev extras: monai, nuscenes-devkit, albumentations, onnxruntime, peft, pytest, triton (its CPU interpreter runs the MoE kernels' tests) and their dependencies" \
        "about 90 packages, 1.7 GB installed: 2 to 6 minutes" -e "$ROOT[dev]"
    stamp_value >"$STAMP"
}

ensure_env() {
    [ -x "$PY" ] || create_venv
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$VENV uses Python < 3.10; remove it (or set VLSDK_VENV) and run again"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value)" ] \
        && "$PY" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("torch") and u.find_spec("vlsdk")))'; then
        return 0
    fi
    install
}

main() {
    [ $# -ge 1 ] || usage
    local command="$1"
    shift
    case "$command" in
        demo|test) ;;
        -h|--help|help) usage ;;
        *) say "unknown command '$command'"; usage ;;
    esac
    ensure_env
    cd "$ROOT"
    case "$command" in
        demo)
            exec "$VENV/bin/vlsdk" demo "$@"
            ;;
        test)
            exec "$PY" -m pytest "$@"
            ;;
    esac
}

main "$@"

#!/usr/bin/env bash
# Set up a virtual environment for vlsdk and run the demo or the tests.
#
#   bash scripts/bootstrap.sh demo [ARGS...]  # vlsdk demo ARGS... (report in ./vlsdk-demo)
#   bash scripts/bootstrap.sh test [ARGS...]  # python -m pytest ARGS...
#
# Creates the venv if missing, installs torch first when it does not import there, then
# `pip install -e ".[dev]"`. A second run skips installing while pyproject.toml is unchanged.
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
    sed -n '2,13p' "$SELF" | sed 's/^# \{0,1\}//' >&2
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

install() {
    local pip=("$PY" -m pip --disable-pip-version-check)
    if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
        say "installing $TORCH_SPEC"
        "${pip[@]}" install -q --progress-bar off "$TORCH_SPEC"
    fi
    # The tests build wheels and install the example plugin with --no-build-isolation.
    "${pip[@]}" install -q --progress-bar off "setuptools>=68" wheel
    say "installing vlsdk (editable) with the dev extras"
    "${pip[@]}" install -q --progress-bar off -e "$ROOT[dev]"
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

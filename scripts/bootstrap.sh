# shellcheck shell=bash
# Sourced by scripts/demo and scripts/test: make ./.venv ready on a fresh Debian 12 / Raspberry Pi OS.
# Idempotent and quick when nothing changed (a stamp records what was installed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    # Install Debian packages that are missing; quiet when all are present.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "bootstrap: please install ${missing[*]} (no apt-get here)" >&2
        return 1
    fi
    echo "bootstrap: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

if ! command -v "$PYTHON" >/dev/null; then
    apt_install python3
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "bootstrap: Python 3.11 or newer is needed, found $("$PYTHON" --version)" >&2; exit 1; }
# Debian splits venv/ensurepip out of python3; a pyenv or self-built Python has them already.
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install "python3-venv"
fi

STAMP="$VENV/.bangtin-installed"
WANT=$(cat "$ROOT/constraints.txt" "$ROOT/setup.cfg" | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "bootstrap: installing Python packages into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "${ROOT}[test]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"

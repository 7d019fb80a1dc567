#!/usr/bin/env bash
# Install bangtin-agent as a service on Raspberry Pi OS Lite (Bookworm or Trixie, 64-bit) or Debian.
#
#   sudo ./scripts/install.sh [--dry-run] [--token-file FILE] [--no-cec]
#
# Idempotent: run it again after `git pull` to upgrade. It never overwrites /etc/bangtin/agent.yaml
# or the token. --dry-run prints every step and changes nothing.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
# Overridable for tests and staging images; a board uses the defaults.
PREFIX=${BANGTIN_PREFIX:-/opt/bangtin}
ETC=${BANGTIN_ETC:-/etc/bangtin}
UNIT=${BANGTIN_UNIT:-/etc/systemd/system/bangtin-agent.service}
SERVICE_USER=bangtin
DRY_RUN=0
TOKEN_SOURCE=""
WITH_CEC=1
PACKAGES=(python3 python3-venv fonts-dejavu-core libgbm1 libdrm2 libegl1 libgles2 libgl1-mesa-dri)

usage() { sed -n '2,8p' "$0"; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --token-file) TOKEN_SOURCE=${2:?--token-file needs a file}; shift ;;
        --no-cec) WITH_CEC=0 ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done
[ "$WITH_CEC" -eq 1 ] && PACKAGES+=(cec-utils v4l-utils)

run() {
    # Print each step; run it unless --dry-run.
    echo "+ $*"
    if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

copy_source() {
    # The project without its git history or a developer's venv.
    echo "+ tar -C $SRC --exclude=.git --exclude=.venv -cf - . | tar -C $1 -xf -"
    if [ "$DRY_RUN" -eq 0 ]; then
        tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=__pycache__ -cf - . | tar -C "$1" -xf -
    fi
}

if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo), or with --dry-run to see what it would do" >&2
    exit 1
fi

echo "== system packages"
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    echo "  all present: ${PACKAGES[*]}"
fi

echo "== service user"
if id "$SERVICE_USER" >/dev/null 2>&1; then
    echo "  $SERVICE_USER exists"
else
    run useradd --system --home-dir /var/lib/bangtin --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
for group in video render input; do
    if getent group "$group" >/dev/null; then
        run usermod -a -G "$group" "$SERVICE_USER"
    else
        echo "  no group $group on this system (skipped)"
    fi
done

echo "== application in $PREFIX"
run install -d -m 0755 "$PREFIX"
run rm -rf "$PREFIX/src.new"
run install -d -m 0755 "$PREFIX/src.new"
copy_source "$PREFIX/src.new"
run rm -rf "$PREFIX/src"
run mv "$PREFIX/src.new" "$PREFIX/src"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    run python3 -m venv "$PREFIX/venv"
fi
run "$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
run "$PREFIX/venv/bin/python" -m pip install -q -c "$PREFIX/src/constraints.txt" "$PREFIX/src"
run ln -sfn "$PREFIX/venv/bin/bangtin-agent" /usr/local/bin/bangtin-agent

echo "== configuration in $ETC"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC"
if [ -e "$ETC/agent.yaml" ]; then
    echo "  $ETC/agent.yaml exists: kept as it is"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$SRC/config/agent.example.yaml" "$ETC/agent.yaml"
fi
if [ -n "$TOKEN_SOURCE" ]; then
    if [ -e "$ETC/token" ]; then
        echo "  $ETC/token exists: kept as it is"
    else
        run install -m 0600 -o "$SERVICE_USER" -g "$SERVICE_USER" "$TOKEN_SOURCE" "$ETC/token"
    fi
fi

echo "== systemd unit"
run install -m 0644 "$SRC/systemd/bangtin-agent.service" "$UNIT"
run systemctl daemon-reload
run systemctl enable bangtin-agent.service

cat <<TXT

Installed. Next:
  1. edit $ETC/agent.yaml (device.id, source.url, security.manifest_keys; token_file: $ETC/token)
  2. check it:  sudo bangtin-agent check-config --config $ETC/agent.yaml
  3. start it:  sudo systemctl restart bangtin-agent && journalctl -u bangtin-agent -f
  4. ask it:    sudo bangtin-agent ctl --config $ETC/agent.yaml status
Later edits to $ETC/agent.yaml apply by themselves (no restart needed).
TXT

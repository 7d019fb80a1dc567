#!/usr/bin/env bash
# Install bangtin-agent as a service on Raspberry Pi OS Lite (Bookworm or Trixie, 64-bit) or Debian.
#
#   sudo ./scripts/install.sh [--dry-run] [--token-file FILE] [--province-key KEY]... [--no-cec]
#
# Idempotent: run it again after `git pull` to upgrade. It never overwrites /etc/bangtin/agent.yaml
# or the token. --province-key (the province's base64 Ed25519 key for provisioning bundles,
# repeatable) is written to /etc/bangtin/agent.d/10-province.yaml. --dry-run changes nothing.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
# Overridable for tests and staging images; a board uses the defaults.
PREFIX=${BANGTIN_PREFIX:-/opt/bangtin}
ETC=${BANGTIN_ETC:-/etc/bangtin}
STATE=${BANGTIN_STATE:-/var/lib/bangtin}
UNIT=${BANGTIN_UNIT:-/etc/systemd/system/bangtin-agent.service}
UDEV_RULES=${BANGTIN_UDEV_RULES:-/etc/udev/rules.d}
SERVICE_USER=bangtin
DRY_RUN=0
TOKEN_SOURCE=""
PROVINCE_KEYS=()
WITH_CEC=1
PACKAGES=(python3 python3-venv fonts-dejavu-core libgbm1 libdrm2 libegl1 libgles2 libgl1-mesa-dri)

usage() { sed -n '2,9p' "$0"; exit "${1:-0}"; }

# Messages in Vietnamese when the locale is vi_VN (the agent's own catalogue, agent/locale, read
# with Python's gettext: the C library would need the vi_VN locale generated); English otherwise.
LOCALE_VI=0
case "${LC_ALL:-${LC_MESSAGES:-${LANG:-}}}" in vi | vi_* | vi.*) LOCALE_VI=1 ;; esac
msg() {
    if [ "$LOCALE_VI" -eq 1 ] && command -v python3 >/dev/null 2>&1; then
        python3 -c 'import gettext, sys
print(gettext.translation("bangtin-agent", sys.argv[2], ["vi"], fallback=True).gettext(sys.argv[1]), end="")' \
            "$1" "$SRC/agent/locale"
    else
        printf '%s' "$1"
    fi
}
# say FORMAT [ARG...]: a translated printf format (the arguments are not translated).
say() {
    local format
    format=$(msg "$1")
    shift
    # shellcheck disable=SC2059  # the format is ours, from the catalogue
    printf "$format\n" "$@"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --token-file) TOKEN_SOURCE=${2:?--token-file needs a file}; shift ;;
        --province-key) PROVINCE_KEYS+=("${2:?--province-key needs a key}"); shift ;;
        --no-cec) WITH_CEC=0 ;;
        -h|--help) usage 0 ;;
        *) say "install.sh: unknown option %s" "$1" >&2; usage 2 ;;
    esac
    shift
done
[ "$WITH_CEC" -eq 1 ] && PACKAGES+=(cec-utils v4l-utils)
for key in "${PROVINCE_KEYS[@]}"; do
    # A typo here would leave a board that refuses every bundle: check it is a 32-byte Ed25519 key.
    if [ ${#key} -ne 44 ] || [ "$(printf '%s' "$key" | base64 -d 2>/dev/null | wc -c)" -ne 32 ]; then
        say "install.sh: --province-key: expected a base64 Ed25519 public key (44 characters), found %s" "$key" >&2
        exit 2
    fi
done

run() {
    # Print each step; run it unless --dry-run.
    echo "+ $*"
    if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

copy_source() {
    # The project without its git history or a developer's venv, owned by root and writable by
    # root only: the service runs this code, so nobody else (not the checkout's owner) may change it.
    echo "+ tar -C $SRC --exclude=.git --exclude=.venv -cf - . | tar -C $1 --no-same-owner --no-same-permissions -xf -"
    if [ "$DRY_RUN" -eq 0 ]; then
        tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=__pycache__ -cf - . \
            | tar -C "$1" --no-same-owner --no-same-permissions -xf -
    fi
    run chown -R root:root "$1"
    run chmod -R go-w "$1"
}

write_release_record() {
    # releases/<n>/bangtin-release.json: the wheels a release was made from (by SHA-256).
    echo "+ write $1/bangtin-release.json"
    if [ "$DRY_RUN" -eq 0 ]; then
        local shas
        shas=$(sha256sum "$2"/*.whl | awk '{printf "%s\"%s\"", (NR>1?",":""), $1}')
        printf '{"serial": 0, "version": "%s", "wheels": [%s]}\n' \
            "$("$1/bin/python" -P -c 'import agent; print(agent.__version__)')" "$shas" > "$1/bangtin-release.json"
    fi
}

write_province_keys() {
    # The province's provisioning keys in a drop-in of their own, root's: the technician's agent.yaml
    # stays untouched, and a bundle (agent.d/50-provision.yaml, written by the service) comes later.
    echo "+ write $1 (security.provision_keys: ${PROVINCE_KEYS[*]})"
    if [ "$DRY_RUN" -eq 0 ]; then
        local tmp
        tmp=$(mktemp)
        {
            echo "# Written by install.sh --province-key: the keys that sign this board's provisioning bundles"
            echo "# (PROTOCOL.md §12). Run install.sh again with --province-key to change them."
            echo "security:"
            echo "  provision_keys:"
            printf '    - "%s"\n' "${PROVINCE_KEYS[@]}"
        } > "$tmp"
        install -m 0640 -o root -g "$SERVICE_USER" "$tmp" "$1"
        rm -f "$tmp"
    fi
}

keep_wheels() {
    # Content-addressed like media: <store>/<sha256>, owned by the service (it adds to it).
    echo "+ copy $1/*.whl to $2/<sha256>"
    if [ "$DRY_RUN" -eq 0 ]; then
        local wheel sha
        for wheel in "$1"/*.whl; do
            sha=$(sha256sum "$wheel" | cut -d' ' -f1)
            install -m 0640 -o "$SERVICE_USER" -g "$SERVICE_USER" "$wheel" "$2/$sha"
        done
    fi
}

if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    say "install.sh: run as root (sudo), or with --dry-run to see what it would do" >&2
    exit 1
fi

say "== system packages"
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    say "  all present: %s" "${PACKAGES[*]}"
fi

say "== service user"
if id "$SERVICE_USER" >/dev/null 2>&1; then
    say "  %s exists" "$SERVICE_USER"
else
    run useradd --system --home-dir /var/lib/bangtin --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
for group in video render; do
    if getent group "$group" >/dev/null; then
        run usermod -a -G "$group" "$SERVICE_USER"
    else
        say "  no group %s on this system (skipped)" "$group"
    fi
done

say "== application in %s" "$PREFIX"
run install -d -m 0755 "$PREFIX"
run rm -rf "$PREFIX/src.new"
run install -d -m 0755 "$PREFIX/src.new"
copy_source "$PREFIX/src.new"
run rm -rf "$PREFIX/src"
run mv "$PREFIX/src.new" "$PREFIX/src"
# Release 0 is this install: a venv in releases/0, beside which the board installs the releases the
# province publishes (PROTOCOL.md §11, docs/updates.md). The wheels it is made from are kept in the
# board's wheel store, so a later release that shares them downloads nothing more.
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
NEW="$PREFIX/releases/0.new"
run rm -rf "$NEW"
run install -d -m 0755 "$PREFIX/releases"
run python3 -m venv "$NEW"
run "$NEW/bin/python" -m pip install -q --upgrade pip
run "$NEW/bin/python" -m pip wheel -q --no-deps -w "$BUILD" "$PREFIX/src"
run "$NEW/bin/python" -m pip download -q -d "$BUILD" -c "$PREFIX/src/constraints.txt" "$PREFIX/src"
run "$NEW/bin/python" -m pip install -q --no-index --find-links "$BUILD" "$BUILD"/*.whl
write_release_record "$NEW" "$BUILD"
run rm -rf "$PREFIX/releases/0"
run mv "$NEW" "$PREFIX/releases/0"
run rm -rf "$PREFIX/venv"  # the layout before releases
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE" "$STATE/update" "$STATE/update/wheels"
keep_wheels "$BUILD" "$STATE/update/wheels"
# A manual install is what runs from now on: a remote release comes again only with a higher serial.
run rm -f "$STATE/update/current" "$STATE/update/trial.json"

echo "== launcher in $PREFIX/launcher"
run install -d -m 0755 "$PREFIX/launcher"
run install -m 0755 "$PREFIX/src/launcher/bangtin_launch.py" "$PREFIX/launcher/bangtin-launch"
run install -m 0755 "$PREFIX/src/launcher/bangtin-agent" "$PREFIX/launcher/bangtin-agent"
run ln -sfn "$PREFIX/launcher/bangtin-agent" /usr/local/bin/bangtin-agent

say "== configuration in %s" "$ETC"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC"
if [ -e "$ETC/agent.yaml" ]; then
    say "  %s exists: kept as it is" "$ETC/agent.yaml"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$SRC/config/agent.example.yaml" "$ETC/agent.yaml"
fi
# agent.d: drop-ins merged over agent.yaml. root's, group-writable for the service with the sticky
# bit: the service can write a provisioning bundle's drop-in there (the unit's ReadWritePaths lets it
# through ProtectSystem=strict) but cannot remove or replace root's files (10-province.yaml), and
# the loader takes a service-owned drop-in only under the bundle's name (50-provision.yaml).
run install -d -m 1770 -o root -g "$SERVICE_USER" "$ETC/agent.d"
if [ ${#PROVINCE_KEYS[@]} -gt 0 ]; then
    write_province_keys "$ETC/agent.d/10-province.yaml"
elif [ -e "$ETC/agent.d/10-province.yaml" ]; then
    say "  %s exists: kept as it is" "$ETC/agent.d/10-province.yaml"
fi
if [ -n "$TOKEN_SOURCE" ]; then
    if [ -e "$ETC/token" ]; then
        say "  %s exists: kept as it is" "$ETC/token"
    else
        run install -m 0600 -o "$SERVICE_USER" -g "$SERVICE_USER" "$TOKEN_SOURCE" "$ETC/token"
    fi
fi

say "== USB sticks"
# Raspberry Pi OS Lite has no automounter: this rule mounts a stick's filesystem read-only under
# /media/bangtin-<name>, where the agent looks for provisioning bundles (docs/systemtest.md, "usb").
run install -m 0644 "$SRC/systemd/80-bangtin-usb.rules" "$UDEV_RULES/80-bangtin-usb.rules"
if [ -d /run/udev ]; then run udevadm control --reload; fi

say "== systemd unit"
run install -m 0644 "$SRC/systemd/bangtin-agent.service" "$UNIT"
run systemctl daemon-reload
run systemctl enable bangtin-agent.service

echo
say "Installed. Next:"
say "  1. edit %s (device.id, source.url, security.manifest_keys; token_file: %s)" "$ETC/agent.yaml" "$ETC/token"
say "  2. check it:  %s" "sudo bangtin-agent check-config --config $ETC/agent.yaml"
say "  3. start it:  %s" "sudo systemctl restart bangtin-agent && journalctl -u bangtin-agent -f"
say "  4. ask it:    %s" "sudo bangtin-agent ctl --config $ETC/agent.yaml status"
say "Later edits to %s apply by themselves (no restart needed)." "$ETC/agent.yaml"

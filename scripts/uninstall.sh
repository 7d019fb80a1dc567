#!/usr/bin/env bash
# Remove bangtin-agent's service and application. Keeps /etc/bangtin (config, token) and
# /var/lib/bangtin (cache, unsent proof-of-play records) unless --purge is given.
#
#   sudo ./scripts/uninstall.sh [--dry-run] [--purge]
set -euo pipefail

DRY_RUN=0
PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "uninstall.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

run() {
    echo "+ $*"
    if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "uninstall.sh: run as root (sudo), or with --dry-run" >&2
    exit 1
fi

if [ -e /etc/systemd/system/bangtin-agent.service ]; then
    run systemctl disable --now bangtin-agent.service
    run rm -f /etc/systemd/system/bangtin-agent.service
    run systemctl daemon-reload
fi
run rm -rf /opt/bangtin
run rm -f /usr/local/bin/bangtin-agent
if [ -e /etc/udev/rules.d/80-bangtin-usb.rules ]; then
    run rm -f /etc/udev/rules.d/80-bangtin-usb.rules
    if [ -d /run/udev ]; then run udevadm control --reload; fi
fi
if [ "$PURGE" -eq 1 ]; then
    run rm -rf /etc/bangtin /var/lib/bangtin
    if id bangtin >/dev/null 2>&1; then run userdel bangtin; fi
else
    echo "kept: /etc/bangtin (config, token) and /var/lib/bangtin (cache, records); --purge removes them"
fi

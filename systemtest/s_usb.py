"""USB provisioning on a real system (issue #14, PROTOCOL.md §12): a board installed with
`install.sh --province-key` and an empty config shows its enrolment screen; a technician plugs in
a USB stick with a bundle `refsource provision` made for it; the board mounts it headless (the udev
rule install.sh installs), applies it within 5 s, restarts in place and plays the province's
content after one sync. A stick with a bundle signed by another key changes nothing, and the
device's own pixels show the refusal.

The stick is a FAT image (mtools, no loop device) hot-plugged through QMP as a usb-storage device on
the board's XHCI controller; the enrolment screen's QR code is decoded from the device's screendump.
It runs last: it factory-resets the board and enrols it as another device.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from refsource.cli import keygen, provision
from systemtest.board import STORAGE, UNIT, Board
from systemtest.content import manifest as make_manifest
from systemtest.results import Results
from systemtest.s_install import save_png
from systemtest.s_service import _cursor, _write_config
from systemtest.s_update import _at, _wait_line
from systemtest.screen import Screen
from systemtest.source import BASE_PATH, TOKEN
from systemtest.util import StepFailed, step, wait_for
from systemtest.vm import SOURCE_IP, SOURCE_PORT, VmOptions

NEW_DEVICE = "xa-thu-nghiem-02"
APPLY_S = 5.0  # PROTOCOL.md §12: a valid bundle is applied within 5 s (here: of the stick's mount)
MOUNT_S = 10.0  # stick in -> mounted: udev, the kernel's usb-storage and vfat, systemd-mount (TCG is slow)
ALERT_RED = (176, 0, 0)  # the refusal band on the enrolment screen (agent/display/painters.py)
SOURCE_URL = f"http://{SOURCE_IP}:{SOURCE_PORT}{BASE_PATH}"

# The board with nothing but its screen: no device.id, no source.url (the enrolment screen's case).
EMPTY_CONFIG = {"display": {"width": 1280, "height": 720, "fullscreen": True, "power_on_command": None,
                            "power_off_command": None}}


def decode_qr(screen: Screen) -> list[str]:
    """The QR codes on the device's screen (pyzbar, a test dependency; needs libzbar0)."""
    from pyzbar import pyzbar  # type: ignore[import-untyped]  # no stubs; a test dependency

    grey = screen.pixels[1::3]  # the green channel: black and white either way
    return [found.data.decode() for found in pyzbar.decode((grey, screen.width, screen.height))]


def stick_image(path: Path, files: dict[str, Path]) -> Path:
    """A 16 MiB FAT16 stick (no partition table, as many sticks come) holding `files` at its root.
    mtools writes the image as a file: no loop device, no mount on the host. Modification times
    are kept (-m): a file that looks mid-copy is left for the next scan by the agent."""
    if shutil.which("mformat") is None or shutil.which("mcopy") is None:
        raise StepFailed("usb: make the sticks", "mtools is missing (scripts/systemtest installs it with apt)")
    path.unlink(missing_ok=True)
    subprocess.run(["mformat", "-C", "-i", str(path), "-T", "32768", "-h", "64", "-s", "32", "-v", "BANGTIN", "::"],
                   check=True, capture_output=True)
    for name, source in files.items():
        subprocess.run(["mcopy", "-m", "-i", str(path), str(source), f"::{name}"], check=True, capture_output=True)
    return path


def _mounts(board: Board) -> dict[str, str]:
    """USB mounts under /media: target -> options (findmnt's view in the board's own namespace)."""
    out = board.v.run("findmnt -rn -o TARGET,OPTIONS | grep '^/media/'").out
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _red_share(screen: Screen) -> float:
    """How much of the enrolment card's text side is the refusal band's red."""
    return screen.share(ALERT_RED, 0.16, 0.88, 0.5, 0.98, tolerance=20)


def _errors(board: Board, text: str) -> list[str]:
    return [e for e in board.status().get("errors", []) if text in e]


def _plug(board: Board, image: Path, name: str) -> tuple[float, str]:
    """Plug the stick in; returns (host monotonic when it was plugged, its mount point)."""
    before = set(_mounts(board))
    plugged = time.monotonic()
    board.v.plug_stick(image, name)
    mounted = wait_for(lambda: next((t for t in _mounts(board) if t not in before), None), MOUNT_S * 6,
                       f"the stick {name} mounted under /media (udev rule, systemd-mount)", interval=0.2)
    return plugged, mounted


def _unplug(board: Board, name: str, mount: str) -> None:
    board.v.unplug_stick(name)
    wait_for(lambda: mount not in _mounts(board), 30, f"{mount} unmounted once the stick is out", interval=0.3)


def usb(board: Board, results: Results) -> None:
    name = "usb"
    source = board.source
    with step("usb: factory reset to an empty config; the board boots with a USB port"):
        # Before the reset: a board without the rule fails here still playing (the recovery needs no re-enrolment).
        rule = board.v.run("cat /etc/udev/rules.d/80-bangtin-usb.rules")
        if rule.rc != 0:
            raise StepFailed("usb: factory reset to an empty config; the board boots with a USB port",
                             "no /etc/udev/rules.d/80-bangtin-usb.rules: install.sh did not install the USB rule")
        board.v.sh(f"systemctl stop {UNIT} && find {STORAGE} -mindepth 1 -delete && rm -f /etc/bangtin/token", timeout=120)
        _write_config(board, json.dumps(EMPTY_CONFIG) + "\n")
        board.v.shutdown()
        board.power_on(VmOptions(arch=board.image.arch, usb=True))
        board.wait_ready(180)
        offset = board.v.mono_offset()
    with step("usb: the enrolment screen on the device, its QR code read back"):
        codes = wait_for(lambda: [c for c in decode_qr(board.screen()) if c.startswith("bangtin:board?")], 60,
                         "a bangtin:board QR code on the device's screen", interval=1)
        screen = board.screen("enrolment")
        save_png(board, "enrolment")
        assert not screen.dark(), "the enrolment screen is dark"
        status = board.status()
        fingerprint = status.get("identity", {}).get("fingerprint", "")
        assert fingerprint and f"fp={fingerprint}" in codes[0], f"QR {codes[0]!r} vs ctl status {status.get('identity')}"
        assert _red_share(screen) < 0.005, "a refusal is shown before any stick"
        qr = codes[0]
        results.put(name, enrolment_qr=qr[:48] + "…", enrolment_fingerprint=fingerprint)
    sticks = board.workdir / "sticks"
    sticks.mkdir(exist_ok=True)
    stranger_key = sticks / "stranger-key.json"
    keygen(stranger_key)
    settings = ("source.poll_interval_s=10", "report.heartbeat_interval_s=30", "report.upload_interval_s=5",
                "source.token_file=null")
    manifest_keys = (source.key["public_key_b64"],)
    with step("usb: a stick with a bundle signed by another key is refused, and the screen says so"):
        bundle = sticks / f"bangtin-provision-{NEW_DEVICE}.stranger.json"
        provision(stranger_key, NEW_DEVICE, "http://10.0.2.99:8080/elsewhere", bundle, token="stolen",
                  manifest_keys=manifest_keys, board_key=qr, settings=settings)
        image = stick_image(sticks / "stranger.img", {f"bangtin-provision-{NEW_DEVICE}.json": bundle})
        _, mount = _plug(board, image, "stranger")
        refused = wait_for(lambda: _errors(board, "provisioning bundle refused"), APPLY_S + 5,
                           "the board to refuse the stranger's bundle", interval=0.5)
        shown = wait_for(lambda: s if _red_share(s := board.screen()) > 0.02 else None, 20,
                         "the refusal on the device's screen", interval=0.5)
        board.screen("refused")
        save_png(board, "refused")
        assert "signature" in refused[0], f"refused for another reason: {refused[0]}"
        assert board.v.run("test -e /etc/bangtin/agent.d/50-provision.yaml").rc != 0, "the stranger's bundle was written"
        sync = board.status().get("sync", {})
        assert sync.get("state") == "not enrolled", f"the board is no longer waiting for a bundle: {sync}"
        _unplug(board, "stranger", mount)
        results.put(name, stranger_refused=refused[0][:200], stranger_mount=mount,
                    refusal_red_share=round(_red_share(shown), 3))
    with step("usb: the province's stick enrols the board within 5 s of the mount"):
        source.publish({**make_manifest(board.files), "audience": [NEW_DEVICE]}, board.files, device=NEW_DEVICE)
        bundle = sticks / f"bangtin-provision-{NEW_DEVICE}.json"
        provision(source.provision_key_path, NEW_DEVICE, SOURCE_URL, bundle, token=TOKEN, manifest_keys=manifest_keys,
                  board_key=qr, settings=settings)
        image = stick_image(sticks / "province.img", {bundle.name: bundle})
        cursor = _cursor(board)
        plugged, mount = _plug(board, image, "province")
        mounted = time.monotonic()
        options = _mounts(board).get(mount, "")
        applied = _wait_line(board, cursor, "provisioning bundle serial", APPLY_S + 20, "the bundle applied")
        applied_s = _at(applied, offset) - mounted
        assert applied_s <= APPLY_S, f"applied {applied_s:.1f} s after the mount (> {APPLY_S:.0f} s)"
        for option in ("ro", "nosuid", "nodev", "noexec"):
            assert option in options.split(","), f"{mount} mounted with {options!r}, not {option}"
    with step("usb: after one sync the board plays the province's content"):
        synced = _wait_line(board, cursor, "is now current", 120, "the first manifest from the source")
        shown_at, item = board.wait_content(120, keep="provisioned")
        save_png(board, "provisioned")
        status = board.status()
        assert status.get("device") == NEW_DEVICE, f"ctl status device {status.get('device')!r}"
        files = board.v.sh("stat -c '%U %a %n' /etc/bangtin/agent.d/50-provision.yaml /etc/bangtin/agent.d/provision.token")
        assert files.splitlines() == ["bangtin 640 /etc/bangtin/agent.d/50-provision.yaml",
                                      "bangtin 600 /etc/bangtin/agent.d/provision.token"], files
        key = status.get("identity", {}).get("public_key")
        heartbeat = wait_for(lambda: next((h for h in source.heartbeats() if h.get("device") == NEW_DEVICE), None), 90,
                             f"a heartbeat from {NEW_DEVICE} at the source", interval=1)
        assert key is None or heartbeat.get("board_key") == key, f"heartbeat board_key {heartbeat.get('board_key')}"
        _unplug(board, "province", mount)
        results.put(name, stick_in_to_mounted_s=round(mounted - plugged, 1), mounted_to_applied_s=round(applied_s, 1),
                    applied_to_synced_s=round(_at(synced, offset) - _at(applied, offset), 1),
                    synced_to_content_s=round(shown_at - _at(synced, offset), 1),
                    stick_in_to_content_s=round(shown_at - plugged, 1), mount_options=options, first_item=item)
    with step("usb: on the enrolled board, the stranger's stick changes nothing"):
        before = board.v.sh("sha256sum /etc/bangtin/agent.d/50-provision.yaml")
        _, mount = _plug(board, sticks / "stranger.img", "stranger2")
        wait_for(lambda: _errors(board, "provisioning bundle refused"), APPLY_S + 5,
                 "the enrolled board to refuse the stranger's bundle", interval=0.5)
        board.wait_content(30)
        assert board.v.sh("sha256sum /etc/bangtin/agent.d/50-provision.yaml") == before, "the drop-in changed"
        assert board.status().get("device") == NEW_DEVICE
        _unplug(board, "stranger2", mount)

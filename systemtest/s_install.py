"""Install as a technician does, reboot, and check what the board shows and tells (issues #12, #16.1)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from systemtest.board import CONFIG, GUEST_SRC, UNIT, Board, agent_config
from systemtest.results import Results
from systemtest.source import TOKEN
from systemtest.util import StepFailed, step, wait_for

SECURITY_LINE = re.compile(r"Overall exposure level for \S+: ([0-9.]+) (\S+)")
# The unit's hardening as committed scores 1.5 (docs/systemtest.md); a unit edit (a new
# ReadWritePaths, a dropped setting) must not quietly give it back.
MAX_EXPOSURE = 2.0


def install(board: Board, results: Results, breakage: str | None = None) -> None:
    """Fresh stock system -> install.sh -> config -> reboot -> READY -> content on the device's screen."""
    name = "install"
    with step("boot the stock image"):
        boot_s = board.power_on()
        stock = board.v.sh("dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -c 'ok installed' || true")
        if stock.strip() == "1":
            raise StepFailed("boot the stock image", "python3-venv is already installed: the image is not stock")
    with step("install: copy the checkout"):
        board.install_source(breakage)
        board.v.write("/tmp/token", TOKEN.encode(), mode="0600")
    with step("install: scripts/install.sh"):
        started = time.monotonic()
        # The province's provisioning key too (PROTOCOL.md §12): every part then runs with the
        # drop-in it makes, and the usb part enrols a board with it.
        province_key = board.source.provision_key["public_key_b64"]
        run = board.v.run(f"cd {GUEST_SRC} && ./scripts/install.sh --token-file /tmp/token --province-key {province_key}",
                          timeout=900)
        install_s = time.monotonic() - started
        (board.workdir / "install.log").write_text(run.out + run.err)
        if run.rc != 0:
            raise StepFailed("install: scripts/install.sh", f"exited {run.rc}; last lines:\n{_tail(run.out + run.err)}")
    with step("install: configure the board"):
        # As the README says: edit agent.yaml (nano keeps the file's owner and mode), check it.
        board.v.write("/tmp/agent.yaml", agent_config(board.source).encode())
        board.v.sh(f"cat /tmp/agent.yaml > {CONFIG} && rm /tmp/agent.yaml")
        board.v.sh(f"bangtin-agent check-config --config {CONFIG}", what="bangtin-agent check-config")
        # agent.d: root's, writable by the service (sticky): a bundle can be written there, root's keys stay.
        owners = board.v.sh("stat -c '%U:%G %a %n' /etc/bangtin/agent.d /etc/bangtin/agent.d/10-province.yaml").splitlines()
        if owners != ["root:bangtin 1770 /etc/bangtin/agent.d", "root:bangtin 640 /etc/bangtin/agent.d/10-province.yaml"]:
            raise StepFailed("install: configure the board", f"agent.d as install.sh left it: {owners}")
        if province_key not in board.v.read("/etc/bangtin/agent.d/10-province.yaml").decode():
            raise StepFailed("install: configure the board", "10-province.yaml does not hold the --province-key")
        enabled = board.v.run(f"systemctl is-enabled {UNIT}").out.strip()
        if enabled != "enabled":
            raise StepFailed("install: configure the board", f"the unit is {enabled!r} after install.sh, not enabled")
    with step("reboot"):
        board.v.run("systemctl reboot --no-block", timeout=20)
        board.v.wait_exit(120)
    ready_host, ready_guest, content_s = boot_to_content(board, "boot: unit reaches READY", keep="installed")
    results.put(name, first_boot_to_guest_agent_s=round(boot_s, 1), install_s=round(install_s, 1),
                power_on_to_ready_s=round(ready_host, 1), boot_to_ready_guest_clock_s=round(ready_guest, 1),
                power_on_to_content_s=round(content_s, 1))


def boot_to_content(board: Board, ready_step: str, keep: str | None = None,
                    content_timeout: float = 120) -> tuple[float, float, float]:
    """Power on; returns (power-on -> READY seen, READY by the guest's monotonic clock, power-on -> content)."""
    with step("power on"):
        board.power_on()
    with step(ready_step):
        try:
            board.wait_ready(180)
        except Exception as exc:
            raise StepFailed(ready_step, f"{exc}\n{_tail(board.journal(), 25)}") from exc
        ready_host = time.monotonic() - board.v.started_mono
        entered = board.unit("ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]
        ready_guest = int(entered) / 1e6
    with step("screen: header, content and ticker on the device"):
        shown, _ = board.wait_content(content_timeout, keep=keep)
        content_s = shown - board.v.started_mono
    return ready_host, ready_guest, content_s


def checks(board: Board, results: Results) -> None:
    """What the booted, installed board tells: journal priorities, its unit's exposure, render path."""
    with step("journal: state changes at the right priorities"):
        entries = [json.loads(line) for line in board.journal(output="json").splitlines() if line.startswith("{")]
        messages = [(int(e.get("PRIORITY", 6)), str(e.get("MESSAGE", ""))) for e in entries]
        wanted = {"first frame on screen": 6, "is now current": 6, "starting as": 6}
        for text, priority in wanted.items():
            found = [p for p, m in messages if text in m]
            if not found:
                raise AssertionError(f"no journal line with {text!r}; journal:\n{_tail(board.journal(), 20)}")
            if found[0] != priority:
                raise AssertionError(f"{text!r} logged at priority {found[0]}, expected {priority}")
        if any(m.startswith("<") and m[1:2].isdigit() for _, m in messages):
            raise AssertionError("a journal message still carries its <N> prefix: journald did not parse it")
        results.put("install", journal_lines=len(messages),
                    journal_by_priority={str(p): sum(1 for q, _ in messages if q == p) for p in sorted({p for p, _ in messages})})
    with step("systemd-analyze security"):
        out = board.v.run(f"systemd-analyze security {UNIT}.service --no-pager", timeout=120).out
        (board.workdir / "security.txt").write_text(out)
        match = SECURITY_LINE.search(out)
        if not match:
            raise AssertionError(f"no exposure score in systemd-analyze output:\n{_tail(out)}")
        results.put("install", security_exposure=f"{match.group(1)} {match.group(2)}")
        assert float(match.group(1)) <= MAX_EXPOSURE, f"exposure {match.group(1)} is above {MAX_EXPOSURE}"
    with step("render path (issue #16.1)"):
        path = render_path(board)
        results.put("install", **path)
        assert path["display_driver"] == "KMSDRM", f"the agent does not draw through KMS: {path}"
        assert path["render_driver"] == "opengles2", f"SDL presents through {path['render_driver']!r}, not opengles2"
    with step("render path: a renderer that draws nothing is black on the device, and the board says so"):
        # The defect of #16.1 on purpose: desktop GL without libGL.so.1. The device's pixels stay dark
        # and the agent's own health must report it (its screenshot would look fine).
        dropin = f"/etc/systemd/system/{UNIT}.service.d/systemtest-opengl.conf"
        board.v.write(dropin, b"[Service]\nEnvironment=SDL_RENDER_DRIVER=opengl\n")
        board.v.sh(f"systemctl daemon-reload && systemctl restart {UNIT}", timeout=120)
        board.wait_ready(120)
        errors = wait_for(lambda: [e for e in board.ctl_status()["errors"] if "not reaching the screen" in e], 60,
                          "the board to report frames not reaching the screen", interval=2)
        dark = board.screen().dark()
        logged = [int(e.get("PRIORITY", 6)) for e in (json.loads(line) for line in board.journal(output="json").splitlines()
                                                      if line.startswith("{"))
                  if "not reaching the screen" in str(e.get("MESSAGE", ""))]
        assert logged and logged[-1] == 4, f"'frames are not reaching the screen' journal priorities {logged}, expected 4"
        board.v.sh(f"rm {dropin} && systemctl daemon-reload && systemctl restart {UNIT}", timeout=120)
        assert dark, "with the opengl renderer and no libGL.so.1 the device was lit: the check proves nothing here"
        board.wait_ready(120)
        board.wait_content(120)
        results.put("install", opengl_without_libgl="device dark; board reports: " + errors[0][:150])


def render_path(board: Board) -> dict[str, Any]:
    """What SDL drew through, as the board itself reports it, and the GL libraries present."""
    libs = board.v.run("ldconfig -p | grep -oE 'lib(GL|EGL|GLESv2|gbm)\\.so\\.[0-9]+' | sort -u").out.split()
    status = board.ctl_status()
    display = status.get("display", {})
    env = board.v.run(f"systemctl show {UNIT} -p Environment").out.strip()
    return {"gl_libraries": libs, "display_driver": display.get("driver"), "render_driver": display.get("render_driver"),
            "unit_environment": env.removeprefix("Environment=")}


def save_png(board: Board, name: str) -> Path | None:
    """The last screendump as PNG beside the logs, for a person to look at."""
    import os

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import pygame

    ppm = board.workdir / f"{board.v.name}.{name}.ppm"
    if not ppm.exists():
        return None
    png = ppm.with_suffix(".png")
    pygame.image.save(pygame.image.load(str(ppm)), str(png))
    return png


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_unit_state(board: Board, state: str, timeout: float) -> dict[str, str]:
    return wait_for(lambda: u if (u := board.unit()).get("ActiveState") == state else None, timeout,
                    f"{UNIT} ActiveState={state}", interval=0.5)


def prepare_and_install(board: Board, results: Results, breakage: str | None = None) -> None:
    """The province publishes the bulletin, then the technician installs the board."""
    from systemtest.content import make_files, manifest

    with step("source: publish the test bulletin"):
        files = make_files(board.workdir / "files")
        board.files = files
        serial = board.source.publish(manifest(files), files)
        results.put("install", bulletin_serial=serial)
    install(board, results, breakage)

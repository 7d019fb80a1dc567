"""Screen health for the heartbeat's `display` (issue 14): is anything plugged into the board, is
the TV on, and did frames go out.

A board whose agent plays perfectly behind an unplugged HDMI cable, or a TV left in standby by the
cleaner, is a dark public screen nobody reports. The kernel says which connectors have a display
(`/sys/class/drm/card*-*/status`, with the modes the display offers); HDMI-CEC says whether the TV
is on (`cec-ctl --give-device-power-status`, when the board has `cec-ctl` and `/dev/cec*`); the
renderer says how many frames it presented since the last heartbeat. "screen disconnected" goes to
`errors` while no connector has a display (a board without DRM — the dummy driver in CI — says
nothing about connectors at all).

Read on the caller's thread (the reporter, the control socket, MQTT); the CEC query takes a CEC
round trip, so its answer is kept for `CEC_EVERY_S`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.models import ProblemSink

CEC_EVERY_S = 300.0
CEC_TIMEOUT_S = 5.0
POWER_STATE = re.compile(r"pwr-state:\s*([a-z-]+)")
CONNECTOR = re.compile(r"card\d+-(.+)")
MAX_CONNECTORS = 8


@dataclass(frozen=True)
class Connector:
    name: str  # e.g. HDMI-A-1
    status: str  # connected, disconnected, unknown
    preferred_mode: str | None  # the display's first mode, e.g. 1920x1080


def drm_connectors(root: Path = Path("/")) -> list[Connector]:
    """The board's display connectors as the kernel sees them (writeback connectors are not screens)."""
    found = []
    for folder in sorted((root / "sys/class/drm").glob("card*-*"))[:MAX_CONNECTORS]:
        match = CONNECTOR.fullmatch(folder.name)
        if match is None or match.group(1).startswith("Writeback"):
            continue
        try:
            status = (folder / "status").read_text().strip()
        except OSError:
            continue
        try:
            modes = (folder / "modes").read_text().split()
        except OSError:
            modes = []
        found.append(Connector(match.group(1), status, modes[0] if modes else None))
    return found


def cec_power(run: Callable[[list[str]], str | None], root: Path = Path("/")) -> str | None:
    """The TV's power state over HDMI-CEC: on, standby, to-on, to-standby; None when the board has
    no CEC or the TV does not answer."""
    if not any((root / "dev").glob("cec*")):
        return None
    output = run(["cec-ctl", "--to", "0", "--give-device-power-status"])
    match = POWER_STATE.search(output or "")
    return match.group(1) if match else None


def run_cec(command: list[str]) -> str | None:
    tool = shutil.which(command[0])
    if tool is None:
        return None
    try:
        result = subprocess.run([tool, *command[1:]], capture_output=True, text=True, timeout=CEC_TIMEOUT_S,
                                check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout + result.stderr


class ScreenHealth:
    def __init__(self, frames: Callable[[], int], problems: ProblemSink, *, root: Path = Path("/"),
                 run: Callable[[list[str]], str | None] = run_cec, mono: Callable[[], float] = time.monotonic) -> None:
        self._frames = frames
        self._problems = problems
        self._root = root
        self._run = run
        self._mono = mono
        self._lock = threading.Lock()
        self._frames_at_last = frames()
        self._cec: str | None = None
        self._cec_due = 0.0

    def read(self, *, since_last: bool) -> dict[str, Any]:
        """The heartbeat's `display`. `since_last`: count frames from the previous heartbeat (and
        start counting again), as the heartbeat does; `ctl status` only looks."""
        connectors = drm_connectors(self._root)
        if connectors and not any(c.status == "connected" for c in connectors):
            self._problems.report("screen", "screen disconnected: no display on "
                                  + ", ".join(f"{c.name} ({c.status})" for c in connectors))
        else:
            self._problems.resolve("screen")
        with self._lock:
            frames = self._frames()
            drawn = frames - self._frames_at_last
            if since_last:
                self._frames_at_last = frames
            cec_due = self._mono() >= self._cec_due
            if cec_due:
                self._cec_due = self._mono() + CEC_EVERY_S
        if cec_due:
            power = cec_power(self._run, self._root)
            with self._lock:
                self._cec = power
        body: dict[str, Any] = {"frames": drawn}
        if connectors:
            body["connectors"] = [{"name": c.name, "status": c.status, "mode": c.preferred_mode} for c in connectors]
        with self._lock:
            if self._cec is not None:
                body["cec_power"] = self._cec
        return body

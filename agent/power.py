"""Screen power: when the screen goes dark (screen.on windows, `screen off`) the frame is black
always, and the display itself is put to standby when a command for that exists — HDMI-CEC
through `cec-ctl` by default (under KMS, not `vcgencmd display_power`). Alerts wake it.

Commands run on their own thread ("screen-power"): a TV that answers CEC slowly must never stall
the render loop. Only transitions run a command, and the latest wish wins.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import threading

log = logging.getLogger(__name__)

CEC_ON = "cec-ctl --to 0 --image-view-on"
CEC_OFF = "cec-ctl --to 0 --standby"
COMMAND_TIMEOUT_S = 15.0


def resolve_command(configured: str | None, cec_default: str) -> list[str] | None:
    """`auto` → the CEC command when `cec-ctl` is installed; None → no command; else the command line."""
    if configured is None or configured.strip() == "":
        return None
    if configured == "auto":
        return shlex.split(cec_default) if shutil.which("cec-ctl") else None
    return shlex.split(configured)


class ScreenPower:
    name = "screen-power"

    def __init__(self, on_command: list[str] | None, off_command: list[str] | None, stop: threading.Event) -> None:
        self._commands = {True: on_command, False: off_command}
        self._stop = stop
        self._wish: bool | None = None
        self._applied: bool | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def start(self) -> None:
        if self._commands[True] is None and self._commands[False] is None:
            return  # nothing to run: black frames alone
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._changed.notify()

    def health(self) -> dict[str, object]:
        return {"commands_run": self.runs, "lit": self._applied}

    def set_commands(self, on_command: list[str] | None, off_command: list[str] | None) -> None:
        """A live config edit; a thread is started if there was none."""
        self._commands = {True: on_command, False: off_command}
        if self._thread is None:
            self.start()

    def set(self, lit: bool) -> None:
        """Called by the display loop with the screen's state; cheap when nothing changed, and it
        never waits: with no thread (no power command) there is nothing to tell."""
        if lit == self._wish:
            return
        self._wish = lit
        if self._thread is None:
            return
        if self._changed.acquire(blocking=False):  # the thread holds it only to read the wish
            try:
                self._changed.notify()
            finally:
                self._changed.release()

    def join(self, timeout: float) -> None:
        with self._changed:
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._changed:
                while self._wish == self._applied and not self._stop.is_set():
                    self._changed.wait(1.0)
                wish = self._wish
            if self._stop.is_set() or wish is None:
                return
            self._applied = wish
            command = self._commands[wish]
            if command is None:
                continue
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
                self.runs += 1
                if result.returncode != 0:
                    log.warning("screen %s: %s exited %d: %s", "on" if wish else "off", command[0], result.returncode,
                                (result.stderr or result.stdout).strip()[:200])
                else:
                    log.info("screen %s (%s)", "on" if wish else "off", " ".join(command))
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("screen %s: %s failed: %s", "on" if wish else "off", command[0], exc)

"""systemd integration in a few lines of stdlib: sd_notify (READY, WATCHDOG, STATUS, STOPPING).

`Type=notify` units get `$NOTIFY_SOCKET` (a datagram socket; a leading `@` is Linux's abstract
namespace). With `WatchdogSec=`, systemd sets `$WATCHDOG_USEC` and restarts the service when no
`WATCHDOG=1` arrives in time — so the render loop pings only while it is healthy, and a frozen
renderer gets the board restarted instead of a frozen screen.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Does nothing when not started by systemd (no NOTIFY_SOCKET), so the agent runs the same anywhere."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval_s = int(watchdog_usec) / 2e6 if watchdog_usec.isdigit() and for_us else None
        self._next_watchdog = 0.0
        self._last_status = ""
        self._ready = False  # no WATCHDOG=1 before READY=1

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, message: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # The render loop calls this: never wait on a busy service manager (a full queue drops it).
                sock.sendto(message.encode("utf-8"), socket.MSG_DONTWAIT, self._address)
        except OSError as exc:  # systemd gone or socket full: never stop playing for it
            log.debug("sd_notify %r failed: %s", message, exc)

    def ready(self, status: str) -> None:
        self._last_status = status
        self._ready = True
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """A one-line state for `systemctl status`; sent only when it changes (and after READY)."""
        if self._ready and status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self, now: float | None = None) -> None:
        """Called from the render loop; pings at half the watchdog interval."""
        if self.watchdog_interval_s is None or not self._ready:
            return
        now = time.monotonic() if now is None else now
        if now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog_interval_s
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

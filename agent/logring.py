"""The agent's recent log lines in memory (PROTOCOL.md §8 `logs`, `ctl logs`).

A technician on a 3G link, or the province for a thousand boards, asks "what happened?" without a
journal export: the last lines are kept in a bounded ring (lines and bytes both), formatted as the
journal would show them, with secrets taken out before a line is stored — the device token (also
the MQTT password) and anything that looks like a bearer credential never leave the board this way.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from collections.abc import Iterable

MAX_LINES = 5000  # what a `logs` command may ask for (§8)
MAX_LINE_CHARS = 1000
MAX_BYTES = 2 * 1024 * 1024
BEARER = re.compile(r"(?i)\b(bearer|token|password)([\s=:\"']+)([\x21-\x7e]{8,})")


class LogRing(logging.Handler):
    def __init__(self, secrets: Iterable[str] = (), max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
        self._lines: collections.deque[str] = collections.deque()
        self._bytes = 0
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._ring_lock = threading.Lock()  # logging.Handler's own lock is held around emit already

    def add_secret(self, secret: str | None) -> None:
        """A value that must never appear (e.g. a token read after the ring was made)."""
        if secret:
            with self._ring_lock:
                self._secrets = sorted({*self._secrets, secret}, key=len, reverse=True)

    def emit(self, record: logging.LogRecord) -> None:
        # Whatever is in a line (a file name from a stranger's USB stick that is not UTF-8, a bad
        # format string), the caller's log call must not raise: it may be a scan, the display loop.
        try:
            for line in self.clean(self.format(record)).splitlines() or [""]:
                self._append(line[:MAX_LINE_CHARS].encode("utf-8", "backslashreplace").decode("utf-8"))
        except Exception:  # noqa: BLE001 — see above
            self.handleError(record)

    def clean(self, text: str) -> str:
        with self._ring_lock:
            secrets = self._secrets
        for secret in secrets:
            text = text.replace(secret, "***")
        return BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)

    def _append(self, line: str) -> None:
        size = len(line.encode("utf-8")) + 1
        with self._ring_lock:
            self._lines.append(line)
            self._bytes += size
            while self._lines and (len(self._lines) > self._max_lines or self._bytes > self._max_bytes):
                self._bytes -= len(self._lines.popleft().encode("utf-8")) + 1

    def recent(self, count: int) -> list[str]:
        """The last `count` lines, oldest first."""
        with self._ring_lock:
            if count >= len(self._lines):
                return list(self._lines)
            return list(self._lines)[-count:]

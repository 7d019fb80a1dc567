"""The board's recent distinct problems, as shown in status and heartbeat `errors`."""

from __future__ import annotations

import logging
import threading
import time

from agent.limits import clip

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 400


class Problems:
    """Problems keyed by what they are about, so a repeat replaces rather than piles up.

    A problem stays listed until resolved or until it has not recurred for `forget_after_s`.
    New and changed problems are logged once (state changes only, for a small SD card).
    """

    def __init__(self, forget_after_s: float = 3600.0, limit: int = 20) -> None:
        self._lock = threading.Lock()
        self._problems: dict[str, tuple[str, float]] = {}
        self._forget_after_s = forget_after_s
        self._limit = limit

    def report(self, key: str, message: str) -> None:
        # A backstop: outside text is clipped where it is quoted (limits.clip); no message may grow
        # a heartbeat past a few hundred bytes whatever reaches it.
        message = clip(message, MAX_MESSAGE_CHARS)
        with self._lock:
            previous = self._problems.get(key)
            self._problems[key] = (message, time.monotonic())
        if previous is None or previous[0] != message:
            log.warning("%s", message)

    def resolve(self, key: str) -> None:
        with self._lock:
            gone = self._problems.pop(key, None)
        if gone is not None:
            log.info("resolved: %s", gone[0])

    def resolve_prefix(self, prefix: str, keep: set[str] | None = None) -> None:
        """Resolve every problem whose key starts with `prefix` except those in `keep`."""
        with self._lock:
            keys = [k for k in self._problems if k.startswith(prefix) and k not in (keep or set())]
        for key in keys:
            self.resolve(key)

    def current(self) -> list[str]:
        """Newest first, at most `limit`."""
        horizon = time.monotonic() - self._forget_after_s
        with self._lock:
            for key in [k for k, (_, seen) in self._problems.items() if seen < horizon]:
                del self._problems[key]
            ordered = sorted(self._problems.values(), key=lambda entry: entry[1], reverse=True)
        return [message for message, _ in ordered[: self._limit]]

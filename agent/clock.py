"""The board's notion of now (PROTOCOL.md §7).

Boards without a real-time clock may boot with a wrong time. The source tells the offset from
the `Date` header of its own answers (never a media host's: a CDN cannot move the board's clock);
once it exceeds 60 s, schedule and timestamps use the corrected time — unless the kernel says the
system clock is NTP-synchronised, in which case the system clock wins and a disagreement over 60 s
is reported. Durations are always measured on the monotonic clock, so a jump of the system clock
never stretches a showing.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path

CORRECTION_THRESHOLD_S = 60.0
SYNC_CHECK_EVERY_S = 10.0
TIME_ERROR = 5  # adjtimex(): the clock is not synchronised
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


def kernel_clock_synchronised() -> bool:
    """Whether the kernel marks the system clock synchronised (an NTP client keeps it so).

    adjtimex(2) with no modes only reads; under systemd's ProtectClock= it is filtered, so
    systemd-timesyncd's flag file is the second witness. Neither known: not synchronised.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(512)  # struct timex is 208 bytes on 64-bit Linux; modes = 0
        state = libc.adjtimex(buffer)
    except (OSError, AttributeError):
        state = -1
    if state >= 0:
        return state != TIME_ERROR
    return TIMESYNCD_FLAG.exists()


class Clock:
    def __init__(
        self,
        synchronised: Callable[[], bool] = kernel_clock_synchronised,
        report: Callable[[str | None], None] = lambda problem: None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._synchronised = synchronised
        self._report = report
        self._wall = wall
        self._mono = mono
        self._lock = threading.Lock()
        self._offset_s = 0.0
        self._synced = False
        self._synced_checked = -SYNC_CHECK_EVERY_S - 1

    @property
    def offset_s(self) -> float:
        with self._lock:
            return self._offset_s

    @property
    def system_synchronised(self) -> bool:
        with self._lock:
            return self._synced

    def set_offset(self, offset_s: float) -> None:
        """Source time minus local time, from the latest answer of the manifest's origin."""
        with self._lock:
            self._offset_s = offset_s
        synced = self._check_sync(force=True)
        if synced and abs(offset_s) > CORRECTION_THRESHOLD_S:
            self._report(f"system clock is NTP-synchronised but {offset_s:+.0f} s from the source's: "
                         "the system clock is used")
        else:
            self._report(None)

    def _check_sync(self, force: bool = False) -> bool:
        now = self._mono()
        with self._lock:
            due = force or now - self._synced_checked >= SYNC_CHECK_EVERY_S
            if not due:
                return self._synced
            self._synced_checked = now
        synced = self._synchronised()
        with self._lock:
            self._synced = synced
        return synced

    def now(self) -> dt.datetime:
        """Aware UTC time, corrected when the board's clock is known to be far off."""
        synced = self._check_sync()
        offset = self.offset_s
        correction = offset if abs(offset) > CORRECTION_THRESHOLD_S and not synced else 0.0
        return dt.datetime.fromtimestamp(self._wall() + correction, dt.UTC)

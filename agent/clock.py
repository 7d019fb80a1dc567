"""The board's notion of now (PROTOCOL.md §7).

Boards without a real-time clock may boot with a wrong time. Sources tell the offset from their
`Date` header; once it exceeds 60 s, schedule and timestamps use the corrected time. Durations are
always measured on the monotonic clock, so a jump of the system clock never stretches a showing.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

CORRECTION_THRESHOLD_S = 60.0


class Clock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset_s = 0.0

    @property
    def offset_s(self) -> float:
        with self._lock:
            return self._offset_s

    def set_offset(self, offset_s: float) -> None:
        """Source time minus local time, from the latest answer."""
        with self._lock:
            self._offset_s = offset_s

    def now(self) -> dt.datetime:
        """Aware UTC time, corrected when the board's clock is known to be far off."""
        offset = self.offset_s
        correction = offset if abs(offset) > CORRECTION_THRESHOLD_S else 0.0
        return dt.datetime.fromtimestamp(time.time() + correction, dt.UTC)

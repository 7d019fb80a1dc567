"""Record and command ids: ULIDs, so ids sort by time and never collide across boards."""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(unix_ms: int | None = None) -> str:
    """26 characters: 48 bits of milliseconds, then 80 random bits."""
    ms = int(time.time() * 1000) if unix_ms is None else unix_ms
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))

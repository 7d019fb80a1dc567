"""What the benchmarks share: a free loopback port, and waiting on a condition with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from agent.ctlsocket import ControlUnavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """The predicate's first true value; an agent not answering yet (or a half-made answer) is a
    false one. A benchmark that cannot get there has no figure to print: it exits saying what."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (ControlUnavailable, OSError, KeyError, TypeError):
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")

"""Steps that fail with their name, and waiting on conditions (never fixed sleeps)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class StepFailed(Exception):
    """A named step of the system test failed; the message says which and why."""

    def __init__(self, step: str, why: str) -> None:
        super().__init__(f"step '{step}' failed: {why}")
        self.step = step
        self.why = why


def log(message: str) -> None:
    """Progress for the person watching; figures go to the summary block."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Run a block as the named step: any failure inside is reported as that step failing."""
    log(f"-- {name}")
    try:
        yield
    except StepFailed:
        raise
    except Exception as exc:
        raise StepFailed(name, f"{type(exc).__name__}: {exc}") from exc


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `predicate` until it returns a truthy value; raise TimeoutError naming `what` after `timeout` s.

    Exceptions from the predicate are retried until the deadline and shown if it never passes (the VM may
    still be booting, a file may not exist yet)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except StepFailed:
            raise  # the predicate knows the wait is hopeless (e.g. a unit in a restart loop)
        except Exception as exc:  # noqa: BLE001 — retried until the deadline, shown if it never passes
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def first(values: Any) -> Any:
    return next(iter(values), None)

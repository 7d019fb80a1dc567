"""The disk writer: the one thread that fsyncs for the display thread ("disk-writer").

An SD card's fsync can take from 100 ms to seconds; the thread that draws the ticker and answers
the watchdog must never wait for one. So the player hands each finished showing's record here and
goes on. Records are committed in groups: whatever arrived while the previous commit was running
goes into the next one, in one transaction (fsynced, `synchronous=FULL`). A record is on disk
`queue wait + one commit` after its showing ended — about one commit time, twice at worst, which
is why "a showing that ended ≥ 1 s before a power cut is never lost" holds with commits under
0.5 s (docs/design.md, "Durability window").

Small files the display thread wants kept (the active alerts) go the same way; only the latest
contents of each path are written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from agent.files import atomic_write
from agent.models import PlayRecord

log = logging.getLogger(__name__)


class RecordStore(Protocol):
    def add(self, records: Iterable[PlayRecord]) -> None: ...


class DiskWriter:
    name = "disk-writer"

    def __init__(self, records: RecordStore, on_file_error: Callable[[Path, OSError | None], None]) -> None:
        self._store = records
        self._on_file_error = on_file_error
        self._cond = threading.Condition()
        self._records: list[PlayRecord] = []
        self._files: dict[Path, bytes] = {}
        self._calls: list[Callable[[], None]] = []
        self._in_flight = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.last_commit_s: float | None = None

    # --- from any thread (never blocks on disk) ---------------------------------------------------

    def add(self, records: Iterable[PlayRecord]) -> None:
        with self._cond:
            self._records.extend(records)
            self._cond.notify()

    def write_file(self, path: Path, data: bytes) -> None:
        with self._cond:
            self._files[path] = data
            self._cond.notify()

    def call(self, work: Callable[[], None]) -> None:
        """Run `work` (a small disk write) on this thread."""
        with self._cond:
            self._calls.append(work)
            self._cond.notify()

    def pending_records(self) -> int:
        with self._cond:
            return len(self._records) + self._in_flight

    def flush(self, timeout: float) -> bool:
        """Wait until everything handed over so far is on disk; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._records or self._files or self._calls or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    # --- service -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end (the last records of a clean stop are not lost)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._records or self._files or self._calls:
            self._drain_once()  # never started (a failed start): still keep what was handed over

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> dict[str, Any]:
        return {"commits": self.commits, "last_commit_ms": round(self.last_commit_s * 1000, 1)
                if self.last_commit_s is not None else None, "queued_records": self.pending_records()}

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._records or self._files or self._calls or self._stopping):
                    self._cond.wait()
                if self._stopping and not (self._records or self._files or self._calls):
                    return
            self._drain_once()

    def _drain_once(self) -> None:
        with self._cond:
            records, self._records = self._records, []
            files, self._files = self._files, {}
            calls, self._calls = self._calls, []
            self._in_flight = len(records)
        try:
            if records:
                self._commit(records)
            for path, data in files.items():
                try:
                    atomic_write(path, data)
                except OSError as exc:
                    self._on_file_error(path, exc)
                else:
                    self._on_file_error(path, None)
            for work in calls:
                try:
                    work()
                except Exception:  # one failing write must not end the writer
                    log.exception("disk writer task failed")
        finally:
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()

    def _commit(self, records: list[PlayRecord]) -> None:
        started = time.monotonic()
        try:
            self._store.add(records)  # never raises on I/O: unsaved rows wait in the outbox's memory
        except Exception:  # a bug, not the disk: keep the records and try again shortly
            log.exception("records could not be handed to the outbox; retrying in a second")
            with self._cond:
                self._records[:0] = records
                self._cond.wait(1.0)
            return
        self.last_commit_s = time.monotonic() - started
        self.commits += 1

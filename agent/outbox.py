"""Durable outbox of proof-of-play records (PROTOCOL.md §5): SQLite in WAL mode.

Durability choice: a record is committed when its showing ends, with `synchronous=FULL`, so a
showing that ended is on disk before `add` returns — across kill -9 and power cuts alike. Records
that end together (an item cut by an alert, everything at shutdown) share one transaction. With
showings of 10 s or more this is at most one small fsync every few seconds; delaying commits to
batch more would save SD-card writes but lose records on a crash, which the province cannot
accept. Rows are deleted only after the upstream acknowledged them (a later issue uploads them).

When the database cannot be written (disk full, a failing card), records wait in memory and are
written with the next successful commit: playback never stops for the outbox, and the problem is
reported through `on_error`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.models import PlayRecord

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
"""


class Outbox:
    """Thread-safe: the player adds, status and uploaders read."""

    def __init__(self, path: Path, on_error: Callable[[str | None], None] | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._unsaved: list[tuple[str, str]] = []  # rows a failed commit could not write yet
        self._on_error = on_error or (lambda message: None)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        self._db = db

    def close(self) -> None:
        if self._unsaved:
            self.add([])  # one more try before the process goes
        with self._lock:
            if self._unsaved:
                log.error("%d proof-of-play record(s) could not be written to %s", len(self._unsaved), self.path)
            if self._db is not None:
                # A checkpoint folds the WAL back so the next start opens a small file.
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
                self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is not open")
        return self._db

    def add(self, records: Iterable[PlayRecord]) -> None:
        """Commit records in one transaction; duplicates (same id) are ignored. Never raises on I/O."""
        rows = [(r.id, json.dumps(r.to_json_dict(), ensure_ascii=False, separators=(",", ":"))) for r in records]
        message: str | None = None
        with self._lock:
            rows = self._unsaved + rows
            if not rows:
                return
            db = self._conn()
            try:
                db.execute("BEGIN")
                db.executemany("INSERT OR IGNORE INTO outbox (id, body) VALUES (?, ?)", rows)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self._unsaved = rows
                message = f"outbox {self.path}: cannot write {len(rows)} record(s), keeping them in memory: {exc}"
            else:
                had_unsaved = bool(self._unsaved)
                self._unsaved = []
        if message is not None:
            self._on_error(message)
        elif had_unsaved:
            self._on_error(None)

    def pending(self) -> int:
        """Records not yet acknowledged upstream, including any still waiting in memory."""
        with self._lock:
            return int(self._conn().execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) + len(self._unsaved)

    def oldest(self, limit: int) -> list[dict[str, object]]:
        """The oldest records first, as their JSON objects."""
        with self._lock:
            rows = self._conn().execute("SELECT body FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [json.loads(body) for (body,) in rows]

    def delete(self, ids: Iterable[str]) -> None:
        """Remove records the upstream acknowledged."""
        id_list = [(i,) for i in ids]
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            db.executemany("DELETE FROM outbox WHERE id = ?", id_list)
            db.execute("COMMIT")

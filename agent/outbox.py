"""Proof-of-play storage (PROTOCOL.md §5): one SQLite table that is both the outbox and the journal.

A record is written once, when its showing ends, and stays: `uploaded` flips to 1 when the source
acknowledged its batch, so the outbox is `uploaded = 0` and the journal (for `bangtin-agent report`)
is every row until it is older than `journal_days`.

Durability: `add` commits in one transaction with `synchronous=FULL` in WAL mode, so the records
are on disk when it returns — across kill -9 and power cuts alike. In the agent, `add` is called by
the disk writer (agent/writer.py), which groups whatever records arrived during the previous
commit into the next one, off the display thread. Uploads mark a whole batch in one transaction.

The schema is versioned (`PRAGMA user_version`): 0 is the v1 layout, 1 the same tables, 2 adds
`summaries.priority`; opening a database upgrades it in place, and older readers (`bangtin-agent
report` of an earlier release) still read its tables. Events (agent/events.py) are rows like
showings and are never folded into summaries.

Bounded: beyond `max_records` rows, the oldest are folded into per-item-per-day summaries (count,
completed, total duration, first/last) instead of being dropped; `summarised` says how many were.
When the database cannot be written (disk full, a failing card), records wait in memory and go
with the next successful commit: playback never stops for the outbox.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.models import PlayRecord

log = logging.getLogger(__name__)

# Card wear: a one-record commit appends every page it touches to the WAL in full. So: 1 KiB pages
# (a record is ~400 bytes), a plain rowid (AUTOINCREMENT would also rewrite sqlite_sequence), no
# index on id or day (uploads are marked by rowid; reports and pruning scan, rarely), and a partial
# index holding only the pending rows. An insert touches two small pages instead of five 4 KiB ones.
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    day TEXT NOT NULL,              -- local date of started_at, for reports and summaries
    item TEXT NOT NULL,
    uploaded INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_pending ON records (seq) WHERE uploaded = 0;
CREATE TABLE IF NOT EXISTS summaries (
    day TEXT NOT NULL,
    item TEXT NOT NULL,
    title TEXT NOT NULL,
    type TEXT NOT NULL,
    count INTEGER NOT NULL,
    completed INTEGER NOT NULL,
    total_ms INTEGER NOT NULL,
    first_shown TEXT NOT NULL,
    last_shown TEXT NOT NULL,
    not_uploaded INTEGER NOT NULL,  -- of `count`, records the source never received one by one
    priority TEXT NOT NULL DEFAULT '',  -- since schema 2 ('' in rows folded by schema 1)
    PRIMARY KEY (day, item)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

RECORDS_FILE = "outbox.sqlite"  # in storage.dir: outbox and journal
SCHEMA_VERSION = 2
DEFAULT_MAX_RECORDS = 90 * 24 * 360  # 90 days of 10-second items
DEFAULT_JOURNAL_DAYS = 400  # a year and a month: the commune's yearly report is due before 20/12


def _row(record: PlayRecord) -> tuple[str, str, str, str]:
    body = json.dumps(record.to_json_dict(), ensure_ascii=False, separators=(",", ":"))
    return record.id, record.started_at[:10], record.item, body


class Outbox:
    """Thread-safe: the player adds, the reporter uploads, status and reports read."""

    def __init__(self, path: Path, on_error: Callable[[str | None], None] | None = None, *,
                 max_records: int = DEFAULT_MAX_RECORDS, journal_days: int = DEFAULT_JOURNAL_DAYS) -> None:
        self.path = path
        self.max_records = max_records
        self.journal_days = journal_days
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._unsaved: list[tuple[str, str, str, str]] = []  # rows a failed commit could not write yet
        self._on_error = on_error or (lambda message: None)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA page_size=1024")  # only takes effect on a new database, before WAL is on
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            log.warning("%s has schema version %d, newer than this agent's %d: reading it as version %d",
                        self.path, version, SCHEMA_VERSION, SCHEMA_VERSION)
        elif version < SCHEMA_VERSION:
            # 0 and 1 → 2: summaries gain `priority` (the yearly report counts by priority class).
            if "priority" not in {row[1] for row in db.execute("PRAGMA table_info(summaries)")}:
                db.execute("ALTER TABLE summaries ADD COLUMN priority TEXT NOT NULL DEFAULT ''")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    # --- writing ---------------------------------------------------------------------------------

    def add(self, records: Iterable[PlayRecord]) -> None:
        """Commit records in one transaction. Never raises on I/O (see the module's note)."""
        new_rows = [_row(r) for r in records]
        message: str | None = None
        with self._lock:
            rows = self._unsaved + new_rows
            if not rows:
                return
            had_unsaved = bool(self._unsaved)
            try:
                self._transaction(lambda db: db.executemany(
                    "INSERT INTO records (id, day, item, body) VALUES (?, ?, ?, ?)", rows))
            except sqlite3.Error as exc:
                self._unsaved = rows
                message = f"outbox {self.path}: cannot write {len(rows)} record(s), keeping them in memory: {exc}"
            else:
                self._unsaved = []
        if message is not None:
            self._on_error(message)
        elif had_unsaved:
            self._on_error(None)

    def mark_uploaded(self, seqs: Iterable[int]) -> None:
        """The source acknowledged these rows (a 2xx for their batch): out of the outbox, kept in the journal."""
        seq_list = [(seq,) for seq in seqs]
        with self._lock:
            self._transaction(lambda db: db.executemany("UPDATE records SET uploaded = 1 WHERE seq = ?", seq_list))

    # --- reading ---------------------------------------------------------------------------------

    def pending(self) -> int:
        """Records not yet acknowledged upstream, including any still waiting in memory."""
        with self._lock:
            count = self._conn().execute("SELECT COUNT(*) FROM records WHERE uploaded = 0").fetchone()[0]
            return int(count) + len(self._unsaved)

    def pending_batch(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest records not yet uploaded: (row number for `mark_uploaded`, the record's JSON object)."""
        with self._lock:
            rows = self._conn().execute(
                "SELECT seq, body FROM records WHERE uploaded = 0 ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(seq, json.loads(body)) for seq, body in rows]

    def oldest(self, limit: int) -> list[dict[str, Any]]:
        """The oldest records not yet uploaded, as their JSON objects."""
        return [record for _, record in self.pending_batch(limit)]

    def summarised(self) -> int:
        """How many records were folded into daily summaries because of the cap (never dropped)."""
        with self._lock:
            row = self._conn().execute("SELECT value FROM meta WHERE key = 'summarised'").fetchone()
        return int(row[0]) if row else 0

    # --- keeping it bounded ------------------------------------------------------------------------

    def enforce_limits(self, today: str) -> None:
        """Fold the oldest records beyond `max_records` into summaries; drop uploaded ones past the journal age.

        `today` is the local date (YYYY-MM-DD); called now and then by the reporter, not per record.
        """
        with self._lock:
            self._transaction(lambda db: self._fold_excess(db))
            self._transaction(lambda db: self._prune(db, today))

    def _fold_excess(self, db: sqlite3.Connection) -> None:
        total = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        excess = total - self.max_records
        if excess <= 0:
            return
        # Events (agent/events.py) are never folded: the report's lit hours and outages are their intervals.
        rows = db.execute("SELECT seq, day, item, uploaded, body FROM records "
                          "WHERE coalesce(json_extract(body, '$.type'), '') != 'event' ORDER BY seq LIMIT ?",
                          (excess,)).fetchall()
        if not rows:
            return
        for _, day, item, uploaded, body in rows:
            record = json.loads(body)
            db.execute(
                """INSERT INTO summaries (day, item, title, type, count, completed, total_ms, first_shown, last_shown,
                                          not_uploaded, priority)
                   VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (day, item) DO UPDATE SET
                     count = count + 1, completed = completed + excluded.completed,
                     total_ms = total_ms + excluded.total_ms,
                     first_shown = min(first_shown, excluded.first_shown),
                     last_shown = max(last_shown, excluded.last_shown),
                     not_uploaded = not_uploaded + excluded.not_uploaded,
                     priority = excluded.priority""",
                (day, item, record.get("title") or "", record.get("type") or "", int(bool(record.get("completed"))),
                 int(record.get("duration_ms") or 0), record.get("started_at") or "", record.get("ended_at") or "",
                 1 - int(uploaded), record.get("priority") or ""))
        db.execute("DELETE FROM records WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps([r[0] for r in rows]),))
        db.execute("INSERT INTO meta (key, value) VALUES ('summarised', ?) "
                   "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value", (len(rows),))
        log.warning("outbox over %d records: %d oldest folded into daily summaries", self.max_records, len(rows))

    def _prune(self, db: sqlite3.Connection, today: str) -> None:
        # Rows are in time order: everything before the first row of the cutoff day is old. Found by
        # walking from the start (few rows: pruned hourly), so `day` needs no index (no write cost).
        cutoff = (today, f"-{self.journal_days} days")
        db.execute("""DELETE FROM records WHERE uploaded = 1 AND seq < coalesce(
                        (SELECT seq FROM records WHERE day >= date(?, ?) ORDER BY seq LIMIT 1),
                        (SELECT max(seq) + 1 FROM records))""", cutoff)
        db.execute("DELETE FROM summaries WHERE day < date(?, ?)", cutoff)

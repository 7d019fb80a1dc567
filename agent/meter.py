"""The data meter: bytes on the wire per local day and per month, by kind (docs/metered.md).

Boards live on metered SIMs, so the province and the technician must see what each one spends and
on what: `manifest` (polls), `media`, `reports` (heartbeats, playlogs, screenshots, logs), `mqtt`
and `update` (agent releases). The network parts read their sockets' counters (`agent.wire`) after
each exchange and add the growth here, from whatever thread they run on.

Totals are kept for the last 62 local days and 13 months (the day in the manifest's time zone, on
the board's corrected clock) in `storage.dir/data-meter.json`, written through the disk writer at
most every few minutes and once more at a clean stop; a crash loses at most those minutes. A
missing file starts from zero; a damaged one too, with a note in `errors` — it never stops the
board.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.files import atomic_write
from agent.wire import KINDS, Reading

log = logging.getLogger(__name__)

METER_FILE = "data-meter.json"
SCHEMA = "bangtin.data-meter/1"
KEEP_DAYS = 62
KEEP_MONTHS = 13
SAVE_EVERY_S = 300.0
MAX_FILE_BYTES = 256 * 1024  # 62 days + 13 months of five kinds is ~10 KB; anything far larger is not ours
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
MONTH = re.compile(r"\d{4}-\d{2}")
KIND = re.compile(r"[a-z]{1,20}")  # a kind a later version adds is kept, not taken for damage

Tally = dict[str, list[int]]  # kind → [bytes sent, bytes received]


class MeterFileDamaged(ValueError):
    pass


class DataMeter:
    def __init__(self, path: Path, local_date: Callable[[], str], write: Callable[[Path, bytes], None], *,
                 mono: Callable[[], float] = time.monotonic, save_every_s: float = SAVE_EVERY_S) -> None:
        self.path = path
        self._local_date = local_date  # YYYY-MM-DD in the manifest's zone, on the corrected clock
        self._write = write  # DiskWriter.write_file: never blocks the caller on the disk
        self._mono = mono
        self._save_every_s = save_every_s
        self._lock = threading.Lock()
        self._days: dict[str, Tally] = {}
        self._months: dict[str, Tally] = {}
        self._since: str | None = None
        self._kernel_counted = False  # this run: some readings came from the kernel…
        self._program_counted = False  # …and some from the program (no TCP_INFO)
        self._last_save = mono()
        self.note: str | None = None

    # --- persistence -----------------------------------------------------------------------------

    def load(self) -> str | None:
        """Totals from the file. Returns a problem for `errors` when the file was damaged (the meter
        then counts from zero, and the next save replaces it); a missing file is no problem."""
        try:
            raw = self.path.read_bytes()[: MAX_FILE_BYTES + 1]
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._damaged(f"unreadable: {exc.strerror or exc}")
        try:
            days, months, since = _decode(raw)
        except MeterFileDamaged as exc:
            return self._damaged(str(exc))
        with self._lock:
            self._days, self._months, self._since = days, months, since
        return None

    def _damaged(self, why: str) -> str:
        self.note = f"{self.path.name} was damaged ({why}); the data meter counts from zero"
        log.warning("%s", self.note)
        return f"data meter: {self.note}"

    def _encode(self) -> bytes:
        with self._lock:
            return json.dumps({"schema": SCHEMA, "since": self._since, "days": self._days, "months": self._months},
                              separators=(",", ":")).encode()

    def save_now(self) -> None:
        """Write at once, on the calling thread (a clean stop, after the display thread has ended)."""
        try:
            atomic_write(self.path, self._encode())
        except OSError as exc:
            log.warning("data meter not saved to %s: %s", self.path, exc.strerror or exc)

    # --- counting (any thread) -------------------------------------------------------------------

    def add(self, kind: str, reading: Reading) -> None:
        """Count a socket reading under `kind` on today's local date."""
        if reading.total <= 0:
            return
        if kind not in KINDS:
            raise ValueError(f"data meter: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
        day = self._local_date()
        with self._lock:
            if reading.kernel:
                self._kernel_counted = True
            else:
                self._program_counted = True
            for table, key, keep in ((self._days, day, KEEP_DAYS), (self._months, day[:7], KEEP_MONTHS)):
                tally = table.get(key)
                if tally is None:
                    tally = table[key] = {}
                    for old in sorted(table)[:-keep]:
                        del table[old]
                pair = tally.setdefault(kind, [0, 0])
                pair[0] += reading.sent
                pair[1] += reading.received
            if self._since is None:
                self._since = day
            due = self._mono() - self._last_save >= self._save_every_s
            if due:
                self._last_save = self._mono()
        if due:
            self._write(self.path, self._encode())

    # --- views -----------------------------------------------------------------------------------

    def _counted_by(self) -> str:
        if self._program_counted and self._kernel_counted:
            return "kernel (TCP_INFO), some sockets by the program: for those TLS and TCP framing are not counted"
        if self._program_counted:
            return "program (no TCP_INFO on this system): TLS and TCP framing are not counted"
        return "kernel (TCP_INFO)"

    def status(self) -> dict[str, Any]:
        """`ctl status`'s `data`: today and this month by kind and direction, and how it is counted."""
        day = self._local_date()
        with self._lock:
            today = {k: list(v) for k, v in self._days.get(day, {}).items()}
            month = {k: list(v) for k, v in self._months.get(day[:7], {}).items()}
            result: dict[str, Any] = {
                "counted_by": self._counted_by(), "since": self._since,
                "today": _view(day, today), "month": _view(day[:7], month)}
        if self.note:
            result["note"] = self.note
        return result

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat's compact `data`: bytes both ways by kind, today and this month (paid per byte)."""
        day = self._local_date()
        with self._lock:
            compact: dict[str, Any] = {
                "day": {k: sum(v) for k, v in self._days.get(day, {}).items()},
                "month": {k: sum(v) for k, v in self._months.get(day[:7], {}).items()}}
            if self._program_counted:
                compact["counted"] = "program"
        return compact


def _view(key: str, tally: Mapping[str, list[int]]) -> dict[str, Any]:
    return {"date": key, "total": sum(sum(pair) for pair in tally.values()),
            "by_kind": {kind: {"sent": pair[0], "received": pair[1]} for kind, pair in sorted(tally.items())}}


def _decode(raw: bytes) -> tuple[dict[str, Tally], dict[str, Tally], str | None]:
    if len(raw) > MAX_FILE_BYTES:
        raise MeterFileDamaged(f"larger than {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MeterFileDamaged(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise MeterFileDamaged(f"expected an object with schema {SCHEMA!r}")
    since = data.get("since")
    if since is not None and not (isinstance(since, str) and DAY.fullmatch(since)):
        raise MeterFileDamaged("'since' is not a date")
    return _tables(data.get("days"), DAY, KEEP_DAYS, "days"), _tables(data.get("months"), MONTH, KEEP_MONTHS,
                                                                        "months"), since


def _tables(value: Any, key_pattern: re.Pattern[str], keep: int, where: str) -> dict[str, Tally]:
    if not isinstance(value, dict):
        raise MeterFileDamaged(f"'{where}' is not an object")
    tables: dict[str, Tally] = {}
    for key, tally in value.items():
        if not key_pattern.fullmatch(key) or not isinstance(tally, dict):
            raise MeterFileDamaged(f"'{where}' has an entry {key[:20]!r} that is not a tally")
        tables[key] = {}
        for kind, pair in tally.items():
            if not (KIND.fullmatch(kind) and isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair)):
                raise MeterFileDamaged(f"'{where}.{key}.{kind[:20]}' is not [sent, received] byte counts")
            tables[key][kind] = [pair[0], pair[1]]
    return {key: tables[key] for key in sorted(tables)[-keep:]}

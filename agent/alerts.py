"""Active alerts survive a restart until they expire (`storage.dir/alerts.json`).

Saving goes through the disk writer (the display thread never fsyncs); loading happens once at
start, off the display thread, and applies the same bounds as a fresh alert command, so a stored
alert cannot be what brings a board down after every restart.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.limits import MAX_BODY_CHARS, MAX_TITLE_CHARS, clip
from agent.models import Alert

log = logging.getLogger(__name__)

ALERTS_FILE = "alerts.json"
MAX_STORED_ALERTS = 50
MAX_FILE_BYTES = 1024 * 1024


def encode(alerts: Sequence[Alert]) -> bytes:
    return json.dumps([{"id": a.id, "title": a.title, "body": a.body, "until": a.until.isoformat()}
                       for a in alerts], ensure_ascii=False).encode()


class AlertStore:
    def __init__(self, path: Path, write: Callable[[Path, bytes], None]) -> None:
        self.path = path
        self._write = write  # DiskWriter.write_file: latest contents win

    def save(self, alerts: Sequence[Alert]) -> None:
        self._write(self.path, encode(alerts))

    def load(self, now: dt.datetime) -> tuple[list[Alert], str | None]:
        """The stored alerts still running at `now`, and a problem to report (or None)."""
        try:
            raw = self.path.read_bytes()[: MAX_FILE_BYTES + 1]
        except FileNotFoundError:
            return [], None
        except OSError as exc:
            return [], f"{ALERTS_FILE} unreadable ({exc.strerror or exc}); no alert restored"
        if len(raw) > MAX_FILE_BYTES:
            return [], f"{ALERTS_FILE} is larger than {MAX_FILE_BYTES} bytes; no alert restored"
        try:
            saved = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return [], f"{ALERTS_FILE} unreadable ({clip(exc, 80)}); no alert restored"
        alerts = []
        for entry in saved[:MAX_STORED_ALERTS] if isinstance(saved, list) else []:
            alert = _alert(entry)
            if alert is not None and alert.until > now:
                alerts.append(alert)
        return alerts, None


def _alert(entry: object) -> Alert | None:
    if not isinstance(entry, dict):
        return None
    fields = entry.get("id"), entry.get("title"), entry.get("body"), entry.get("until")
    if not all(isinstance(value, str) for value in fields):
        return None
    alert_id, title, body, until_text = fields
    assert isinstance(alert_id, str) and isinstance(title, str) and isinstance(body, str) and isinstance(until_text, str)
    if len(alert_id) > 128 or len(title) > MAX_TITLE_CHARS or len(body) > MAX_BODY_CHARS:
        log.warning("stored alert %s is over the limits of an alert: not restored", clip(alert_id, 40))
        return None
    try:
        until = dt.datetime.fromisoformat(until_text)
    except ValueError:
        return None
    if until.tzinfo is None:
        return None
    return Alert(alert_id, title, body, until)

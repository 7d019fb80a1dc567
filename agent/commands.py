"""Remote commands (PROTOCOL.md §8): verify, check expiry, run at most once, build the ack.

Transport-free: the MQTT client hands over payload bytes and publishes what comes back. Commands run
through the same dispatcher as the local socket (agent/control.py), so an alert from the province
and one typed by a technician take the same path to the screen.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.control import COMMANDS, Dispatcher
from agent.manifest import COMMAND_PAYLOAD_TYPE, ID_PATTERN, ManifestError, TrustedKey, open_envelope, parse_instant

log = logging.getLogger(__name__)

REMEMBER_IDS_DAYS = 90  # executed ids are kept this long; a replay older than that is refused by expires_at/issued_at
REMOTE_COMMANDS = tuple(c for c in COMMANDS if c != "status")


class CommandLog:
    """Ids of commands already run, on disk: a replay after a restart is still refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS executed (id TEXT PRIMARY KEY, at REAL NOT NULL)")
        db.execute("DELETE FROM executed WHERE at < ?", (time.time() - REMEMBER_IDS_DAYS * 86400,))
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def seen(self, command_id: str) -> bool:
        with self._lock:
            assert self._db is not None
            return self._db.execute("SELECT 1 FROM executed WHERE id = ?", (command_id,)).fetchone() is not None

    def remember(self, command_id: str) -> None:
        """Committed before the command runs: a crash mid-command never runs it twice (at most once)."""
        with self._lock:
            assert self._db is not None
            self._db.execute("INSERT OR IGNORE INTO executed (id, at) VALUES (?, ?)", (command_id, time.time()))


@dataclass(frozen=True)
class Command:
    id: str
    command: str
    args: dict[str, Any]
    expires_at: dt.datetime | None


class CommandRejected(ValueError):
    """Dropped without an ack (unsigned, wrongly signed, unreadable): counted in `errors`."""


def parse_command(raw: bytes, keys: Sequence[TrustedKey]) -> Command:
    try:
        document, _ = open_envelope(raw, COMMAND_PAYLOAD_TYPE, keys)
    except ManifestError as exc:
        raise CommandRejected(str(exc)) from None
    command_id = document.get("id")
    if not isinstance(command_id, str) or not ID_PATTERN.match(command_id):
        raise CommandRejected(f"command id: expected an id, found {command_id!r}")
    name = document.get("command")
    args = document.get("args") or {}
    if not isinstance(args, dict):
        raise CommandRejected(f"command {command_id}: args: expected an object")
    expires_text = document.get("expires_at")
    expires_at = None
    if expires_text is not None:
        try:
            expires_at = parse_instant(str(expires_text), f"command {command_id}: expires_at")
        except ManifestError as exc:
            raise CommandRejected(str(exc)) from None
    return Command(command_id, str(name), args, expires_at)


class RemoteCommands:
    def __init__(
        self,
        dispatcher: Dispatcher,
        log_: CommandLog,
        keys: Sequence[TrustedKey],
        now: Callable[[], dt.datetime],
        upload_screenshot: Callable[[bytes, str], int] | None,
        on_dropped: Callable[[int, str], None],
    ) -> None:
        self._dispatcher = dispatcher
        self._log = log_
        self._keys = tuple(keys)
        self._now = now
        self._upload_screenshot = upload_screenshot
        self._on_dropped = on_dropped
        self.dropped = 0

    def handle(self, raw: bytes, where: str) -> dict[str, Any] | None:
        """Run one command payload; returns the ack to publish, or None when it was dropped."""
        try:
            command = parse_command(raw, self._keys)
        except CommandRejected as exc:
            self.dropped += 1
            self._on_dropped(self.dropped, f"command on {where} dropped: {exc}")
            log.warning("command on %s dropped: %s", where, exc)
            return None
        now = self._now()
        ack: dict[str, Any] = {"id": command.id, "ok": False, "at": now.isoformat(timespec="seconds")}
        if self._log.seen(command.id):
            ack["error"] = "duplicate"
            return ack
        if command.expires_at is not None and command.expires_at <= now:
            ack["error"] = "expired"
            return ack
        if command.command not in REMOTE_COMMANDS:
            ack["error"] = f"unknown command {command.command!r}"
            return ack
        self._log.remember(command.id)
        log.info("command %s: %s", command.id, command.command)
        if command.command == "screenshot":
            return self._screenshot(command, ack)
        response = self._dispatcher.handle({"command": command.command, "args": command.args, "id": command.id})
        ack["ok"] = bool(response.get("ok"))
        ack["result" if ack["ok"] else "error"] = response.get("result") if ack["ok"] else response.get("error")
        return ack

    def _screenshot(self, command: Command, ack: dict[str, Any]) -> dict[str, Any]:
        if self._upload_screenshot is None:
            ack["error"] = "no HTTP source to upload the screenshot to"
            return ack
        response = self._dispatcher.handle({"command": "screenshot", "args": {}})
        if not response.get("ok"):
            ack["error"] = response.get("error")
            return ack
        png = base64.b64decode(response["result"]["png_base64"])
        try:
            size = self._upload_screenshot(png, command.id)
        except Exception as exc:  # noqa: BLE001 — the source's error goes back in the ack
            ack["error"] = f"upload failed: {exc}"
            return ack
        ack.update(ok=True, result={"bytes": size})
        return ack

"""Remote commands (PROTOCOL.md §8): bound, verify, check audience and lifetime, run at most once, ack.

Transport-free: the MQTT link hands over payload bytes and the topic they came on, and publishes
what comes back. Commands run through the same dispatcher as the local socket (agent/control.py),
so an alert from the province and one typed by a technician take the same path to the screen.

With trusted keys a command is bound to boards (`audience`) and to a lifetime (`expires_at` at
most 7 days after `issued_at`); executed ids are remembered for 30 days, longer than any command
can live, so a captured command can neither be replayed to another board nor run twice.
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
from agent.envelope import COMMAND_PAYLOAD_TYPE, TrustedKey, open_envelope
from agent.limits import MAX_COMMAND_BYTES, clip, show_value
from agent.manifest import ID_PATTERN, check_audience, parse_instant
from agent.models import CommandRejected, InputRejected

log = logging.getLogger(__name__)

REMEMBER_IDS_DAYS = 30  # longer than the longest lifetime a signed command may have (7 days)
MAX_LIFETIME = dt.timedelta(days=7)
REMOTE_COMMANDS = tuple(c for c in COMMANDS if c != "status")
UPLOAD_EVERY_S = 60.0


class CommandLog:
    """Ids of commands already run, on disk: a replay after a restart is still refused."""

    def __init__(self, path: Path, now: Callable[[], float] = time.time) -> None:
        self.path = path
        self._now = now
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS executed (id TEXT PRIMARY KEY, at REAL NOT NULL)")
        db.execute("DELETE FROM executed WHERE at < ?", (self._now() - REMEMBER_IDS_DAYS * 86400,))
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
            self._db.execute("INSERT OR IGNORE INTO executed (id, at) VALUES (?, ?)", (command_id, self._now()))


@dataclass(frozen=True)
class Command:
    id: str
    command: str
    args: dict[str, Any]
    issued_at: dt.datetime | None
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class Addressee:
    """Who this board is, for a command's `audience`; `topic_group` is the group topic it came on, if any."""

    device_id: str
    groups: tuple[str, ...]
    topic_group: str | None = None


def _instant(document: dict[str, Any], key: str, command_id: str) -> dt.datetime | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CommandRejected(f"command {command_id}: {key}: expected an RFC 3339 time, found {show_value(value)}")
    try:
        return parse_instant(value, f"command {command_id}: {key}")
    except InputRejected as exc:
        raise CommandRejected(str(exc)) from None


def parse_command(raw: bytes, keys: Sequence[TrustedKey], addressee: Addressee) -> Command:
    """Bytes → a Command this board may run, or CommandRejected (dropped, counted in `errors`)."""
    try:
        opened = open_envelope(raw, COMMAND_PAYLOAD_TYPE, keys, max_bytes=MAX_COMMAND_BYTES)
    except InputRejected as exc:
        raise CommandRejected(str(exc)) from None
    document = opened.document
    command_id = document.get("id")
    if not isinstance(command_id, str) or not ID_PATTERN.match(command_id):
        raise CommandRejected(f"command id: expected an id, found {show_value(command_id)}")
    name = document.get("command")
    if not isinstance(name, str):
        raise CommandRejected(f"command {command_id}: command: expected a name, found {show_value(name)}")
    args = document.get("args") or {}
    if not isinstance(args, dict):
        raise CommandRejected(f"command {command_id}: args: expected an object")
    issued_at = _instant(document, "issued_at", command_id)
    expires_at = _instant(document, "expires_at", command_id)
    if keys:
        _check_binding(document, command_id, addressee, issued_at, expires_at)
    return Command(command_id, clip(name, 40), args, issued_at, expires_at)


def _check_binding(document: dict[str, Any], command_id: str, addressee: Addressee,
                   issued_at: dt.datetime | None, expires_at: dt.datetime | None) -> None:
    """Signed commands name their boards and live at most 7 days (§8, v1.1)."""
    audience = document.get("audience")
    if audience is None:
        raise CommandRejected(f"command {command_id} has no audience")
    if not (isinstance(audience, list) and all(isinstance(a, str) for a in audience)):
        raise CommandRejected(f"command {command_id}: audience: expected a list of ids, found {show_value(audience)}")
    try:
        check_audience(audience, addressee.device_id, addressee.groups, required=True, what=f"command {command_id}")
    except InputRejected as exc:
        raise CommandRejected(str(exc)) from None
    if addressee.topic_group is not None and f"group:{addressee.topic_group}" not in audience:
        raise CommandRejected(f"command {command_id} came on the topic of group {addressee.topic_group!r}, "
                              "which its audience does not list")
    if issued_at is None or expires_at is None:
        raise CommandRejected(f"command {command_id} needs issued_at and expires_at (a bounded lifetime)")
    if expires_at - issued_at > MAX_LIFETIME:
        raise CommandRejected(f"command {command_id}: expires_at is more than 7 days after issued_at")


class RemoteCommands:
    def __init__(
        self,
        dispatcher: Dispatcher,
        log_: CommandLog,
        keys: Sequence[TrustedKey],
        now: Callable[[], dt.datetime],
        upload: Callable[[str, bytes, str, str], int] | None,
        on_dropped: Callable[[int, str], None],
        *,
        device_id: str,
        groups: Sequence[str],
    ) -> None:
        self._dispatcher = dispatcher
        self._log = log_
        self._keys = tuple(keys)
        self._now = now
        self._upload = upload  # (what: "screenshots" or "logs", body, content type, command id) → bytes sent
        self._on_dropped = on_dropped
        self._device_id = device_id
        self._groups = tuple(groups)
        self._last_upload: dict[str, float] = {}  # command → monotonic time of its last upload
        self.dropped = 0

    def drop(self, why: str) -> None:
        """Count a message refused before parsing (retained, too large) or while parsing."""
        self.dropped += 1
        reason = clip(why)
        self._on_dropped(self.dropped, reason)
        log.warning("%s", reason)

    def handle(self, raw: bytes, where: str, topic_group: str | None = None) -> dict[str, Any] | None:
        """Run one command payload; returns the ack to publish, or None when it was dropped."""
        if len(raw) > MAX_COMMAND_BYTES:
            self.drop(f"command on {where} dropped: {len(raw)} bytes, over the limit of {MAX_COMMAND_BYTES}")
            return None
        try:
            command = parse_command(raw, self._keys, Addressee(self._device_id, self._groups, topic_group))
        except CommandRejected as exc:
            self.drop(f"command on {where} dropped: {exc}")
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
        if command.command in ("screenshot", "logs"):
            return self._upload_answer(command, ack)
        response = self._dispatcher.handle({"command": command.command, "args": command.args, "id": command.id})
        ack["ok"] = bool(response.get("ok"))
        ack["result" if ack["ok"] else "error"] = response.get("result") if ack["ok"] else response.get("error")
        return ack

    def _upload_answer(self, command: Command, ack: dict[str, Any]) -> dict[str, Any]:
        """`screenshot` and `logs` answer with a POST to the source (§2, §8); the ack carries its size.
        At most one of each a minute: up to 2 MiB each, on a metered SIM."""
        if self._upload is None:
            ack["error"] = f"no HTTP source to upload the {command.command} to"
            return ack
        response = self._dispatcher.handle({"command": command.command, "args": command.args})
        if not response.get("ok"):
            ack["error"] = response.get("error")
            return ack
        wait = self._last_upload.get(command.command, -UPLOAD_EVERY_S) + UPLOAD_EVERY_S - time.monotonic()
        if wait > 0:
            ack["error"] = f"{command.command}: at most one upload a minute; try again in {wait:.0f} s"
            return ack
        self._last_upload[command.command] = time.monotonic()
        result = response["result"]
        if command.command == "screenshot":
            what, body, content_type = "screenshots", base64.b64decode(result["png_base64"]), "image/png"
        else:
            what, content_type = "logs", "text/plain; charset=utf-8"
            body = "".join(f"{line}\n" for line in result["lines"]).encode("utf-8")
        try:
            size = self._upload(what, body, content_type, command.id)
        except Exception as exc:  # the source's error goes back in the ack, and to the log
            log.warning("%s for command %s not uploaded: %s", command.command, command.id, exc, exc_info=True)
            ack["error"] = clip(f"upload failed: {exc}")
            return ack
        ack.update(ok=True, result={"bytes": size, **({"lines": len(result["lines"])} if what == "logs" else {})})
        return ack

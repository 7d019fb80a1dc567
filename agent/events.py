"""Events in the journal: what the yearly report needs that showings alone cannot prove.

The commune's report asks whether the board worked, how long it was lit and when it was not.
Showings say what was on screen; these events say when the agent ran, when the screen was lit or
dark and why, and when the content changed. An event is a PROTOCOL.md §5 record with
`type: "event"` and `item` = the event's name, so it takes the showings' path exactly: the player
(or run_board, or the content) hands it to the disk writer (memory only), which group-commits it
into the outbox; the reporter uploads it; `report` reads it. Every §5 field is present (times,
`duration_ms` 0, `completed` true, `reason` null), so a reader that only knows showings keeps
working; the event's own fields are under `details`. docs/reporting.md lists them.

Whether the previous run ended cleanly is kept in `run.json` (storage.dir): "running" from the
start, "stopped" after a clean stop. A start that finds "running" infers an unclean end: the same
kernel boot means the agent died (a crash, the watchdog, an OOM kill); another boot means the
machine went down without stopping the agent — a power cut, as far as the board can tell.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.files import atomic_write
from agent.ids import new_ulid
from agent.manifest import DEFAULT_TIMEZONE
from agent.models import Manifest, PlayRecord
from agent.schedule import zone
from agent.startguard import kernel_boot_id

log = logging.getLogger(__name__)

EVENT_TYPE = "event"
AGENT_START = "agent_start"  # details: version, previous_stop (clean | crash | power_cut | first)
AGENT_STOP = "agent_stop"  # details: clean (bool), reason (stop | restart | config | failure)
SCREEN_LIT = "screen_lit"  # details: cause (start | schedule | forced | alert | emergency), mode (auto | on | off)
SCREEN_DARK = "screen_dark"  # details: cause (start | schedule | forced), mode
MANIFEST_CHANGED = "manifest_changed"  # details: serial, previous_serial, items
RUNNING = "running"  # no details: the agent was alive then (written only after RUNNING_EVERY_S without a record)
EVENT_NAMES = frozenset({AGENT_START, AGENT_STOP, SCREEN_LIT, SCREEN_DARK, MANIFEST_CHANGED, RUNNING})

# A screen dark for the night writes no showings; without a sign of life now and then, a power cut at
# 03:00 would look like one that began at the 22:00 switch-off. 15 minutes bounds that error and
# costs ~100 small rows on a dark day (a lit day has a showing every few seconds and writes none).
RUNNING_EVERY_S = 900.0
RUN_FILE = "run.json"


@dataclass(frozen=True)
class EventRecord(PlayRecord):
    """A §5 record of `type: "event"`; `details` are the event's own fields."""

    details: tuple[tuple[str, Any], ...] = ()

    def to_json_dict(self) -> dict[str, object]:
        body = super().to_json_dict()
        body["details"] = dict(self.details)
        return body


def event(name: str, at: dt.datetime, timezone: str | None, manifest_serial: int | None, **details: Any) -> EventRecord:
    """An event at `at`, its time written in the manifest's zone like a showing's."""
    when = at.astimezone(zone(timezone or DEFAULT_TIMEZONE)).isoformat(timespec="milliseconds")
    return EventRecord(id=new_ulid(), item=name, type=EVENT_TYPE, title="", media_sha256=None,
                       manifest_serial=manifest_serial, priority="normal", started_at=when, ended_at=when,
                       duration_ms=0, completed=True, reason=None, details=tuple(details.items()))


def manifest_changed(at: dt.datetime, manifest: Manifest, previous_serial: int | None) -> EventRecord:
    return event(MANIFEST_CHANGED, at, manifest.timezone, manifest.serial, serial=manifest.serial,
                 previous_serial=previous_serial, items=len(manifest.items))


def stop_reason(clean: bool, restart_requested: bool, config_restart: bool) -> str:
    if not clean:
        return "failure"
    return "restart" if restart_requested else "config" if config_restart else "stop"


def is_event(record: dict[str, Any]) -> bool:
    return record.get("type") == EVENT_TYPE and record.get("item") in EVENT_NAMES


class RecordSink(Protocol):
    def add(self, records: Iterable[PlayRecord]) -> None: ...


class Writer(RecordSink, Protocol):
    def call(self, work: Callable[[], None]) -> None: ...


class RunEvents:
    """`agent_start` and `agent_stop`, and the marker a start reads to tell how the last run ended."""

    def __init__(self, storage: Path, writer: Writer, version: str, boot_id: Callable[[], str] = kernel_boot_id) -> None:
        self.path = storage / RUN_FILE
        self._writer = writer
        self._version = version
        self._boot_id = boot_id
        self._started = False

    def started(self, at: dt.datetime, timezone: str | None = None, serial: int | None = None) -> str:
        """Record the start before anything else of this run (the journal's rows follow it); returns
        how the previous run ended. Only reads the marker: `mark_running` writes it."""
        previous = self._previous_stop(self._boot_id())
        self._started = True
        if previous in ("crash", "power_cut"):
            log.warning("the previous run did not stop cleanly (%s)", previous.replace("_", " "))
        self._writer.add([event(AGENT_START, at, timezone, serial, version=self._version, previous_stop=previous)])
        return previous

    def mark_running(self) -> None:
        """After the first frame, before the services start (as the start guard counts): written at
        once, so a crash from here on finds "running" at the next start."""
        try:
            atomic_write(self.path, json.dumps({"state": "running", "boot_id": self._boot_id()}).encode())
        except OSError as exc:
            log.warning("run marker not saved in %s: %s", self.path, exc.strerror or exc)

    def stopped(self, at: dt.datetime, manifest: Manifest | None, *, clean: bool, reason: str) -> None:
        """Record the stop (before the disk writer stops: it commits this last). Only a clean stop
        clears the marker, so a run that ended in a failure reads as a crash at the next start too."""
        if not self._started:
            return
        self._started = False
        timezone, serial = (manifest.timezone, manifest.serial) if manifest is not None else (None, None)
        self._writer.add([event(AGENT_STOP, at, timezone, serial, clean=clean, reason=reason)])
        if clean:
            boot = self._boot_id()
            self._writer.call(lambda: atomic_write(self.path, json.dumps({"state": "stopped", "boot_id": boot}).encode()))

    def _previous_stop(self, boot: str) -> str:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "first"
        except (OSError, ValueError):
            return "unknown"
        if not isinstance(data, dict):
            return "unknown"
        if data.get("state") == "stopped":
            return "clean"
        return "crash" if data.get("boot_id") == boot and boot else "power_cut"


class ScreenEvents:
    """On the display thread, inside the player: lit/dark transitions and the sign of life.

    Pure of I/O: it only builds records and hands them to the sink (the disk writer's memory)."""

    def __init__(self, sink: RecordSink) -> None:
        self._sink = sink
        self._lit: bool | None = None
        self._quiet_until: float | None = None

    def wrote(self, mono: float) -> None:
        """A record went to the journal: the agent is evidently alive until RUNNING_EVERY_S from now."""
        self._quiet_until = mono + RUNNING_EVERY_S

    def update(self, lit: bool, cause: str, mode: str, now: dt.datetime, mono: float, timezone: str | None,
               serial: int | None) -> None:
        if lit != self._lit:
            first = self._lit is None
            self._lit = lit
            self._sink.add([event(SCREEN_LIT if lit else SCREEN_DARK, now, timezone, serial,
                                  cause="start" if first else cause, mode=mode)])
            self.wrote(mono)
        elif self._quiet_until is not None and mono >= self._quiet_until:
            self._sink.add([event(RUNNING, now, timezone, serial)])
            self.wrote(mono)

"""The playback state machine: which showing is on, when it ends, and its proof of play.

Driven by the display loop: `update(now, mono)` applies the schedule's choice and returns the
Scene to draw. Pure of I/O: one PlayRecord per showing goes to the record sink when the showing
ends (completed or cut short: preempted, error, screen_off, shutdown, manifest_changed, withdrawn); in the
agent that sink is the disk writer, which commits off the display thread. Every call happens on
the display thread; the control dispatcher posts its changes there too.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from agent import schedule
from agent.content import Snapshot
from agent.events import ScreenEvents
from agent.health import Problems
from agent.ids import new_ulid
from agent.manifest import DEFAULT_TIMEZONE
from agent.models import Alert, Item, Manifest, PlayRecord, Scene, ScreenMode
from agent.withdrawn import MAX_WITHDRAWN, Withdrawn

log = logging.getLogger(__name__)

RETRY_FAILED_ITEM_S = 300.0  # an item that failed to load is skipped this long, then tried again
TICKER_EVERY_S = 1.0  # which ticker lines are active is decided once a second, not per frame


class SnapshotSource(Protocol):
    def snapshot(self) -> Snapshot: ...


class RecordSink(Protocol):
    def add(self, records: Iterable[PlayRecord]) -> None: ...


@dataclass
class Showing:
    id: str
    started_at: dt.datetime
    started_mono: float
    manifest: Manifest | None
    item: Item | None = None
    alert: Alert | None = None
    presented: bool = False  # its first frame is on screen (a slide may still be decoding before that)

    @property
    def key(self) -> str:
        return self.alert.id if self.alert is not None else self.item.id if self.item is not None else ""


def format_time(instant: dt.datetime, tz: dt.tzinfo) -> str:
    """RFC 3339 with milliseconds in the manifest's zone, like the §5 example."""
    return instant.astimezone(tz).isoformat(timespec="milliseconds")


class Player:
    def __init__(self, content: SnapshotSource, outbox: RecordSink, problems: Problems) -> None:
        self._content = content
        self._outbox = outbox
        self._problems = problems
        self._alerts: list[Alert] = []
        self._screen_mode: ScreenMode = "auto"
        self._showing: Showing | None = None
        self._last_item_id: str | None = None
        self._retry_after: dict[str, float] = {}
        self._screen_on = True
        self._upcoming: Item | None = None
        self._manifest_serial: int | None = None
        self._on_screen_key: str | None = None
        self._choice_key: object = None
        self._choice: schedule.Choice | None = None
        self._ticker_due = 0.0
        self._ticker_key: object = None
        self._ticker_manifest: Manifest | None = None
        self._ticker_text = ""
        self._events = ScreenEvents(outbox)  # lit/dark transitions and the sign of life, for the yearly report
        self._withdrawn = Withdrawn(None, frozenset())  # items and ticker lines off until a higher serial

    # --- commands (display thread) ---------------------------------------------------------

    def add_alert(self, alert: Alert) -> None:
        self._alerts = [a for a in self._alerts if a.id != alert.id] + [alert]
        log.info("alert %s on screen until %s: %s", alert.id, alert.until.isoformat(), alert.title)

    def clear_alerts(self, alert_id: str | None, now: dt.datetime, mono: float) -> int:
        """End one alert (by id) or all; returns how many ended."""
        ending = [a for a in self._alerts if alert_id is None or a.id == alert_id]
        self._alerts = [a for a in self._alerts if a not in ending]
        showing = self._showing
        if showing is not None and showing.alert is not None and showing.alert in ending:
            self._end(now, mono, completed=True, reason=None)
        return len(ending)

    def withdraw(self, ids: Iterable[str], now: dt.datetime, mono: float) -> tuple[list[str], Withdrawn]:
        """Take items and ticker lines off the screen until a manifest with a higher serial is
        current (§8). Returns the ids the current manifest has, and what is withdrawn now (to save)."""
        manifest = self._content.snapshot().manifest
        known = {item.id for item in manifest.items} | {line.id for line in manifest.ticker} if manifest else set()
        asked = list(dict.fromkeys(ids))
        serial = manifest.serial if manifest is not None else None
        held = self._withdrawn.ids if self._withdrawn.serial == serial else frozenset()
        kept = [*asked, *(i for i in held if i not in asked)][:MAX_WITHDRAWN]  # what was just asked is kept first
        self._withdrawn = Withdrawn(serial, frozenset(kept))
        self._choice_key = self._ticker_key = None  # decide again now, not at the next second
        self._ticker_due = 0.0
        showing = self._showing
        if showing is not None and showing.item is not None and showing.item.id in self._withdrawn.ids:
            self._end(now, mono, completed=False, reason="withdrawn")
        log.warning("withdrawn until a manifest above serial %s: %s", serial, ", ".join(asked))
        return [i for i in asked if i in known], self._withdrawn

    def restore_withdrawn(self, withdrawn: Withdrawn) -> None:
        self._withdrawn = withdrawn

    def set_screen_mode(self, mode: ScreenMode) -> None:
        if mode != self._screen_mode:
            log.info("screen mode: %s", mode)
        self._screen_mode = mode

    def item_failed(self, showing_id: str, message: str, now: dt.datetime, mono: float) -> None:
        """The display could not load the item of this showing: skip it, report, retry later."""
        showing = self._showing
        if showing is None or showing.id != showing_id or showing.item is None:
            return
        item = showing.item
        self._retry_after[item.id] = mono + RETRY_FAILED_ITEM_S
        self._problems.report(f"item:{item.id}", f"item {item.id} failed to load: {message}")
        self._end(now, mono, completed=False, reason="error")

    def finished(self, showing_id: str, now: dt.datetime, mono: float) -> None:
        """The display says this showing's video reached its own end (items without duration_s)."""
        showing = self._showing
        if showing is not None and showing.id == showing_id:
            self._end(now, mono, completed=True, reason=None)

    def presented(self, showing_id: str | None, now: dt.datetime, mono: float) -> None:
        """The display drew this showing's first frame. Its time starts now: a slide that took a
        second to decode still gets its whole duration, and its record says when it was on screen."""
        showing = self._showing
        if showing is None or showing.presented or showing.id != showing_id:
            return
        showing.presented = True
        if showing.item is not None:
            showing.started_at, showing.started_mono = now, mono
        self._on_screen_key = showing.key

    def shutdown(self, now: dt.datetime, mono: float) -> None:
        self._end(now, mono, completed=False, reason="shutdown")

    # --- state -------------------------------------------------------------------------------

    @property
    def current_item_id(self) -> str | None:
        """Read by the download thread to fetch what plays next first (a plain attribute read)."""
        showing = self._showing
        return showing.item.id if showing is not None and showing.item is not None else None

    @property
    def screen_mode(self) -> ScreenMode:
        return self._screen_mode

    @property
    def screen_on(self) -> bool:
        return self._screen_on

    @property
    def alert_active(self) -> bool:
        showing = self._showing
        return showing is not None and showing.alert is not None

    def status(self) -> dict[str, object]:
        showing = self._showing
        return {
            # What is on screen: a new showing counts once its first frame is (the old picture stays
            # up while its slide decodes).
            "current_item": None if showing is None else showing.key if showing.presented else self._on_screen_key,
            "screen_on": self._screen_on,
            "screen_mode": self._screen_mode,
            "alert_active": self.alert_active,
            "emergency": self.alert_active or (showing is not None and showing.item is not None
                                               and showing.item.priority == "emergency"),
        }

    def ends_at(self) -> float | None:
        """Monotonic time the current showing is due to end (None: open-ended)."""
        showing = self._showing
        if showing is None:
            return None
        if showing.item is not None and showing.item.duration_s is not None:
            return showing.started_mono + showing.item.duration_s
        return None

    def active_alerts(self) -> list[Alert]:
        return list(self._alerts)

    # --- the decision ------------------------------------------------------------------------

    @property
    def manifest_serial(self) -> int | None:
        """The serial of the manifest the last decision was made with (what the screen shows)."""
        return self._manifest_serial

    def update(self, now: dt.datetime, mono: float) -> Scene:
        snapshot = self._content.snapshot()
        self._manifest_serial = snapshot.manifest.serial if snapshot.manifest is not None else None
        self._expire_alerts(now, mono)
        withdrawn = self._withdrawn
        if withdrawn.ids and self._manifest_serial is not None and (withdrawn.serial or 0) < self._manifest_serial:
            log.info("a manifest above serial %s is current: withdrawn items may play again", withdrawn.serial)
            self._withdrawn = withdrawn = Withdrawn(None, frozenset())
        unplayable = {item_id for item_id, until in self._retry_after.items() if until > mono} | withdrawn.ids
        for item_id in [i for i, until in self._retry_after.items() if until <= mono]:
            del self._retry_after[item_id]
            self._problems.resolve(f"item:{item_id}")
        choice = self._choose(snapshot, now, unplayable)
        self._screen_on = choice.screen_on
        manifest = snapshot.manifest
        self._events.update(choice.screen_on, _screen_cause(choice, self._screen_mode), self._screen_mode, now, mono,
                            manifest.timezone if manifest is not None else None, self._manifest_serial)
        self._settle_current(snapshot, choice, now, mono)
        if self._showing is None:
            if choice.alert is not None:
                self._start(now, mono, snapshot.manifest, alert=choice.alert)
            elif choice.screen_on and choice.item is not None:
                self._start(now, mono, snapshot.manifest, item=choice.item)
                # With the new item on, the rule names the one after it: prepare that ahead.
                choice = self._choose(snapshot, now, unplayable)
        if self._showing is None:
            self._on_screen_key = None  # the splash or a dark screen
        return self._scene(snapshot.manifest, choice, now, mono)

    def _choose(self, snapshot: Snapshot, now: dt.datetime, unplayable: set[str]) -> schedule.Choice:
        """The rule's choice; evaluated again only when an input changes or a new second begins
        (windows are minutes, instants are seconds), not for every ticker frame."""
        key = (snapshot.version, id(snapshot.manifest), frozenset(unplayable), self._last_item_id, self._screen_mode,
               tuple(self._alerts), int(now.timestamp()))
        if key != self._choice_key or self._choice is None:
            self._choice_key = key
            self._choice = schedule.choose(
                snapshot.manifest, snapshot.verified_sha256, now,
                last_item_id=self._last_item_id, unplayable=unplayable,
                alerts=self._alerts, screen_mode=self._screen_mode,
            )
        return self._choice

    def _settle_current(self, snapshot: Snapshot, choice: schedule.Choice, now: dt.datetime, mono: float) -> None:
        """End the current showing if the choice, the manifest or its duration says so."""
        showing = self._showing
        if showing is None:
            return
        if choice.alert is not None:
            if showing.alert is None or showing.alert.id != choice.alert.id:
                self._end(now, mono, completed=False, reason="preempted")
            return
        if showing.alert is not None:
            # An alert no longer chosen was cleared or expired: both end it as intended.
            self._end(now, mono, completed=True, reason=None)
            return
        if not choice.screen_on:
            self._end(now, mono, completed=False, reason="screen_off")
            return
        item = showing.item
        assert item is not None
        manifest = snapshot.manifest
        if manifest is not showing.manifest:
            if manifest is None or manifest.item_by_id(item.id) is None:
                # An item the new manifest no longer lists was withdrawn by the province: off at once.
                self._end(now, mono, completed=False, reason="withdrawn")
                return
            if manifest.item_by_id(item.id) != item or _media_of(manifest, item) != _media_of(showing.manifest, item):
                # Changed content leaves the screen at once too: the old words may be what was wrong.
                self._end(now, mono, completed=False, reason="manifest_changed")
                return
        if schedule.should_interrupt(item, choice):
            self._end(now, mono, completed=False, reason="preempted")
            return
        ends = self.ends_at()
        if ends is not None and mono >= ends:
            self._end(now, mono, completed=True, reason=None)

    def _expire_alerts(self, now: dt.datetime, mono: float) -> None:
        expired = [a for a in self._alerts if a.until <= now]
        if not expired:
            return
        self._alerts = [a for a in self._alerts if a not in expired]
        for alert in expired:
            log.info("alert %s expired", alert.id)

    def _start(self, now: dt.datetime, mono: float, manifest: Manifest | None, *,
               item: Item | None = None, alert: Alert | None = None) -> None:
        self._showing = Showing(new_ulid(), now, mono, manifest, item=item, alert=alert)
        if item is not None:
            self._last_item_id = item.id
            log.debug("showing item %s (%s)", item.id, item.priority)

    def _end(self, now: dt.datetime, mono: float, *, completed: bool, reason: str | None) -> None:
        showing = self._showing
        if showing is None:
            return
        self._showing = None
        manifest = showing.manifest
        tz = schedule.zone(manifest.timezone if manifest is not None else DEFAULT_TIMEZONE)
        if showing.alert is not None:
            kind, title, priority, sha = "alert", showing.alert.title, "emergency", None
        else:
            assert showing.item is not None
            item = showing.item
            media = manifest.media_by_id(item.media) if manifest is not None else None
            kind, title, priority, sha = item.type, item.title, item.priority, media.sha256 if media else None
        record = PlayRecord(
            id=showing.id,
            item=showing.key,
            type=kind,
            title=title,
            media_sha256=sha,
            manifest_serial=manifest.serial if manifest is not None else None,
            priority=priority,
            started_at=format_time(showing.started_at, tz),
            ended_at=format_time(now, tz),
            duration_ms=max(0, round((mono - showing.started_mono) * 1000)),
            completed=completed,
            reason=reason,
        )
        self._outbox.add([record])
        self._events.wrote(mono)

    def _ticker(self, manifest: Manifest | None, now: dt.datetime, mono: float) -> str:
        """The active ticker lines joined; the same string object while they stay the same, so the
        renderer sees "unchanged" without comparing a long text every frame."""
        if mono < self._ticker_due and self._ticker_manifest is manifest:
            return self._ticker_text
        self._ticker_due, self._ticker_manifest = mono + TICKER_EVERY_S, manifest
        withdrawn = self._withdrawn.ids
        lines = [line for line in schedule.active_ticker(manifest, now) if line.id not in withdrawn]
        key = (id(manifest), tuple(line.id for line in lines))
        if key != self._ticker_key:
            self._ticker_key = key
            self._ticker_text = " \u2022 ".join(line.text for line in lines)
        return self._ticker_text

    def _scene(self, manifest: Manifest | None, choice: schedule.Choice, now: dt.datetime, mono: float) -> Scene:
        ticker = self._ticker(manifest, now, mono)
        showing = self._showing
        if showing is not None and showing.alert is not None:
            return Scene("alert", manifest, alert=showing.alert, showing_id=showing.id)
        if not choice.screen_on:
            return Scene("off", manifest)
        if showing is None:
            return Scene("splash", manifest, ticker_text=ticker)
        upcoming = choice.item if choice.item is not None and choice.item != showing.item else None
        return Scene("item", manifest, item=showing.item, ticker_text=ticker, upcoming=upcoming,
                     showing_id=showing.id)


def _screen_cause(choice: schedule.Choice, mode: ScreenMode) -> str:
    """Why the screen is lit or dark now (recorded with each transition)."""
    if choice.alert is not None:
        return "alert"
    if mode != "auto":
        return "forced"
    if choice.item is not None and choice.item.priority == "emergency":
        return "emergency"
    return "schedule"


def _media_of(manifest: Manifest | None, item: Item) -> object:
    return manifest.media_by_id(item.media) if manifest is not None and item.media else None

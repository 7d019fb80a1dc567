"""What the board says about itself: the §6 heartbeat and the fuller `ctl status`.

`Heartbeat` is the one declaration of PROTOCOL.md §6's fields (a heartbeat is paid per byte on a
SIM: nothing else goes in it but the optional hardware readings). `Status` is the heartbeat plus
local details for a technician. Both are assembled on the caller's thread (the control socket,
the reporter, MQTT) from parts that are safe to read from any thread; the display thread only
publishes its `ScreenState` and is never asked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent import __version__
from agent.loop import ScreenState


@dataclass(frozen=True)
class CacheStatus:
    bytes_used: int
    bytes_limit: int
    media_missing: int


@dataclass(frozen=True)
class Heartbeat:
    """PROTOCOL.md §6, required fields first; `readings` are the optional hardware fields."""

    device: str
    sent_at: str
    agent_version: str
    uptime_s: int
    manifest_serial: int | None
    current_item: str | None
    screen_on: bool
    alert_active: bool
    cache: CacheStatus
    disk_free_bytes: int
    outbox_pending: int
    last_sync_ok_at: str | None
    clock_offset_s: float
    errors: tuple[str, ...]
    readings: Mapping[str, Any] = field(default_factory=dict)
    outbox_summarised: int = 0  # records folded into daily summaries by the cap (0: left out)
    update: Mapping[str, Any] | None = None  # §11, when self-update is on
    board_key: str | None = None  # §12: the board's public key (base64), when it has one
    display: Mapping[str, Any] | None = None  # screen health: connectors, CEC power, frames since the last one
    data: Mapping[str, Any] | None = None  # the data meter, compact: bytes by kind today and this month

    def to_json(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("readings", "outbox_summarised", "update", "board_key", "display", "data")}
        body["cache"] = dataclasses.asdict(self.cache)
        body["errors"] = list(self.errors)
        body.update(self.readings)
        if self.outbox_summarised:
            body["outbox_summarised"] = self.outbox_summarised
        if self.update is not None and self.update.get("state") != "off":
            body["update"] = dict(self.update)
        if self.board_key is not None:
            body["board_key"] = self.board_key
        if self.display is not None:
            body["display"] = dict(self.display)
        if self.data is not None:
            body["data"] = dict(self.data)
        return body


@dataclass(frozen=True)
class Status:
    """`ctl status`: the heartbeat's fields at the top level, and more for a person on SSH."""

    heartbeat: Heartbeat
    screen_mode: str
    source: str
    sync: Mapping[str, Any]
    report: Mapping[str, Any] | None
    mqtt: Mapping[str, Any] | None
    alerts: Sequence[Mapping[str, Any]]
    display: Mapping[str, Any]
    storage: Mapping[str, Any]
    update: Mapping[str, Any]
    identity: Mapping[str, Any]
    provision: Mapping[str, Any] | None = None
    settings: Mapping[str, Any] | None = None
    data: Mapping[str, Any] | None = None  # the data meter in full (the heartbeat carries it compact)

    def to_json(self) -> dict[str, Any]:
        return {**self.heartbeat.to_json(), "update": dict(self.update), "identity": dict(self.identity),
                "provision": dict(self.provision) if self.provision is not None else None,
                "settings": dict(self.settings or {}),
                **({"data": dict(self.data)} if self.data is not None else {}),
                "screen_mode": self.screen_mode,
                "source": self.source,
                "sync": dict(self.sync), "report": dict(self.report) if self.report is not None else None,
                "mqtt": dict(self.mqtt) if self.mqtt is not None else None, "alerts": list(self.alerts),
                "display": dict(self.display), "storage": dict(self.storage)}


class Health(Protocol):
    def health(self) -> Mapping[str, Any]: ...


class DataView(Protocol):
    def heartbeat(self) -> Mapping[str, Any]: ...
    def status(self) -> Mapping[str, Any]: ...


class SyncSource(Health, Protocol):
    @property
    def last_sync_ok_at(self) -> float | None: ...


@dataclass(frozen=True)
class StatusParts:
    """Everything status reads, each safe to read from any thread."""

    device_id: str
    source_url: str
    storage_dir: Path
    cache_limit_bytes: int
    started_mono: float
    now: Callable[[], dt.datetime]
    clock_offset: Callable[[], float]
    screen: Callable[[], ScreenState]
    manifest_and_verified: Callable[[], tuple[Any, frozenset[str]]]
    cache_bytes: Callable[[], int]
    records_pending: Callable[[], int]
    records_summarised: Callable[[], int]
    errors: Callable[[], list[str]]
    source: SyncSource
    reporter: Health | None
    mqtt: Health | None
    display: Callable[[], Mapping[str, Any]]
    storage: Callable[[], Mapping[str, Any]]
    readings: Callable[[], Mapping[str, Any]]
    update: Callable[[], Mapping[str, Any]]
    identity: Mapping[str, Any]  # {"fingerprint", "public_key"} or {"error"}: fixed for the run
    provision: Health | None = None
    settings: Callable[[], Mapping[str, Any]] = dict  # remote-settable keys: value and where it comes from
    screen_health: Callable[[bool], Mapping[str, Any]] | None = None  # (since the last heartbeat?) → display
    meter: DataView | None = None  # the data meter (agent/meter.py)


class StatusBuilder:
    def __init__(self, parts: StatusParts) -> None:
        self._parts = parts

    def heartbeat(self, *, with_readings: bool = True, count_frames: bool | None = None) -> Heartbeat:
        """The §6 heartbeat. `count_frames` (default: `with_readings`) starts counting the frames
        presented afresh: only the periodic heartbeat does, not a presence update or `ctl status`."""
        parts = self._parts
        screen = parts.screen()
        manifest, verified = parts.manifest_and_verified()
        missing = len({m.sha256 for m in manifest.media} - verified) if manifest is not None else 0
        try:
            disk_free = shutil.disk_usage(parts.storage_dir).free
        except OSError:
            disk_free = 0
        return Heartbeat(
            device=parts.device_id,
            sent_at=parts.now().isoformat(timespec="seconds"),
            agent_version=__version__,
            uptime_s=round(time.monotonic() - parts.started_mono),
            manifest_serial=screen.manifest_serial,
            current_item=screen.current_item,
            screen_on=screen.screen_on,
            alert_active=screen.alert_active,
            cache=CacheStatus(parts.cache_bytes(), parts.cache_limit_bytes, missing),
            disk_free_bytes=disk_free,
            outbox_pending=parts.records_pending(),
            last_sync_ok_at=_iso(parts.source.last_sync_ok_at),
            clock_offset_s=round(parts.clock_offset(), 3),
            errors=tuple(parts.errors()),
            readings=parts.readings() if with_readings else {},
            outbox_summarised=parts.records_summarised(),
            update=parts.update(),
            board_key=parts.identity.get("public_key"),
            # A heartbeat counts frames since the one before; `ctl status` only looks.
            display=parts.screen_health(with_readings if count_frames is None else count_frames)
            if parts.screen_health is not None else None,
            data=parts.meter.heartbeat() if parts.meter is not None else None,
        )

    def status(self) -> Status:
        parts = self._parts
        screen = parts.screen()
        heartbeat = self.heartbeat(with_readings=False)
        health = {k: v for k, v in (heartbeat.display or {}).items() if k != "frames"}  # frames: the total below
        return Status(
            heartbeat=heartbeat,
            screen_mode=screen.screen_mode,
            source=parts.source_url,
            sync=parts.source.health(),
            report=parts.reporter.health() if parts.reporter is not None else None,
            mqtt=parts.mqtt.health() if parts.mqtt is not None else None,
            alerts=[{"id": a.id, "title": a.title, "until": a.until.isoformat()} for a in screen.alerts],
            display={**health, **parts.display(), "frame_ms": dict(screen.frame_ms),
                     "video": dict(screen.video) if screen.video is not None else None},
            storage=parts.storage(),
            update=parts.update(),
            identity=parts.identity,
            provision=parts.provision.health() if parts.provision is not None else None,
            settings=parts.settings(),
            data=parts.meter.status() if parts.meter is not None else None,
        )


def _iso(unix_time: float | None) -> str | None:
    if unix_time is None:
        return None
    return dt.datetime.fromtimestamp(unix_time, dt.UTC).isoformat(timespec="seconds")

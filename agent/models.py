"""Frozen value types shared by every part of the agent.

Data from outside (manifest bytes, YAML, control commands) is validated once at the edge into
these types; code inside trusts them. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

PRIORITIES: tuple[str, ...] = ("normal", "high", "emergency")
"""Priority classes, lowest first (thông thường / ưu tiên / khẩn cấp)."""

Priority = Literal["normal", "high", "emergency"]
ItemType = Literal["image", "video", "text"]


class InputRejected(Exception):
    """Input from outside (manifest, command, media, bundle) was refused; str() is the reason, safe to echo.

    Deliberately not a ValueError: a refusal is caught by name, never by accident.
    """


class ManifestRejected(InputRejected):
    """A manifest or its envelope was refused (PROTOCOL.md §3-§4, §10)."""


class CommandRejected(InputRejected):
    """A command was dropped without an ack: unsigned, wrongly signed, mis-addressed, unreadable (§8)."""


class MediaRejected(InputRejected):
    """A media file's bytes or pixels were refused (size, SHA-256, dimensions)."""


def priority_rank(priority: str) -> int:
    """0 for normal, 1 for high, 2 for emergency."""
    return PRIORITIES.index(priority)


@dataclass(frozen=True)
class TimeWindow:
    """A local wall-clock window in minutes after midnight; end <= start wraps past midnight."""

    start_min: int
    end_min: int

    @property
    def wraps(self) -> bool:
        return self.end_min <= self.start_min


@dataclass(frozen=True)
class When:
    """When an item or ticker line may play. Every part absent means always."""

    from_: dt.datetime | None = None
    until: dt.datetime | None = None
    days: frozenset[int] | None = None  # ISO weekdays, 1 = Monday
    times: tuple[TimeWindow, ...] | None = None


ALWAYS = When()


@dataclass(frozen=True)
class Media:
    id: str
    url: str
    sha256: str
    size: int
    type: str


@dataclass(frozen=True)
class Item:
    id: str
    type: ItemType
    duration_s: float | None  # None only for video: its own length
    priority: Priority = "normal"
    when: When = ALWAYS
    media: str | None = None  # a Media.id, for image and video
    title: str = ""
    body: str = ""


@dataclass(frozen=True)
class TickerLine:
    id: str
    text: str
    priority: Priority = "normal"
    when: When = ALWAYS


@dataclass(frozen=True)
class Theme:
    background: tuple[int, int, int] = (0x0B, 0x3D, 0x91)
    foreground: tuple[int, int, int] = (0xFF, 0xFF, 0xFF)
    accent: tuple[int, int, int] = (0xFF, 0xD2, 0x00)


@dataclass(frozen=True)
class Layout:
    title: str = ""
    logo: str | None = None  # a Media.id
    clock: bool = True
    ticker_speed_px_s: float = 120.0
    theme: Theme = field(default_factory=Theme)
    rotation: int = 0  # degrees clockwise: 0, 90, 180, 270


@dataclass(frozen=True)
class ReleaseRef:
    """The signed release document a manifest names (PROTOCOL.md §11)."""

    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    serial: int
    issued_at: dt.datetime
    timezone: str
    layout: Layout
    media: tuple[Media, ...]
    items: tuple[Item, ...]
    ticker: tuple[TickerLine, ...]
    screen_on: tuple[TimeWindow, ...] | None  # None = always on
    default_item: str | None
    audience: tuple[str, ...] | None = None
    signed_by: str | None = None  # keyid of the key that verified it; None for a bare manifest
    release: ReleaseRef | None = None  # the agent release the board should run (§11); None = keep what it has
    # Remote settings (§4, checked against the board's bounds in agent/settings.py); JSON values,
    # so left out of the hash (manifests are compared, never hashed by their settings).
    settings: Mapping[str, Any] | None = field(default=None, hash=False)

    def media_by_id(self, media_id: str | None) -> Media | None:
        for media in self.media:
            if media.id == media_id:
                return media
        return None

    def item_by_id(self, item_id: str | None) -> Item | None:
        for item in self.items:
            if item.id == item_id:
                return item
        return None


@dataclass(frozen=True)
class Alert:
    """An emergency message over everything until `until` or cleared."""

    id: str
    title: str
    body: str
    until: dt.datetime


ScreenMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class PlayRecord:
    """One showing (PROTOCOL.md §5)."""

    id: str
    item: str
    type: str
    title: str
    media_sha256: str | None
    manifest_serial: int | None
    priority: str
    started_at: str
    ended_at: str
    duration_ms: int
    completed: bool
    reason: str | None

    def to_json_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "item": self.item,
            "type": self.type,
            "title": self.title,
            "media_sha256": self.media_sha256,
            "manifest_serial": self.manifest_serial,
            "priority": self.priority,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": self.duration_ms,
            "completed": self.completed,
            "reason": self.reason,
        }


SceneMode = Literal["splash", "item", "alert", "off"]


@dataclass(frozen=True)
class Scene:
    """What the display should show now, decided by the player."""

    mode: SceneMode
    manifest: Manifest | None = None
    item: Item | None = None
    alert: Alert | None = None
    ticker_text: str = ""
    upcoming: Item | None = None  # the item likely next, to prepare ahead of its turn
    showing_id: str | None = None  # changes with every new showing, even of the same item


class MediaSource(Protocol):
    """Where the display finds verified media bytes (implemented by the cache)."""

    def path_for(self, sha256: str) -> str | None:
        """The local path of a verified file, or None when it is not (yet) verified."""


class Room(enum.Enum):
    """Whether a new file fits in the cache (MediaStore.make_room_for)."""

    MADE = "made"
    AFTER_SCREEN_CHANGES = "after-screen-changes"  # what is on screen holds the room the rest needs
    NEVER = "never"  # the manifest's own media do not fit in the limit


class ProblemSink(Protocol):
    """Where a part files what is wrong (agent/health.py's Problems): `errors` in status and heartbeat."""

    def report(self, key: str, message: str) -> None: ...
    def resolve(self, key: str) -> None: ...


class ManifestSink(Protocol):
    """The core's side of a source (agent/content.py's Content): verifies, then makes current."""

    @property
    def etag(self) -> str | None: ...
    def offer(self, raw: bytes, origin: str) -> Manifest | None: ...
    def commit(self, manifest: Manifest, raw: bytes, etag: str | None = None) -> None: ...
    def remember_etag(self, etag: str | None) -> None: ...
    def current(self) -> Manifest | None: ...
    def media_changed(self) -> None: ...

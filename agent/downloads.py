"""Download windows for metered SIMs (AGENT.md `downloads`): when large files may come down.

Many SIM plans are cheap at night. With `downloads.windows` set, media larger than
`downloads.small_mb` (MiB) and agent release wheels as large wait for a window (local time in the
manifest's time zone; an end before its start wraps past midnight, as manifest times do). Small
files, and every media of an emergency item, come at any time: a warning never waits for a tariff.
Manifest polls, heartbeats and alerts are not downloads and never wait. A large download still
running when its window closes stops there and resumes from its partial file in the next one.
Pure: `now` is passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.manifest import parse_window
from agent.models import Manifest, Media, TimeWindow
from agent.schedule import screen_lit_by_windows, zone

MIB = 1024 * 1024
MINUTES_A_DAY = 24 * 60


@dataclass(frozen=True)
class Hold:
    """Why a file waits: the window it waits for opens at `until` (local time)."""

    until: dt.datetime
    size: int


@dataclass(frozen=True)
class DownloadRules:
    windows: tuple[TimeWindow, ...] = ()  # empty: any time
    small_bytes: int = 2 * MIB

    @classmethod
    def from_config(cls, windows: Sequence[Sequence[str]], small_mb: float) -> DownloadRules:
        """From `downloads.windows` and `downloads.small_mb`, already checked by the config loader."""
        return cls(tuple(parse_window(list(window), "downloads.windows") for window in windows), int(small_mb * MIB))

    def is_open(self, now: dt.datetime, tz: dt.tzinfo) -> bool:
        """Large downloads may run at `now` (no windows set, or inside one)."""
        return not self.windows or screen_lit_by_windows(self.windows, now, tz)

    def next_open(self, now: dt.datetime, tz: dt.tzinfo) -> dt.datetime | None:
        """When the next window opens (local time in `tz`); None when downloads may run now."""
        if self.is_open(now, tz):
            return None
        local = now.astimezone(tz).replace(second=0, microsecond=0)
        minute = local.hour * 60 + local.minute
        wait = min((window.start_min - minute) % MINUTES_A_DAY or MINUTES_A_DAY for window in self.windows)
        return local + dt.timedelta(minutes=wait)

    def closes_at(self, now: dt.datetime, tz: dt.tzinfo) -> dt.datetime | None:
        """When the window `now` is in closes (None: no windows, or windows that join up round the
        clock). A large download stops there rather than run on at the day's tariff."""
        if not self.windows or not self.is_open(now, tz):
            return None
        local = now.astimezone(tz).replace(second=0, microsecond=0)
        for minutes in range(1, MINUTES_A_DAY + 1):
            later = local + dt.timedelta(minutes=minutes)
            if not self.is_open(later, tz):
                return later
        return None

    def holds(self, size: int, now: dt.datetime, tz: dt.tzinfo) -> Hold | None:
        """None: a file of `size` bytes may download now. Otherwise until when it waits."""
        if size <= self.small_bytes:
            return None
        opens = self.next_open(now, tz)
        return Hold(opens, size) if opens is not None else None

    def hold_media(self, manifest: Manifest, media: Media, now: dt.datetime) -> Hold | None:
        """`holds` for one of `manifest`'s media: an emergency item's media never wait."""
        if not self.windows or media.id in emergency_media(manifest):
            return None
        return self.holds(media.size, now, zone(manifest.timezone))

    def seconds_left(self, size: int, now: dt.datetime, tz: dt.tzinfo) -> float | None:
        """How long a download of `size` bytes begun at `now` may run before its window closes and
        it pauses; None: it runs to its end (a small file, no windows, windows round the clock)."""
        if size <= self.small_bytes:
            return None
        closes = self.closes_at(now, tz)
        return None if closes is None else (closes - now).total_seconds()

    def media_seconds_left(self, manifest: Manifest, media: Media, now: dt.datetime) -> float | None:
        """`seconds_left` for one of `manifest`'s media: an emergency item's media never pause."""
        if media.id in emergency_media(manifest):
            return None
        return self.seconds_left(media.size, now, zone(manifest.timezone))


def emergency_media(manifest: Manifest) -> frozenset[str]:
    """Media ids an emergency item shows: exempt from every window."""
    return frozenset(item.media for item in manifest.items if item.priority == "emergency" and item.media)


@dataclass(frozen=True)
class Windows:
    """The rules in force with the board's clock and time zone, for a caller that has no manifest
    at hand (the updater's wheels)."""

    rules: Callable[[], DownloadRules]
    now: Callable[[], dt.datetime]
    tz: Callable[[], dt.tzinfo]

    def hold(self, size: int) -> Hold | None:
        return self.rules().holds(size, self.now(), self.tz())

    def seconds_left(self, size: int) -> float | None:
        return self.rules().seconds_left(size, self.now(), self.tz())

"""Download windows for metered SIMs (AGENT.md `downloads`): when large files may come down.

Many SIM plans are cheap at night. With `downloads.windows` set, media larger than
`downloads.small_mb` (MiB) and agent releases wait for a window (local time in the manifest's time
zone; an end before its start wraps past midnight, as manifest times do). Small media, and every
media of an emergency item, come at any time: a warning never waits for a tariff. Manifest polls,
heartbeats and alerts are not downloads and never wait. Pure: `now` is passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from agent.models import Manifest, Media, TimeWindow
from agent.schedule import screen_lit_by_windows, zone

MIB = 1024 * 1024
MINUTES_A_DAY = 24 * 60


def parse_windows(windows: Sequence[Sequence[str]]) -> tuple[TimeWindow, ...]:
    """Config windows (["HH:MM", "HH:MM"], already checked by the config loader) as minute windows."""
    def minutes(clock: str) -> int:
        hours, mins = clock.split(":")
        return int(hours) * 60 + int(mins)
    return tuple(TimeWindow(minutes(start), minutes(end)) for start, end in windows)


@dataclass(frozen=True)
class DownloadRules:
    windows: tuple[TimeWindow, ...] = ()  # empty: any time
    small_bytes: int = 2 * MIB

    @classmethod
    def from_config(cls, windows: Sequence[Sequence[str]], small_mb: float) -> DownloadRules:
        return cls(parse_windows(windows), int(small_mb * MIB))

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

    def hold_until(self, manifest: Manifest, media: Media, now: dt.datetime) -> dt.datetime | None:
        """None: fetch `media` now. Otherwise the time its window opens."""
        if not self.windows or media.size <= self.small_bytes or media.id in emergency_media(manifest):
            return None
        return self.next_open(now, zone(manifest.timezone))


def emergency_media(manifest: Manifest) -> frozenset[str]:
    """Media ids an emergency item shows: exempt from every window."""
    return frozenset(item.media for item in manifest.items if item.priority == "emergency" and item.media)

"""What plays now: the resolution rule of PROTOCOL.md §4, as pure functions.

No I/O and no clock reads: every function takes `now` (an aware datetime), so tests can check
thousands of instants without a display or a clock.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache

from agent.models import Alert, Item, Manifest, Media, ScreenMode, TickerLine, TimeWindow, When, priority_rank


@lru_cache(maxsize=16)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """ZoneInfo lookups read tz files; the few names a board sees are cached."""
    return zoneinfo.ZoneInfo(name)


def _in_window(window: TimeWindow, minute: int) -> tuple[bool, int]:
    """(inside, day shift): a wrapped window's early-morning part belongs to the previous day."""
    if not window.wraps:
        return window.start_min <= minute < window.end_min, 0
    if minute >= window.start_min:
        return True, 0
    if minute < window.end_min:
        return True, -1
    return False, 0


def when_holds(when: When, now: dt.datetime, tz: dt.tzinfo) -> bool:
    """Whether `when` admits the instant `now`, with days and times read in `tz`."""
    if when.from_ is not None and now < when.from_:
        return False
    if when.until is not None and now > when.until:
        return False
    local = now.astimezone(tz)
    weekday = local.isoweekday()
    if when.times is None:
        return when.days is None or weekday in when.days
    minute = local.hour * 60 + local.minute
    for window in when.times:
        inside, day_shift = _in_window(window, minute)
        if not inside:
            continue
        window_day = (weekday - 1 + day_shift) % 7 + 1
        if when.days is None or window_day in when.days:
            return True
    return False


def screen_lit_by_windows(windows: Sequence[TimeWindow] | None, now: dt.datetime, tz: dt.tzinfo) -> bool:
    """`screen.on`: absent means always lit."""
    if windows is None:
        return True
    local = now.astimezone(tz)
    minute = local.hour * 60 + local.minute
    return any(_in_window(window, minute)[0] for window in windows)


def playable_items(
    manifest: Manifest,
    verified_sha256: Collection[str],
    now: dt.datetime,
    unplayable: Collection[str] = (),
) -> list[Item]:
    """Items whose `when` holds and whose media are verified, in manifest order.

    `unplayable` holds ids of items that recently failed to load (skipped for a while).
    """
    tz = zone(manifest.timezone)
    return [
        item
        for item in manifest.items
        if item.id not in unplayable
        and media_ready(manifest, item, verified_sha256)
        and when_holds(item.when, now, tz)
    ]


def media_ready(manifest: Manifest, item: Item, verified_sha256: Collection[str]) -> bool:
    if item.media is None:
        return True
    media = manifest.media_by_id(item.media)
    return media is not None and media.sha256 in verified_sha256


def top_class(items: Sequence[Item]) -> list[Item]:
    """Only the highest priority class present plays."""
    if not items:
        return []
    best = max(priority_rank(item.priority) for item in items)
    return [item for item in items if priority_rank(item.priority) == best]


def next_in_rotation(manifest: Manifest, candidates: Sequence[Item], last_item_id: str | None) -> Item | None:
    """Round-robin in manifest order: the first candidate after the last item shown, wrapping."""
    if not candidates:
        return None
    order = {item.id: index for index, item in enumerate(manifest.items)}
    last_index = order.get(last_item_id, -1) if last_item_id is not None else -1
    for item in candidates:
        if order[item.id] > last_index:
            return item
    return candidates[0]


@dataclass(frozen=True)
class Choice:
    """The outcome of the rule at one instant."""

    screen_on: bool
    alert: Alert | None
    item: Item | None  # None with screen on and no alert → the splash


def active_alert(alerts: Sequence[Alert], now: dt.datetime) -> Alert | None:
    """The most recently started unexpired alert (alerts are kept in the order they arrived)."""
    live = [alert for alert in alerts if alert.until > now]
    return live[-1] if live else None


def choose(
    manifest: Manifest | None,
    verified_sha256: Collection[str],
    now: dt.datetime,
    *,
    last_item_id: str | None = None,
    unplayable: Collection[str] = (),
    alerts: Sequence[Alert] = (),
    screen_mode: ScreenMode = "auto",
) -> Choice:
    """The whole rule: alert > (screen off) > highest class round-robin > default item > splash."""
    alert = active_alert(alerts, now)
    if alert is not None:
        return Choice(screen_on=True, alert=alert, item=None)
    if screen_mode == "off":
        return Choice(screen_on=False, alert=None, item=None)
    if manifest is None:
        return Choice(screen_on=True, alert=None, item=None)
    candidates = top_class(playable_items(manifest, verified_sha256, now, unplayable))
    emergency = bool(candidates) and candidates[0].priority == "emergency"
    lit = screen_mode == "on" or emergency or screen_lit_by_windows(manifest.screen_on, now, zone(manifest.timezone))
    if not lit:
        return Choice(screen_on=False, alert=None, item=None)
    item = next_in_rotation(manifest, candidates, last_item_id)
    if item is None:
        item = default_item(manifest, verified_sha256, unplayable)
    return Choice(screen_on=True, alert=None, item=item)


def default_item(manifest: Manifest, verified_sha256: Collection[str], unplayable: Collection[str] = ()) -> Item | None:
    """`default_item` plays whatever its own `when` says, but only with verified media."""
    item = manifest.item_by_id(manifest.default_item)
    if item is None or item.id in unplayable or not media_ready(manifest, item, verified_sha256):
        return None
    return item


def active_ticker(manifest: Manifest | None, now: dt.datetime) -> list[TickerLine]:
    """Ticker lines follow the same `when` and priority-class rules as items."""
    if manifest is None:
        return []
    tz = zone(manifest.timezone)
    live = [line for line in manifest.ticker if when_holds(line.when, now, tz)]
    if not live:
        return []
    best = max(priority_rank(line.priority) for line in live)
    return [line for line in live if priority_rank(line.priority) == best]


def should_interrupt(current: Item | None, choice: Choice) -> bool:
    """Only an emergency item (or an alert, handled apart) cuts the item on screen short."""
    if choice.item is None or current is None:
        return False
    return choice.item.priority == "emergency" and current.priority != "emergency"


def media_in_order_of_need(manifest: Manifest, now: dt.datetime, current_item_id: str | None) -> list[Media]:
    """Download order on a slow link: the logo, then what the rotation will show next, then the rest.

    Items whose `when` holds now come first, in rotation order starting after the item on screen,
    highest class first; then the default item; then every other item in manifest order.
    """
    tz = zone(manifest.timezone)
    live = [item for item in manifest.items if when_holds(item.when, now, tz)]
    order = {item.id: index for index, item in enumerate(manifest.items)}
    start = order.get(current_item_id, -1) if current_item_id is not None else -1
    live.sort(key=lambda item: (-priority_rank(item.priority), (order[item.id] - start - 1) % len(manifest.items)))
    default = manifest.item_by_id(manifest.default_item)
    items = live + ([default] if default is not None else []) + list(manifest.items)
    wanted: list[Media] = []
    seen: set[str] = set()
    for media_id in [manifest.layout.logo, *(item.media for item in items), *(m.id for m in manifest.media)]:
        media = manifest.media_by_id(media_id)
        if media is not None and media.id not in seen:
            seen.add(media.id)
            wanted.append(media)
    return wanted

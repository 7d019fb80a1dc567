"""Manifest acceptance: bytes from a source → a verified, frozen Manifest (PROTOCOL.md §3-§4, §10).

The only way content reaches the screen. Pure: callers pass the trusted keys, the board's identity
and the last accepted serial; persisting the serial is the caller's job (agent/content.py). Every
limit of §10 is checked here, so a manifest that passes cannot ask the renderer for the impossible.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from agent import limits
from agent.envelope import MANIFEST_PAYLOAD_TYPE, TrustedKey, open_envelope
from agent.limits import show_value
from agent.models import (
    PRIORITIES,
    InputRejected,
    Item,
    Layout,
    Manifest,
    ManifestRejected,
    Media,
    ReleaseRef,
    Theme,
    TickerLine,
    TimeWindow,
    When,
)

SCHEMA = "bangtin.manifest/1"
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"

# Ids end up in logs, records and (for media) never in paths, but a strict shape keeps them
# printable and stops a hostile manifest from smuggling separators or control characters.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
COLOUR_PATTERN = re.compile(r"^#[0-9A-Fa-f]{6}$")
HHMM_PATTERN = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
MIME_PATTERN = re.compile(r"^[a-z]+/[a-z0-9.+-]{1,100}$")
ITEM_MEDIA_KIND = {"image": "image/", "video": "video/"}
MAX_WINDOWS = 1440  # `times` / `screen.on` windows per entry: one per minute of a day


def accept_manifest(
    raw: bytes,
    *,
    keys: Sequence[TrustedKey],
    device_id: str,
    groups: Sequence[str],
    last_serial: int | None,
    require_audience: bool = True,
) -> Manifest:
    """Verify and parse manifest bytes. Raises ManifestRejected with a precise reason.

    A serial equal to `last_serial` is accepted here (the caller treats it as "no change");
    a lower one is refused (rollback protection). `require_audience=False` is for a manifest this
    board accepted before (stored under protocol v1): it is still verified with today's keys.
    """
    try:
        opened = open_envelope(raw, MANIFEST_PAYLOAD_TYPE, keys, max_bytes=limits.MAX_MANIFEST_BYTES)
    except InputRejected as exc:
        raise ManifestRejected(str(exc)) from None
    manifest = parse_manifest(opened.document, signed_by=opened.signed_by)
    check_audience(manifest.audience, device_id, groups, required=bool(keys) and require_audience)
    if last_serial is not None and manifest.serial < last_serial:
        raise ManifestRejected(f"serial {manifest.serial} is lower than the accepted {last_serial} (rollback refused)")
    return manifest


def check_audience(audience: Sequence[str] | None, device_id: str, groups: Sequence[str], *, required: bool,
                   what: str = "manifest") -> None:
    """The board or one of its groups must be named (§3, §4); with trusted keys an audience is required."""
    if audience is None:
        if required:
            raise ManifestRejected(f"{what} has no audience")
        return
    accepted_names = {device_id, *(f"group:{group}" for group in groups)}
    if not accepted_names.intersection(audience):
        named = show_value(list(audience[:5]), 120)
        raise ManifestRejected(f"audience {named} names neither this board ({device_id!r}) nor its groups")


# --- schema -------------------------------------------------------------------------------


def nfc(text: str) -> str:
    """Vietnamese typed with combining marks ("Unicode tổ hợp") becomes precomposed."""
    return unicodedata.normalize("NFC", text)


class _Reader:
    """Typed access to one JSON object with error messages carrying the JSON path."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, expected: str, found: Any) -> ManifestRejected:
        return ManifestRejected(f"{self.where(key)}: expected {expected}, found {show_value(found)}")

    def text(self, key: str, *, default: str | None = None, required: bool = False,
             max_chars: int | None = None) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            if required:
                raise ManifestRejected(f"{self.where(key)}: expected a string, found nothing")
            return None
        if not isinstance(value, str):
            raise self.fail(key, "a string", value)
        value = nfc(value)
        if max_chars is not None and len(value) > max_chars:
            raise ManifestRejected(f"{self.where(key)}: {len(value)} characters, over the limit of {max_chars}")
        return value

    def ident(self, key: str) -> str:
        value = self.text(key, required=True, max_chars=128)
        assert value is not None
        if not ID_PATTERN.match(value):
            raise self.fail(key, "an id of letters, digits, '.', '_', ':' or '-' (1-128)", value)
        return value

    def number(self, key: str, *, low: float, high: float, low_open: bool = False) -> float | None:
        """A finite number in [low, high] (or (low, high] with `low_open`)."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, "a number", value)
        if value > high or value < low or (low_open and value == low):
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            raise self.fail(key, f"a number {bound} and <= {high:g}", value)
        return float(value)

    def obj(self, key: str) -> _Reader:
        value = self.data.get(key)
        if value is None:
            return _Reader({}, self.where(key))
        if not isinstance(value, dict):
            raise self.fail(key, "an object", value)
        return _Reader(value, self.where(key))

    def objects(self, key: str, limit: int) -> list[_Reader]:
        value = self.data.get(key, [])
        if value is None:
            value = []
        if not isinstance(value, list):
            raise self.fail(key, "a list", value)
        if len(value) > limit:
            raise ManifestRejected(f"{self.where(key)}: {len(value)} entries, over the limit of {limit}")
        readers = []
        for index, element in enumerate(value):
            if not isinstance(element, dict):
                raise ManifestRejected(f"{self.where(key)}[{index}]: expected an object, found {show_value(element)}")
            readers.append(_Reader(element, f"{self.where(key)}[{index}]"))
        return readers


def parse_instant(text: str, where: str) -> dt.datetime:
    """RFC 3339 with an offset; a naive time is refused since its meaning would depend on the board."""
    if len(text) > 40:
        raise ManifestRejected(f"{where}: expected an RFC 3339 time with offset, found {show_value(text)}")
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ManifestRejected(f"{where}: expected an RFC 3339 time with offset, found {show_value(text)}") from None
    if parsed.tzinfo is None:
        raise ManifestRejected(f"{where}: expected an RFC 3339 time with offset, found {show_value(text)} (no offset)")
    return parsed


def parse_window(value: Any, where: str) -> TimeWindow:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ManifestRejected(f'{where}: expected ["HH:MM", "HH:MM"], found {show_value(value)}')
    minutes = []
    for part in value:
        match = HHMM_PATTERN.match(part)
        if not match:
            raise ManifestRejected(f"{where}: expected HH:MM (00:00-23:59), found {show_value(part)}")
        minutes.append(int(match.group(1)) * 60 + int(match.group(2)))
    return TimeWindow(minutes[0], minutes[1])


def parse_windows(value: Any, where: str) -> tuple[TimeWindow, ...]:
    if not isinstance(value, list):
        raise ManifestRejected(f"{where}: expected a list of [\"HH:MM\", \"HH:MM\"], found {show_value(value)}")
    if len(value) > MAX_WINDOWS:
        raise ManifestRejected(f"{where}: {len(value)} windows, over the limit of {MAX_WINDOWS}")
    return tuple(parse_window(window, f"{where}[{index}]") for index, window in enumerate(value))


def parse_when(reader: _Reader, key: str = "when") -> When:
    when = reader.obj(key)
    data = when.data
    from_text = when.text("from")
    until_text = when.text("until")
    days = None
    if data.get("days") is not None:
        raw_days = data["days"]
        iso_days = isinstance(raw_days, list) and len(raw_days) <= 7 * 4 and all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7 for d in raw_days)
        if not iso_days:
            raise when.fail("days", "a list of ISO weekdays 1-7", raw_days)
        days = frozenset(raw_days)
    times = parse_windows(data["times"], when.where("times")) if data.get("times") is not None else None
    return When(
        from_=parse_instant(from_text, when.where("from")) if from_text else None,
        until=parse_instant(until_text, when.where("until")) if until_text else None,
        days=days,
        times=times,
    )


def _priority(reader: _Reader) -> Any:
    priority = reader.text("priority", default="normal", max_chars=20)
    if priority not in PRIORITIES:
        raise reader.fail("priority", "normal, high or emergency", priority)
    return priority


def _colour(reader: _Reader, key: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    value = reader.text(key, max_chars=20)
    if value is None:
        return default
    if not COLOUR_PATTERN.match(value):
        raise reader.fail(key, "a colour #RRGGBB", value)
    return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))


def check_media_url(url: str, where: str) -> str:
    """Refuse URLs that could name something outside the source's tree or the storage directory."""
    if len(url) > 2048:
        raise ManifestRejected(f"{where}: {len(url)} characters, over the limit of 2048")
    if any(ord(ch) < 0x20 or ch == "\\" for ch in url):
        raise ManifestRejected(f"{where}: control characters and backslashes are not allowed in a media url")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ManifestRejected(f"{where}: not a url: {show_value(url)}") from None
    if parts.scheme and parts.scheme not in ("http", "https"):
        raise ManifestRejected(f"{where}: expected an http(s) or relative url, found scheme {show_value(parts.scheme)}")
    if not parts.scheme and parts.netloc:
        raise ManifestRejected(f"{where}: network-path urls ('//host/...') are not allowed, found {show_value(url)}")
    if ".." in unquote(parts.path).split("/"):
        raise ManifestRejected(f"{where}: '..' segments are not allowed in a media url, found {show_value(url)}")
    if not parts.path or parts.path.endswith("/"):
        raise ManifestRejected(f"{where}: expected a url naming a file, found {show_value(url)}")
    return url


def parse_manifest(document: Mapping[str, Any], signed_by: str | None = None) -> Manifest:
    """Schema and limit checks (§4, §10) on a decoded manifest object. Unknown fields are ignored."""
    top = _Reader(document, "")
    if document.get("schema") != SCHEMA:
        raise top.fail("schema", repr(SCHEMA), document.get("schema"))
    serial = document.get("serial")
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise top.fail("serial", "an integer >= 1", serial)
    issued_text = top.text("issued_at", required=True)
    assert issued_text is not None
    issued_at = parse_instant(issued_text, "issued_at")
    timezone = top.text("timezone", default=DEFAULT_TIMEZONE, max_chars=64) or DEFAULT_TIMEZONE
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise top.fail("timezone", "an IANA time zone name such as 'Asia/Ho_Chi_Minh'", timezone) from None

    audience = None
    if document.get("audience") is not None:
        raw_audience = document["audience"]
        if not (isinstance(raw_audience, list) and all(isinstance(a, str) and len(a) <= 80 for a in raw_audience)):
            raise top.fail("audience", "a list of device ids and 'group:<name>'", raw_audience)
        audience = tuple(nfc(a) for a in raw_audience)

    media = _parse_media(top)
    media_ids = {m.id: m for m in media}
    items = _parse_items(top, media_ids)
    layout = _parse_layout(top, media_ids)
    ticker = tuple(
        TickerLine(id=line.ident("id"), text=line.text("text", required=True, max_chars=limits.MAX_TICKER_CHARS) or "",
                   priority=_priority(line), when=parse_when(line))
        for line in top.objects("ticker", limits.MAX_TICKER_LINES)
    )
    _require_unique([t.id for t in ticker], "ticker")
    screen = top.obj("screen")
    screen_on = parse_windows(screen.data["on"], screen.where("on")) if screen.data.get("on") is not None else None
    whens = [item.when for item in items] + [line.when for line in ticker]
    windows = sum(len(when.times or ()) for when in whens) + len(screen_on or ())
    if windows > limits.MAX_TOTAL_WINDOWS:
        raise ManifestRejected(f"the manifest has {windows} time windows in all, over the limit of "
                               f"{limits.MAX_TOTAL_WINDOWS} (the schedule is evaluated every second)")
    default_item = top.text("default_item", max_chars=128)
    if default_item is not None and default_item not in {item.id for item in items}:
        raise top.fail("default_item", "the id of an item in items[]", default_item)
    return Manifest(
        serial=serial,
        issued_at=issued_at,
        timezone=timezone,
        layout=layout,
        media=media,
        items=items,
        ticker=ticker,
        screen_on=screen_on,
        default_item=default_item,
        audience=audience,
        signed_by=signed_by,
        release=_parse_release(top),
        settings=_parse_settings(top),
    )


MAX_SETTINGS_KEYS = 64


def _parse_settings(top: _Reader) -> dict[str, Any] | None:
    """The object as sent: which keys the board takes, and in what bounds, is agent/settings.py's
    to say (a wrong value is ignored and reported there, never a reason to refuse the content)."""
    if top.data.get("settings") is None:
        return None
    settings = top.data["settings"]
    if not isinstance(settings, dict):
        raise top.fail("settings", "an object of config keys", settings)
    if len(settings) > MAX_SETTINGS_KEYS:
        raise ManifestRejected(f"settings: {len(settings)} keys, over the limit of {MAX_SETTINGS_KEYS}")
    return dict(settings)


def _parse_release(top: _Reader) -> ReleaseRef | None:
    if top.data.get("release") is None:
        return None
    release = top.obj("release")
    url = release.text("url", required=True) or ""
    sha = release.text("sha256", required=True, max_chars=64) or ""
    if not SHA256_PATTERN.match(sha):
        raise release.fail("sha256", "64 lowercase hex digits", sha)
    size = release.data.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= 1024 * 1024:
        raise release.fail("size", "a byte count from 1 to 1048576", size)
    return ReleaseRef(check_media_url(url, release.where("url")), sha, size)


def _require_unique(ids: list[str], where: str) -> None:
    seen: set[str] = set()
    for index, ident in enumerate(ids):
        if ident in seen:
            raise ManifestRejected(f"{where}[{index}].id: {ident!r} is used twice")
        seen.add(ident)


def _parse_media(top: _Reader) -> tuple[Media, ...]:
    media = []
    for entry in top.objects("media", limits.MAX_MEDIA):
        url = entry.text("url", required=True) or ""
        sha = entry.text("sha256", required=True, max_chars=64) or ""
        if not SHA256_PATTERN.match(sha):
            raise entry.fail("sha256", "64 lowercase hex digits", sha)
        size = entry.data.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise entry.fail("size", "a byte count (integer >= 0)", size)
        mime = entry.text("type", required=True, max_chars=120) or ""
        if not MIME_PATTERN.match(mime):
            raise entry.fail("type", "a MIME type such as image/png", mime)
        media.append(Media(entry.ident("id"), check_media_url(url, entry.where("url")), sha, size, mime))
    _require_unique([m.id for m in media], "media")
    return tuple(media)


def _parse_items(top: _Reader, media_ids: Mapping[str, Media]) -> tuple[Item, ...]:
    items = []
    for entry in top.objects("items", limits.MAX_ITEMS):
        kind = entry.text("type", required=True, max_chars=20)
        if kind not in ("image", "video", "text"):
            raise entry.fail("type", "image, video or text", kind)
        media_id = None
        if kind in ITEM_MEDIA_KIND:
            media_id = entry.text("media", required=True, max_chars=128) or ""
            if media_id not in media_ids:
                raise entry.fail("media", "the id of an entry in media[]", media_id)
            media_type = media_ids[media_id].type
            if not media_type.startswith(ITEM_MEDIA_KIND[kind]):
                raise entry.fail("media", f"{kind} media", f"{media_id!r} of type {media_type}")
        duration = entry.number("duration_s", low=0, high=limits.MAX_DURATION_S, low_open=True)
        if duration is None and kind != "video":
            raise ManifestRejected(f"{entry.where('duration_s')}: expected a number > 0 (required for {kind} items), "
                                   "found nothing")
        title = entry.text("title", default="", max_chars=limits.MAX_TITLE_CHARS) or ""
        body = entry.text("body", default="", max_chars=limits.MAX_BODY_CHARS) or ""
        if kind == "text" and not (title or body):
            raise entry.fail("body", "a title or body for a text item", "neither")
        items.append(
            Item(
                id=entry.ident("id"),
                type=kind,  # type: ignore[arg-type]
                duration_s=duration,
                priority=_priority(entry),
                when=parse_when(entry),
                media=media_id,
                title=title,
                body=body,
            )
        )
    _require_unique([i.id for i in items], "items")
    return tuple(items)


def _parse_layout(top: _Reader, media_ids: Mapping[str, Media]) -> Layout:
    layout = top.obj("layout")
    header = layout.obj("header")
    ticker = layout.obj("ticker")
    theme = layout.obj("theme")
    logo = header.text("logo", max_chars=128)
    if logo is not None and (logo not in media_ids or not media_ids[logo].type.startswith("image/")):
        raise header.fail("logo", "the id of an image in media[]", logo)
    clock = header.data.get("clock", True)
    if not isinstance(clock, bool):
        raise header.fail("clock", "true or false", clock)
    speed = ticker.number("speed_px_s", low=limits.TICKER_SPEED_RANGE[0], high=limits.TICKER_SPEED_RANGE[1])
    rotation = layout.data.get("rotation", 0)
    if rotation not in (0, 90, 180, 270) or isinstance(rotation, bool):
        raise layout.fail("rotation", "0, 90, 180 or 270", rotation)
    defaults = Theme()
    return Layout(
        title=header.text("title", default="", max_chars=limits.MAX_TITLE_CHARS) or "",
        logo=logo,
        clock=clock,
        ticker_speed_px_s=speed if speed is not None else 120.0,
        theme=Theme(
            background=_colour(theme, "background", defaults.background),
            foreground=_colour(theme, "foreground", defaults.foreground),
            accent=_colour(theme, "accent", defaults.accent),
        ),
        rotation=int(rotation),
    )

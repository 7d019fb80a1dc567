"""Manifest acceptance: bytes from a source → a verified, frozen Manifest (PROTOCOL.md §3–§4).

The only way content reaches the screen. Everything here is pure except nothing: callers pass the
trusted keys, the board's identity and the last accepted serial; persisting the serial is the
caller's job (see agent/content.py).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import unicodedata
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.models import (
    PRIORITIES,
    Item,
    Layout,
    Manifest,
    Media,
    Theme,
    TickerLine,
    TimeWindow,
    When,
)

MANIFEST_PAYLOAD_TYPE = "application/vnd.bangtin.manifest+json"
COMMAND_PAYLOAD_TYPE = "application/vnd.bangtin.command+json"
SCHEMA = "bangtin.manifest/1"
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"

# Ids end up in logs, records and (for media) never in paths, but a strict shape keeps them
# printable and stops a hostile manifest from smuggling separators or control characters.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
COLOUR_PATTERN = re.compile(r"^#[0-9A-Fa-f]{6}$")
HHMM_PATTERN = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
MEDIA_TYPES = {"image/png", "image/jpeg", "video/mp4"}
ITEM_MEDIA_KIND = {"image": "image/", "video": "video/"}


class ManifestError(ValueError):
    """A manifest or envelope was refused; str() is the reason shown in status `errors`."""


@dataclass(frozen=True)
class TrustedKey:
    keyid: str
    key: Ed25519PublicKey


def load_trusted_keys(encoded_keys: Sequence[str]) -> tuple[TrustedKey, ...]:
    """Decode standard-base64 raw 32-byte Ed25519 public keys; ValueError names the bad one."""
    keys = []
    for index, encoded in enumerate(encoded_keys):
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"key #{index + 1} is not standard base64: {exc}") from None
        if len(raw) != 32:
            raise ValueError(f"key #{index + 1} decodes to {len(raw)} bytes, expected 32")
        keys.append(TrustedKey(keyid_of(raw), Ed25519PublicKey.from_public_bytes(raw)))
    return tuple(keys)


def keyid_of(raw_public_key: bytes) -> str:
    """First 16 hex digits of SHA-256 of the raw public key (§3)."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: "DSSEv1 len(t) t len(b) b"."""
    encoded_type = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(encoded_type), encoded_type, len(payload), payload)


def open_envelope(
    raw: bytes,
    payload_type: str,
    keys: Sequence[TrustedKey],
) -> tuple[dict[str, Any], str | None]:
    """Parse a DSSE envelope (or, with no keys, a bare JSON object) and verify it.

    Returns the decoded JSON payload and the keyid that verified it (None when bare).
    """
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"expected a JSON object, found {type(document).__name__}")
    if "payloadType" not in document and "signatures" not in document:
        if keys:
            raise ManifestError("unsigned document refused: trusted keys are configured, so a DSSE envelope is required")
        return document, None
    return _verify_envelope(document, payload_type, keys)


def _decode_envelope(document: dict[str, Any], payload_type: str) -> tuple[bytes, list[dict[str, Any]]]:
    found_type = document.get("payloadType")
    if found_type != payload_type:
        raise ManifestError(f"envelope payloadType: expected {payload_type!r}, found {found_type!r}")
    payload_b64 = document.get("payload")
    if not isinstance(payload_b64, str):
        raise ManifestError("envelope payload: expected a base64 string")
    try:
        payload = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError(f"envelope payload: not standard base64 ({exc})") from None
    signatures = document.get("signatures")
    if not isinstance(signatures, list) or not all(isinstance(s, dict) for s in signatures):
        raise ManifestError("envelope signatures: expected a list of objects")
    return payload, signatures


def _find_signer(
    payload_type: str, payload: bytes, signatures: list[dict[str, Any]], keys: Sequence[TrustedKey]
) -> str | None:
    message = pae(payload_type, payload)
    for signature in signatures:
        try:
            sig = base64.b64decode(str(signature.get("sig", "")), validate=True)
        except (binascii.Error, ValueError):
            continue
        # keyid is only a hint (§3): every trusted key is tried, so a wrong hint costs nothing.
        for trusted in keys:
            try:
                trusted.key.verify(sig, message)
            except InvalidSignature:
                continue
            return trusted.keyid
    return None


def _verify_envelope(
    document: dict[str, Any], payload_type: str, keys: Sequence[TrustedKey]
) -> tuple[dict[str, Any], str | None]:
    payload, signatures = _decode_envelope(document, payload_type)
    signer = _find_signer(payload_type, payload, signatures, keys) if keys else None
    if keys and signer is None:
        raise ManifestError("signature not valid for any trusted key")
    try:
        decoded = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"envelope payload is not UTF-8 JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise ManifestError(f"envelope payload: expected a JSON object, found {type(decoded).__name__}")
    return decoded, signer


def accept_manifest(
    raw: bytes,
    *,
    keys: Sequence[TrustedKey],
    device_id: str,
    groups: Sequence[str],
    last_serial: int | None,
) -> Manifest:
    """Verify and parse manifest bytes. Raises ManifestError with a precise reason.

    A serial equal to `last_serial` is accepted here (the caller treats it as "no change");
    a lower one is refused (rollback protection).
    """
    document, signer = open_envelope(raw, MANIFEST_PAYLOAD_TYPE, keys)
    manifest = parse_manifest(document, signed_by=signer)
    if manifest.audience is not None:
        accepted_names = {device_id, *(f"group:{group}" for group in groups)}
        if not accepted_names.intersection(manifest.audience):
            raise ManifestError(
                f"audience {list(manifest.audience)} names neither this board ({device_id!r}) nor its groups"
            )
    if last_serial is not None and manifest.serial < last_serial:
        raise ManifestError(f"serial {manifest.serial} is lower than the accepted {last_serial} (rollback refused)")
    return manifest


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

    def fail(self, key: str, expected: str, found: Any) -> ManifestError:
        return ManifestError(f"{self.where(key)}: expected {expected}, found {_show(found)}")

    def text(self, key: str, *, default: str | None = None, required: bool = False) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            if required:
                raise self.fail(key, "a string", "nothing")
            return None
        if not isinstance(value, str):
            raise self.fail(key, "a string", value)
        return nfc(value)

    def ident(self, key: str) -> str:
        value = self.text(key, required=True)
        assert value is not None
        if not ID_PATTERN.match(value):
            raise self.fail(key, "an id of letters, digits, '.', '_', ':' or '-' (1-128)", value)
        return value

    def number(self, key: str, *, positive: bool) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and not value > 0):
            raise self.fail(key, "a number > 0" if positive else "a number", value)
        return float(value)

    def obj(self, key: str) -> _Reader:
        value = self.data.get(key)
        if value is None:
            return _Reader({}, self.where(key))
        if not isinstance(value, dict):
            raise self.fail(key, "an object", value)
        return _Reader(value, self.where(key))

    def objects(self, key: str) -> list[_Reader]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, "a list", value)
        readers = []
        for index, element in enumerate(value):
            if not isinstance(element, dict):
                raise ManifestError(f"{self.where(key)}[{index}]: expected an object, found {_show(element)}")
            readers.append(_Reader(element, f"{self.where(key)}[{index}]"))
        return readers


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_instant(text: str, where: str) -> dt.datetime:
    """RFC 3339 with an offset; a naive time is refused since its meaning would depend on the board."""
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ManifestError(f"{where}: expected an RFC 3339 time with offset, found {text!r}") from None
    if parsed.tzinfo is None:
        raise ManifestError(f"{where}: expected an RFC 3339 time with offset, found {text!r} (no offset)")
    return parsed


def parse_window(value: Any, where: str) -> TimeWindow:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ManifestError(f'{where}: expected ["HH:MM", "HH:MM"], found {_show(value)}')
    minutes = []
    for part in value:
        match = HHMM_PATTERN.match(part)
        if not match:
            raise ManifestError(f"{where}: expected HH:MM (00:00-23:59), found {part!r}")
        minutes.append(int(match.group(1)) * 60 + int(match.group(2)))
    return TimeWindow(minutes[0], minutes[1])


def parse_windows(value: Any, where: str) -> tuple[TimeWindow, ...]:
    if not isinstance(value, list):
        raise ManifestError(f"{where}: expected a list of [\"HH:MM\", \"HH:MM\"], found {_show(value)}")
    return tuple(parse_window(window, f"{where}[{index}]") for index, window in enumerate(value))


def parse_when(reader: _Reader, key: str = "when") -> When:
    when = reader.obj(key)
    data = when.data
    from_text = when.text("from")
    until_text = when.text("until")
    days = None
    if data.get("days") is not None:
        raw_days = data["days"]
        iso_days = isinstance(raw_days, list) and all(
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
    priority = reader.text("priority", default="normal")
    if priority not in PRIORITIES:
        raise reader.fail("priority", "normal, high or emergency", priority)
    return priority


def _colour(reader: _Reader, key: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    value = reader.text(key)
    if value is None:
        return default
    if not COLOUR_PATTERN.match(value):
        raise reader.fail(key, "a colour #RRGGBB", value)
    return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))


def check_media_url(url: str, where: str) -> str:
    """Refuse URLs that could name something outside the source's tree or the storage directory."""
    if any(ord(ch) < 0x20 or ch == "\\" for ch in url):
        raise ManifestError(f"{where}: control characters and backslashes are not allowed in a media url")
    parts = urlsplit(url)
    if parts.scheme and parts.scheme not in ("http", "https"):
        raise ManifestError(f"{where}: expected an http(s) or relative url, found scheme {parts.scheme!r}")
    if not parts.scheme and parts.netloc:
        raise ManifestError(f"{where}: network-path urls ('//host/...') are not allowed, found {url!r}")
    if ".." in unquote(parts.path).split("/"):
        raise ManifestError(f"{where}: '..' segments are not allowed in a media url, found {url!r}")
    if not parts.path or parts.path.endswith("/"):
        raise ManifestError(f"{where}: expected a url naming a file, found {url!r}")
    return url


def parse_manifest(document: Mapping[str, Any], signed_by: str | None = None) -> Manifest:
    """Schema checks (§4) on a decoded manifest object. Unknown fields are ignored."""
    top = _Reader(document, "")
    if document.get("schema") != SCHEMA:
        raise top.fail("schema", repr(SCHEMA), document.get("schema"))
    serial = document.get("serial")
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise top.fail("serial", "an integer >= 1", serial)
    issued_text = top.text("issued_at", required=True)
    assert issued_text is not None
    issued_at = parse_instant(issued_text, "issued_at")
    timezone = top.text("timezone", default=DEFAULT_TIMEZONE) or DEFAULT_TIMEZONE
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise top.fail("timezone", "an IANA time zone name such as 'Asia/Ho_Chi_Minh'", timezone) from None

    audience = None
    if document.get("audience") is not None:
        raw_audience = document["audience"]
        if not (isinstance(raw_audience, list) and all(isinstance(a, str) for a in raw_audience)):
            raise top.fail("audience", "a list of device ids and 'group:<name>'", raw_audience)
        audience = tuple(nfc(a) for a in raw_audience)

    media = _parse_media(top)
    media_ids = {m.id: m for m in media}
    items = _parse_items(top, media_ids)
    layout = _parse_layout(top, media_ids)
    ticker = tuple(
        TickerLine(id=line.ident("id"), text=line.text("text", required=True) or "", priority=_priority(line),
                   when=parse_when(line))
        for line in top.objects("ticker")
    )
    _require_unique([t.id for t in ticker], "ticker")
    screen = top.obj("screen")
    screen_on = parse_windows(screen.data["on"], screen.where("on")) if screen.data.get("on") is not None else None
    default_item = top.text("default_item")
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
    )


def _require_unique(ids: list[str], where: str) -> None:
    seen: set[str] = set()
    for index, ident in enumerate(ids):
        if ident in seen:
            raise ManifestError(f"{where}[{index}].id: {ident!r} is used twice")
        seen.add(ident)


def _parse_media(top: _Reader) -> tuple[Media, ...]:
    media = []
    for entry in top.objects("media"):
        url = entry.text("url", required=True) or ""
        sha = entry.text("sha256", required=True) or ""
        if not SHA256_PATTERN.match(sha):
            raise entry.fail("sha256", "64 lowercase hex digits", sha)
        size = entry.data.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise entry.fail("size", "a byte count (integer >= 0)", size)
        mime = entry.text("type", required=True) or ""
        if not re.match(r"^[a-z]+/[a-z0-9.+-]+$", mime):
            raise entry.fail("type", "a MIME type such as image/png", mime)
        media.append(Media(entry.ident("id"), check_media_url(url, entry.where("url")), sha, size, mime))
    _require_unique([m.id for m in media], "media")
    return tuple(media)


def _parse_items(top: _Reader, media_ids: Mapping[str, Media]) -> tuple[Item, ...]:
    items = []
    for entry in top.objects("items"):
        kind = entry.text("type", required=True)
        if kind not in ("image", "video", "text"):
            raise entry.fail("type", "image, video or text", kind)
        media_id = None
        if kind in ITEM_MEDIA_KIND:
            media_id = entry.text("media", required=True) or ""
            if media_id not in media_ids:
                raise entry.fail("media", "the id of an entry in media[]", media_id)
            media_type = media_ids[media_id].type
            if not media_type.startswith(ITEM_MEDIA_KIND[kind]):
                raise entry.fail("media", f"{kind} media", f"{media_id!r} of type {media_type}")
        duration = entry.number("duration_s", positive=True)
        if duration is None and kind != "video":
            raise entry.fail("duration_s", f"a number > 0 (required for {kind} items)", None)
        title = entry.text("title", default="") or ""
        body = entry.text("body", default="") or ""
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
    logo = header.text("logo")
    if logo is not None and (logo not in media_ids or not media_ids[logo].type.startswith("image/")):
        raise header.fail("logo", "the id of an image in media[]", logo)
    clock = header.data.get("clock", True)
    if not isinstance(clock, bool):
        raise header.fail("clock", "true or false", clock)
    speed = ticker.number("speed_px_s", positive=True)
    rotation = layout.data.get("rotation", 0)
    if rotation not in (0, 90, 180, 270) or isinstance(rotation, bool):
        raise layout.fail("rotation", "0, 90, 180 or 270", rotation)
    defaults = Theme()
    return Layout(
        title=header.text("title", default="") or "",
        logo=logo,
        clock=clock,
        ticker_speed_px_s=speed if speed is not None else 120.0,
        theme=Theme(
            background=_colour(theme, "background", defaults.background),
            foreground=_colour(theme, "foreground", defaults.foreground),
            accent=_colour(theme, "accent", defaults.accent),
        ),
        rotation=rotation,
    )


def sign_envelope(payload: bytes, payload_type: str, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope signed with one key (the demo, tests and provincial tools use this)."""
    raw_public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = private_key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": keyid_of(raw_public), "sig": base64.b64encode(signature).decode("ascii")}],
    }

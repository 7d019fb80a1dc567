"""Agent releases (PROTOCOL.md §11): the signed release document, and which of its wheels a board takes.

A release lists every distribution it needs for every platform the province runs; a board installs,
per distribution, the one wheel its own interpreter and platform take best — the tag order of
`packaging.tags.sys_tags()`, the logic pip itself uses. A distribution with no wheel for this board
makes the release unusable here, said before anything is downloaded.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packaging.tags import Tag, sys_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from agent.envelope import RELEASE_PAYLOAD_TYPE, TrustedKey, open_envelope
from agent.limits import show_value
from agent.manifest import SHA256_PATTERN, check_audience, check_media_url, parse_instant
from agent.models import InputRejected, ManifestRejected

SCHEMA = "bangtin.release/1"
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_WHEELS = 500
MAX_WHEEL_BYTES = 256 * 1024 * 1024
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z.+!_-]{1,64}$")


class ReleaseRejected(InputRejected):
    """A release document, or its fit for this board, was refused; str() says why."""


@dataclass(frozen=True)
class Wheel:
    filename: str
    url: str
    sha256: str
    size: int
    project: str  # canonical distribution name
    tags: frozenset[Tag]


@dataclass(frozen=True)
class Release:
    serial: int
    version: str
    issued_at: dt.datetime | None
    wheels: tuple[Wheel, ...]
    signed_by: str | None


def accept_release(raw: bytes, *, keys: Sequence[TrustedKey], device_id: str, groups: Sequence[str]) -> Release:
    """Verify and parse a release document (signature by a release key, audience, schema, limits)."""
    if not keys:
        raise ReleaseRejected("no security.release_keys: updates are off")
    try:
        opened = open_envelope(raw, RELEASE_PAYLOAD_TYPE, keys, max_bytes=MAX_DOCUMENT_BYTES)
    except InputRejected as exc:
        raise ReleaseRejected(f"release document: {exc}") from None
    document = opened.document
    if document.get("schema") != SCHEMA:
        raise ReleaseRejected(f"release schema: expected {SCHEMA!r}, found {show_value(document.get('schema'))}")
    serial = document.get("serial")
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise ReleaseRejected(f"release serial: expected an integer >= 1, found {show_value(serial)}")
    version = document.get("version")
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise ReleaseRejected(f"release version: expected a version string, found {show_value(version)}")
    audience = document.get("audience")
    if not (isinstance(audience, list) and all(isinstance(a, str) for a in audience)):
        raise ReleaseRejected(f"release audience: expected a list of ids, found {show_value(audience)}")
    try:
        check_audience(audience, device_id, groups, required=True, what="release")
        issued = document.get("issued_at")
        issued_at = parse_instant(issued, "release issued_at") if isinstance(issued, str) else None
    except ManifestRejected as exc:
        raise ReleaseRejected(str(exc)) from None
    return Release(serial, version, issued_at, _wheels(document.get("wheels")), opened.signed_by)


def _wheels(value: object) -> tuple[Wheel, ...]:
    if not isinstance(value, list) or not value:
        raise ReleaseRejected("release wheels: expected a list of wheels")
    if len(value) > MAX_WHEELS:
        raise ReleaseRejected(f"release wheels: {len(value)} entries, over the limit of {MAX_WHEELS}")
    wheels = []
    for index, entry in enumerate(value):
        where = f"release wheels[{index}]"
        if not isinstance(entry, dict):
            raise ReleaseRejected(f"{where}: expected an object, found {show_value(entry)}")
        name, url, sha, size = entry.get("name"), entry.get("url"), entry.get("sha256"), entry.get("size")
        if not isinstance(name, str) or "/" in name or len(name) > 200:
            raise ReleaseRejected(f"{where}.name: expected a wheel file name, found {show_value(name)}")
        try:
            project, _, _, tags = parse_wheel_filename(name)
        except InvalidWheelFilename:
            raise ReleaseRejected(f"{where}.name: not a wheel file name: {show_value(name)}") from None
        if not isinstance(sha, str) or not SHA256_PATTERN.match(sha):
            raise ReleaseRejected(f"{where}.sha256: expected 64 lowercase hex digits, found {show_value(sha)}")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_WHEEL_BYTES:
            raise ReleaseRejected(f"{where}.size: expected a byte count up to {MAX_WHEEL_BYTES}, found {show_value(size)}")
        if not isinstance(url, str):
            raise ReleaseRejected(f"{where}.url: expected a url, found {show_value(url)}")
        try:
            check_media_url(url, f"{where}.url")
        except ManifestRejected as exc:
            raise ReleaseRejected(str(exc)) from None
        wheels.append(Wheel(name, url, sha, size, canonicalize_name(project), frozenset(tags)))
    return tuple(wheels)


def compatible_wheels(release: Release, tags: Iterable[Tag] | None = None) -> list[Wheel]:
    """For each distribution of the release, the wheel this interpreter takes best (pip's tag order).

    Raises ReleaseRejected naming every distribution with no wheel for this board.
    """
    tag_list = list(tags) if tags is not None else list(sys_tags())
    priority: dict[Tag, int] = {}
    for rank, tag in enumerate(tag_list):
        priority.setdefault(tag, rank)
    best: dict[str, tuple[int, Wheel]] = {}
    projects = sorted({wheel.project for wheel in release.wheels})
    for wheel in release.wheels:
        ranks = [priority[tag] for tag in wheel.tags if tag in priority]
        if not ranks:
            continue
        rank = min(ranks)
        if wheel.project not in best or rank < best[wheel.project][0]:
            best[wheel.project] = (rank, wheel)
    missing = [project for project in projects if project not in best]
    if missing:
        first = tag_list[0] if tag_list else "no tags"
        raise ReleaseRejected(f"release {release.version} has no wheel for this board ({first}) of: "
                              f"{', '.join(missing)[:150]}")
    return [best[project][1] for project in projects]

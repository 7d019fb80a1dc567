"""The checks on single config values (AGENT.md), each returning what was expected when a value is
wrong, in the technician's language; and the checks on what the config points at on disk (the
token file, storage.dir). The schema that uses them is agent/config.py.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from agent.i18n import _
from agent.limits import show_value

Check = Callable[[Any], str | None]  # returns what was expected when the value is wrong


def at_least(minimum: float) -> Check:
    return lambda value: None if value >= minimum else _("a number >= {minimum}").format(minimum=f"{minimum:g}")


def in_range(low: int, high: int) -> Check:
    return lambda value: None if low <= value <= high else _("a number from {low} to {high}").format(low=low, high=high)


def device_id(value: str) -> str | None:
    return None if re.fullmatch(r"[a-z0-9._-]{1,64}", value) else _("1-64 characters of a-z, 0-9, '.', '_', '-'")


def groups(value: tuple[str, ...]) -> str | None:
    bad = [g for g in value if not re.fullmatch(r"[a-z0-9._-]{1,64}", g)]
    return _("group names of a-z, 0-9, '.', '_', '-' (bad: {name})").format(name=repr(bad[0])) if bad else None


def source_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme == "file" and parts.path:
        return None
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    return _("an https://, http:// or file:/// URL")


def mqtt_urls(value: str | tuple[str, ...] | None) -> str | None:
    urls = (value,) if isinstance(value, str) else (value or ())
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            return _("mqtt:// or mqtts:// URL (or a list of them)")
    return None


TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII, no spaces: what an HTTP header can carry


def token_text(value: str) -> str | None:
    return None if TOKEN_PATTERN.fullmatch(value) else _("printable characters without spaces or line breaks")


def read_token_file(path: str) -> str:
    """The token in a token file (whitespace around it stripped); ValueError says what is wrong, never the token."""
    mode = os.stat(path).st_mode
    if mode & 0o137:  # group may read at most (0640); nobody else at all
        raise ValueError(_("mode {mode} lets other users read or change it (expected 0600 or 0640)").format(
            mode=f"{stat.S_IMODE(mode):04o}"))
    with open(path, "rb") as handle:
        raw = handle.read(8193)
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(_("it is not UTF-8 text")) from None
    if len(raw) > 8192 or (token and token_text(token)):
        raise ValueError(_("it holds more than one printable word (a token has no spaces or line breaks inside)"))
    return token


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(value: str) -> str | None:
    return None if value in LOG_LEVELS else _("one of {levels}").format(levels=", ".join(LOG_LEVELS))


CLOCK_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


MAX_DOWNLOAD_WINDOWS = 24  # more would be a typo; a SIM's cheap hours are one or two stretches


def windows(value: tuple[tuple[str, str], ...]) -> str | None:
    if len(value) > MAX_DOWNLOAD_WINDOWS:
        return _("at most {count} windows").format(count=MAX_DOWNLOAD_WINDOWS)
    for index, window in enumerate(value):
        if len(window) != 2 or not all(CLOCK_TIME.fullmatch(end) for end in window):
            return _('["HH:MM", "HH:MM"] windows of local time, 00:00-23:59; an end before its start wraps past '
                     'midnight (window {index} is {window})').format(index=index + 1, window=show_value(list(window)))
        if window[0] == window[1]:
            return _("windows whose start and end differ (window {index} is {window}; for any time of day "
                     "leave the list empty)").format(index=index + 1, window=show_value(list(window)))
    return None


def keys(value: tuple[str, ...]) -> str | None:
    for key in value:
        try:
            if len(base64.b64decode(key, validate=True)) == 32:
                continue
        except (binascii.Error, ValueError):
            pass
        return _("standard base64 of raw 32-byte Ed25519 public keys")
    return None


def storage_dir_problem(directory: str) -> str | None:
    """A storage.dir others could write to would let them plant media or links: refused."""
    try:
        found = os.lstat(directory)
    except FileNotFoundError:
        return None  # created with mode 0750 at start
    except OSError as exc:
        return _("cannot inspect {path} ({reason})").format(path=directory, reason=exc.strerror)
    if stat.S_ISLNK(found.st_mode):
        target = os.path.realpath(directory)
        found = os.stat(target)
    if not stat.S_ISDIR(found.st_mode):
        return _("expected a directory, found {path} (not a directory)").format(path=repr(directory))
    if found.st_mode & 0o022:
        return _("expected a directory only its owner can write to, found {path} with mode {mode} "
                 "(chmod go-w {directory})").format(path=repr(directory), mode=f"{stat.S_IMODE(found.st_mode):04o}",
                                                    directory=directory)
    return None

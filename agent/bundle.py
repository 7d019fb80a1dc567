"""Provisioning bundles (PROTOCOL.md §12): what one is, when it is refused, how it is applied.

A bundle is a DSSE envelope signed by a key in `security.provision_keys` whose payload sets part of
the board's config (and its token). Applying one writes a drop-in `agent.d/50-provision.yaml` beside
the config file (the technician's own `agent.yaml` and its comments are never rewritten), the token
to `agent.d/provision.token` (0600) and the serial to `agent.d/provision.json`. Where bundles are
found, and which of several is taken, is agent/provision.py's business.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.config import Config, ConfigError, key_annotation, load_config, load_config_with
from agent.configfiles import BUNDLE_DROPIN, dropin_dir
from agent.envelope import PROVISION_PAYLOAD_TYPE, TrustedKey, keyid_of, open_envelope
from agent.files import atomic_write
from agent.limits import clip, show_value
from agent.models import InputRejected

log = logging.getLogger(__name__)

BUNDLE_SCHEMA = "bangtin.provision/1"
MAX_BUNDLE_BYTES = 64 * 1024
DROPIN_NAME = BUNDLE_DROPIN
TOKEN_NAME = "provision.token"
STATE_NAME = "provision.json"

# What a bundle may not set, and why (it would strand what the board keeps, or lock out the technician).
NOT_FROM_BUNDLES = {
    "storage": "a bundle may not move storage.dir: the records, cache and identity there would be stranded",
    "control": "a bundle may not move the control socket: the technician's door would change under them",
}

# Said on screen (Vietnamese, for the commune office), by kind of refusal.
REFUSAL_WORDS = {
    "no-keys": "Bảng tin chưa có khóa của tỉnh: không nhận gói thiết lập nào",
    "unsigned": "Gói thiết lập bị từ chối: không có chữ ký",
    "signature": "Gói thiết lập bị từ chối: chữ ký không phải của tỉnh",
    "unreadable": "Gói thiết lập bị từ chối: tệp hỏng hoặc sai định dạng",
    "other-board": "Gói thiết lập bị từ chối: gói dành cho bảng tin khác",
    "unbound": "Gói thiết lập bị từ chối: bảng tin đã thiết lập chỉ nhận gói mang khóa của chính nó",
    "ambiguous": "Gói thiết lập bị từ chối: nhiều gói dùng chung cho mọi bảng tin",
    "serial": "Gói thiết lập bị từ chối: cũ hơn gói đã áp dụng",
    "config": "Gói thiết lập bị từ chối: cấu hình trong gói không hợp lệ",
    "state": "Không đọc được trạng thái thiết lập: không nhận gói nào",
    "not-written": "Gói thiết lập hợp lệ nhưng không ghi được cấu hình",
}


class BundleRefused(InputRejected):
    """Why a bundle changes nothing: `kind` picks the words on screen, str() is for `errors`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(clip(message, 400))  # file names come from a stranger's stick: no forged log lines
        self.kind = kind

    @property
    def on_screen(self) -> str:
        return REFUSAL_WORDS.get(self.kind, REFUSAL_WORDS["unreadable"])


@dataclass(frozen=True)
class Bundle:
    serial: int
    board_key: str | None
    config: Mapping[str, Any]
    sha256: str
    signed_by: str
    path: Path


@dataclass(frozen=True)
class Applied:
    """What `agent.d/provision.json` remembers: the serial that a lower one can never undo."""

    serial: int = 0
    sha256: str = ""
    signed_by: str = ""
    applied_at: str = ""
    source: str = ""


def read_applied(config_path: Path) -> Applied:
    """The bundle applied last; BundleRefused("state") when the record exists but cannot be read:
    taking it as "nothing applied" would let an older signed bundle undo a newer one."""
    path = dropin_dir(config_path) / STATE_NAME
    try:
        document = json.loads(path.read_text())
        return Applied(**{f.name: document[f.name] for f in dataclasses.fields(Applied) if f.name in document})
    except (FileNotFoundError, NotADirectoryError):
        return Applied()  # nothing was ever applied here
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise BundleRefused("state", f"{path} cannot be read ({clip(exc, 80)}): no bundle is taken until it is "
                                     "repaired or removed") from None


def shown_path(path: Path) -> str:
    return clip(str(path), 160)


def read_candidate(path: Path) -> bytes:
    """A bundle file's bytes: a regular file, not a link, at most MAX_BUNDLE_BYTES. A FIFO or a
    device on a stranger's stick must not block or flood the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "a link, not a file" if exc.errno == 40 else exc.strerror or str(exc)  # ELOOP: O_NOFOLLOW on a link
        raise BundleRefused("unreadable", f"{shown_path(path)}: cannot open ({why})") from None
    with os.fdopen(fd, "rb") as handle:
        found = os.fstat(handle.fileno())
        if not stat.S_ISREG(found.st_mode):
            raise BundleRefused("unreadable", f"{shown_path(path)}: not a regular file")
        if found.st_size > MAX_BUNDLE_BYTES:
            raise BundleRefused("unreadable", f"{shown_path(path)}: {found.st_size} bytes, over the limit of "
                                              f"{MAX_BUNDLE_BYTES}")
        return handle.read(MAX_BUNDLE_BYTES + 1)


def fingerprint_of(key_b64: str) -> str:
    try:
        return keyid_of(base64.b64decode(key_b64, validate=True))
    except (binascii.Error, ValueError):
        return "not a key"


def open_bundle(raw: bytes, path: Path, keys: Sequence[TrustedKey], own_key_b64: str | None, applied: Applied,
                *, enrolled: bool) -> Bundle | None:
    """The bundle if it should be applied, None if it is the one applied already; else BundleRefused."""
    where = shown_path(path)
    if not keys:
        raise BundleRefused("no-keys", f"{where}: security.provision_keys is empty, so no bundle is taken "
                                       "(install.sh --province-key KEY)")
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if isinstance(document, dict) and "payloadType" not in document and "signatures" not in document:
        raise BundleRefused("unsigned", f"{where}: not a signed envelope (a bundle must be signed by the province)")
    try:
        opened = open_envelope(raw, PROVISION_PAYLOAD_TYPE, keys, max_bytes=MAX_BUNDLE_BYTES)
    except InputRejected as exc:
        kind = "signature" if "signature" in str(exc) else "unreadable"
        raise BundleRefused(kind, f"{where}: {exc}") from None
    payload = opened.document
    if payload.get("schema") != BUNDLE_SCHEMA:
        raise BundleRefused("unreadable", f"{where}: schema: expected {BUNDLE_SCHEMA!r}, "
                                          f"found {show_value(payload.get('schema'))}")
    serial = payload.get("serial")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 1:
        raise BundleRefused("unreadable", f"{where}: serial: expected an integer >= 1, found {show_value(serial)}")
    board_key = payload.get("board_key")
    mine = fingerprint_of(own_key_b64) if own_key_b64 else "none (no usable identity key)"
    if board_key is not None and not _same_key(board_key, own_key_b64):
        theirs = fingerprint_of(board_key) if isinstance(board_key, str) else show_value(board_key)
        raise BundleRefused("other-board", f"{where}: bound to the board with key {theirs}; this board's key is "
                                           f"{mine}")
    config = payload.get("config")
    if not isinstance(config, dict):
        raise BundleRefused("unreadable", f"{where}: config: expected a mapping of config sections")
    for section, why in NOT_FROM_BUNDLES.items():
        if section in config:
            raise BundleRefused("config", f"{where}: config.{section}: {why}")
    security = config.get("security")
    if isinstance(security, dict) and "provision_keys" in security:
        # The keys that judge bundles are the installer's (agent.d/10-province.yaml, root's): a
        # bundle that set them would outrank it (50- sorts after 10-), so a leaked bundle key
        # could lock the province out, and re-running install.sh --province-key would do nothing.
        raise BundleRefused("config", f"{where}: config.security.provision_keys: a bundle may not change the keys "
                                      "that judge bundles (install.sh --province-key sets them)")
    relative = _relative_paths(config)
    if relative:
        raise BundleRefused("config", f"{where}: config.{relative[0]}: a bundle's file paths must be absolute "
                                      "(a relative one would name a file on the stick)")
    sha256 = hashlib.sha256(raw).hexdigest()
    if serial == applied.serial and sha256 == applied.sha256:
        return None
    if board_key is None and enrolled:
        raise BundleRefused("unbound", f"{where}: a bundle for any board (no board_key); this board is enrolled and "
                                       f"takes only bundles bound to its key {mine} (refsource provision --board-key)")
    if serial <= applied.serial:
        raise BundleRefused("serial", f"{where}: serial {serial} is not above the applied serial {applied.serial}")
    return Bundle(serial, board_key, config, sha256, opened.signed_by or "", path)


def _relative_paths(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in config.items():
        key_path = f"{prefix}{key}"
        if isinstance(value, dict):
            found.extend(_relative_paths(value, key_path + "."))
            continue
        try:
            _, fld = key_annotation(key_path)
        except KeyError:
            continue  # an unknown key: the config check names it
        if fld.metadata.get("path") and isinstance(value, str) and value and not os.path.isabs(value):
            found.append(key_path)
    return found


def _same_key(board_key: object, own_key_b64: str | None) -> bool:
    if not isinstance(board_key, str) or own_key_b64 is None:
        return False
    try:
        return base64.b64decode(board_key, validate=True) == base64.b64decode(own_key_b64)
    except (binascii.Error, ValueError):
        return False


def _bundle_token(config: Mapping[str, Any]) -> str | None:
    source = config.get("source")
    token = source.get("token") if isinstance(source, dict) else None
    return token if isinstance(token, str) else None


def _overlay(config: Mapping[str, Any], token_file: Path | None) -> dict[str, Any]:
    """The drop-in's content: the bundle's config with the token in `token_file` (the bundle's own,
    or the one an earlier bundle left: a bundle that rotates keys need not carry the token again)."""
    overlay = json.loads(json.dumps(config))  # a deep copy of plain JSON values
    if token_file is not None:
        source = overlay.setdefault("source", {})
        source["token"] = None  # the main file's token (if any) gives way to the bundle's
        source["token_file"] = str(token_file)
    return overlay


def _kept_token_file(config_path: Path, bundle: Bundle) -> Path | None:
    """Where the board's token will be after applying: the bundle's, else an earlier bundle's file."""
    folder = dropin_dir(config_path)
    if _bundle_token(bundle.config) is not None or (folder / TOKEN_NAME).exists():
        return folder / TOKEN_NAME
    return None


def check_bundle(config_path: Path, bundle: Bundle, current: Config | None) -> None:
    """BundleRefused unless the config with the bundle applied loads cleanly, is enrolled, and keeps
    a token where the board had one (a board that loses its token can no longer be reached)."""
    with_token = json.loads(json.dumps(bundle.config))
    source = with_token.setdefault("source", {}) if isinstance(with_token.get("source", {}), dict) else None
    token = _bundle_token(bundle.config)
    kept = _kept_token_file(config_path, bundle)
    if source is not None and token is not None:
        source["token_file"] = None  # checked inline; written to the token file
    elif source is not None and kept is not None:
        source.update(token=None, token_file=str(kept))
    where = shown_path(bundle.path)
    try:
        config = load_config_with(config_path, DROPIN_NAME, with_token, overlay_origin=bundle.path)
    except ConfigError as exc:
        raise BundleRefused("config", f"{where}: its config would not load: {exc.problems[0]}"
                                      + (f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else "")) \
            from None
    missing = config.missing_for_enrolment()
    if missing:
        raise BundleRefused("config", f"{where}: the board would still lack {', '.join(missing)}")
    had_token = current is not None and bool(_token_or_none(current))
    if had_token and not _token_or_none(config) and not config.source.url.startswith("file:"):
        raise BundleRefused("config", f"{where}: the board would be left without its device token "
                                      "(give the bundle source.token)")


def _token_or_none(config: Config) -> str | None:
    try:
        return config.token()
    except (OSError, ValueError):
        return None


def apply_bundle(config_path: Path, bundle: Bundle, now: dt.datetime) -> None:
    """Write the bundle's config (token first, then the drop-in, then the serial); each write is
    atomic, and a power cut between them leaves a state the next start reads and finishes."""
    folder = dropin_dir(config_path)
    try:
        folder.mkdir(mode=0o750, exist_ok=True)
        token = _bundle_token(bundle.config)
        if token is not None:
            atomic_write(folder / TOKEN_NAME, token.encode("utf-8") + b"\n", mode=0o600)
            os.chmod(folder / TOKEN_NAME, 0o600)
        header = (f"# Written by bangtin-agent from provisioning bundle serial {bundle.serial} (signed by "
                  f"{bundle.signed_by}) on {now.isoformat(timespec='seconds')}.\n"
                  "# Do not edit: the next bundle replaces this file. Local settings belong in agent.yaml or\n"
                  "# in another agent.d/*.yaml (files later in name order win).\n")
        body = yaml.safe_dump(_overlay(bundle.config, _kept_token_file(config_path, bundle)), allow_unicode=True,
                              sort_keys=False)
        atomic_write(folder / DROPIN_NAME, (header + body).encode("utf-8"), mode=0o640)
        os.chmod(folder / DROPIN_NAME, 0o640)  # the loader refuses drop-ins others may change
        applied = Applied(bundle.serial, bundle.sha256, bundle.signed_by, now.isoformat(timespec="seconds"),
                          str(bundle.path))
        atomic_write(folder / STATE_NAME, json.dumps(dataclasses.asdict(applied), indent=1).encode(), mode=0o640)
    except OSError as exc:
        raise BundleRefused("not-written", f"{shown_path(bundle.path)}: valid, but {folder} cannot be written "
                                           f"({exc.strerror or exc}; install.sh makes it the service's)") from None
    try:
        load_config(config_path)
    except ConfigError as exc:  # checked before writing; a second look costs nothing
        log.error("config after provisioning does not load: %s", exc.problems[0])

"""Provisioning bundles (PROTOCOL.md §12): a signed envelope that sets a board's config.

A bundle is found in `storage.dir/provision/*.json` (copied over SSH) or at the root of a USB
stick mounted under `/media` or `/run/media` (`bangtin-provision*.json`; docs/provisioning.md says
how a headless board mounts one). The "provision" thread looks every 2 s, so a valid bundle is
applied within 5 s of the drop: its settings go to a drop-in `agent.d/50-provision.yaml` beside
the config file (the technician's own `agent.yaml` and its comments are never rewritten), its
token to `agent.d/provision.token` (0600), its serial to `agent.d/provision.json`; then the board
restarts in place and starts syncing.

Refused, changing nothing, and said on screen and in `errors`: anything unsigned or signed by a
key not in `security.provision_keys` (a board without such keys takes no bundle at all), a bundle
bound to another board's key, one whose serial is not above the last applied, one whose config
would not load, and one that would move `storage.dir` or the control socket (records and the
technician's door would be stranded). A stranger with a USB stick cannot re-point a public screen.
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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.config import ConfigError, dropin_dir, key_annotation, load_config, load_config_with
from agent.envelope import PROVISION_PAYLOAD_TYPE, TrustedKey, open_envelope
from agent.files import atomic_write
from agent.limits import clip, show_value
from agent.models import InputRejected

log = logging.getLogger(__name__)

BUNDLE_SCHEMA = "bangtin.provision/1"
MAX_BUNDLE_BYTES = 64 * 1024
SCAN_EVERY_S = 2.0
USB_ROOTS = (Path("/media"), Path("/run/media"))
USB_PATTERN = "bangtin-provision*.json"
DROP_FOLDER = "provision"
DROPIN_NAME = "50-provision.yaml"
TOKEN_NAME = "provision.token"
STATE_NAME = "provision.json"
MAX_FOLDERS = 64  # mount points looked at per scan
MAX_FILES = 16  # bundles looked at per folder
NOTICE_S = 120.0  # at most this long an enrolled board says in its header that it refused a bundle
SETTLE_S = 1.0  # a file changed this recently is still being copied: looked at next scan

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
    "serial": "Gói thiết lập bị từ chối: cũ hơn gói đã áp dụng",
    "config": "Gói thiết lập bị từ chối: cấu hình trong gói không hợp lệ",
    "not-written": "Gói thiết lập hợp lệ nhưng không ghi được cấu hình",
}


class BundleRefused(InputRejected):
    """Why a bundle changes nothing: `kind` picks the words on screen, str() is for `errors`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
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
    path = dropin_dir(config_path) / STATE_NAME
    try:
        document = json.loads(path.read_text())
        return Applied(**{f.name: document[f.name] for f in dataclasses.fields(Applied) if f.name in document})
    except FileNotFoundError:
        return Applied()
    except (OSError, ValueError, TypeError) as exc:
        # The drop-in itself still says what was applied; a lost serial only lets an *older*
        # signed bundle for this board through, never a stranger's.
        log.warning("%s unreadable (%s): taking the applied serial as 0", path, exc)
        return Applied()


def read_candidate(path: Path) -> bytes:
    """A bundle file's bytes: a regular file, not a link, at most MAX_BUNDLE_BYTES. A FIFO or a
    device on a stranger's stick must not block or flood the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleRefused("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        found = os.fstat(handle.fileno())
        if not stat.S_ISREG(found.st_mode):
            raise BundleRefused("unreadable", f"{path}: not a regular file")
        if found.st_size > MAX_BUNDLE_BYTES:
            raise BundleRefused("unreadable", f"{path}: {found.st_size} bytes, over the limit of {MAX_BUNDLE_BYTES}")
        return handle.read(MAX_BUNDLE_BYTES + 1)


def open_bundle(raw: bytes, path: Path, keys: Sequence[TrustedKey], own_key_b64: str | None,
                applied: Applied) -> Bundle | None:
    """The bundle if it should be applied, None if it is the one applied already; else BundleRefused."""
    if not keys:
        raise BundleRefused("no-keys", f"{path}: security.provision_keys is empty, so no bundle is taken "
                                       "(install.sh --province-key KEY)")
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if isinstance(document, dict) and "payloadType" not in document and "signatures" not in document:
        raise BundleRefused("unsigned", f"{path}: not a signed envelope (a bundle must be signed by the province)")
    try:
        opened = open_envelope(raw, PROVISION_PAYLOAD_TYPE, keys, max_bytes=MAX_BUNDLE_BYTES)
    except InputRejected as exc:
        kind = "signature" if "signature" in str(exc) else "unreadable"
        raise BundleRefused(kind, f"{path}: {exc}") from None
    payload = opened.document
    if payload.get("schema") != BUNDLE_SCHEMA:
        raise BundleRefused("unreadable", f"{path}: schema: expected {BUNDLE_SCHEMA!r}, "
                                          f"found {show_value(payload.get('schema'))}")
    serial = payload.get("serial")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 1:
        raise BundleRefused("unreadable", f"{path}: serial: expected an integer >= 1, found {show_value(serial)}")
    board_key = payload.get("board_key")
    if board_key is not None and not _same_key(board_key, own_key_b64):
        raise BundleRefused("other-board", f"{path}: bound to another board (board_key {show_value(board_key, 24)}; "
                                           "this board's key is in `bangtin-agent identity`)")
    config = payload.get("config")
    if not isinstance(config, dict):
        raise BundleRefused("unreadable", f"{path}: config: expected a mapping of config sections")
    for section, why in NOT_FROM_BUNDLES.items():
        if section in config:
            raise BundleRefused("config", f"{path}: config.{section}: {why}")
    relative = _relative_paths(config)
    if relative:
        raise BundleRefused("config", f"{path}: config.{relative[0]}: a bundle's file paths must be absolute "
                                      "(a relative one would name a file on the stick)")
    sha256 = hashlib.sha256(raw).hexdigest()
    if serial == applied.serial and sha256 == applied.sha256:
        return None
    if serial <= applied.serial:
        raise BundleRefused("serial", f"{path}: serial {serial} is not above the applied serial {applied.serial}")
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


def _overlay(config: Mapping[str, Any], token_file: Path | None) -> dict[str, Any]:
    """The drop-in's content: the bundle's config, its token replaced by the token file."""
    overlay = json.loads(json.dumps(config))  # a deep copy of plain JSON values
    source = overlay.get("source")
    if isinstance(source, dict) and "token" in source:
        source["token"] = None  # the main file's token (if any) gives way to the bundle's
        source["token_file"] = str(token_file) if token_file is not None else None
    return overlay


def check_bundle(config_path: Path, bundle: Bundle) -> None:
    """BundleRefused unless the config with the bundle applied loads cleanly and is enrolled."""
    with_token = json.loads(json.dumps(bundle.config))
    source = with_token.get("source")
    if isinstance(source, dict) and "token" in source:
        source["token_file"] = None
    try:
        config = load_config_with(config_path, DROPIN_NAME, with_token, overlay_origin=bundle.path)
    except ConfigError as exc:
        raise BundleRefused("config", f"{bundle.path}: its config would not load: {exc.problems[0]}"
                                      + (f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else "")) \
            from None
    missing = config.missing_for_enrolment()
    if missing:
        raise BundleRefused("config", f"{bundle.path}: the board would still lack {', '.join(missing)}")


def apply_bundle(config_path: Path, bundle: Bundle, now: dt.datetime) -> None:
    """Write the bundle's config (token first, then the drop-in, then the serial); each write is
    atomic, and a power cut between them leaves a state the next start reads and finishes."""
    folder = dropin_dir(config_path)
    try:
        folder.mkdir(mode=0o750, exist_ok=True)
        token = bundle.config.get("source", {}).get("token") if isinstance(bundle.config.get("source"), dict) else None
        token_file = folder / TOKEN_NAME if isinstance(token, str) else None
        if token_file is not None:
            atomic_write(token_file, token.encode("utf-8") + b"\n", mode=0o600)  # type: ignore[union-attr]
            os.chmod(token_file, 0o600)
        header = (f"# Written by bangtin-agent from provisioning bundle serial {bundle.serial} (signed by "
                  f"{bundle.signed_by}) on {now.isoformat(timespec='seconds')}.\n"
                  "# Do not edit: the next bundle replaces this file. Local settings belong in agent.yaml or\n"
                  "# in another agent.d/*.yaml (files later in name order win).\n")
        body = yaml.safe_dump(_overlay(bundle.config, token_file), allow_unicode=True, sort_keys=False)
        atomic_write(folder / DROPIN_NAME, (header + body).encode("utf-8"), mode=0o640)
        os.chmod(folder / DROPIN_NAME, 0o640)  # the loader refuses drop-ins others may change
        applied = Applied(bundle.serial, bundle.sha256, bundle.signed_by, now.isoformat(timespec="seconds"),
                          str(bundle.path))
        atomic_write(folder / STATE_NAME, json.dumps(dataclasses.asdict(applied), indent=1).encode(), mode=0o640)
    except OSError as exc:
        raise BundleRefused("not-written", f"{bundle.path}: valid, but {folder} cannot be written "
                                           f"({exc.strerror or exc}; install.sh makes it the service's)") from None
    try:
        load_config(config_path)
    except ConfigError as exc:  # checked before writing; a second look costs nothing
        log.error("config after provisioning does not load: %s", exc.problems[0])


@dataclass(frozen=True)
class Candidate:
    path: Path
    signature: tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns: looked at again only when changed
    dropped: bool  # in the drop folder (deleted once applied: it holds a token), not on a stick


class Provisioner:
    """The "provision" thread: scans, checks, applies the best bundle, reports refusals."""

    name = "provision"

    def __init__(self, config_path: Path, drop_folder: Path, keys: Sequence[TrustedKey], own_key_b64: str | None,
                 stop: threading.Event, *, applied_restart: Callable[[Bundle], None],
                 refused: Callable[[BundleRefused | None], None], now: Callable[[], dt.datetime],
                 usb_roots: Sequence[Path] = USB_ROOTS, every_s: float = SCAN_EVERY_S,
                 every_scan: Callable[[], None] = lambda: None) -> None:
        self._config_path = config_path
        self._drop_folder = drop_folder
        self._keys = tuple(keys)
        self._own_key = own_key_b64
        self._stop = stop
        self._applied_restart = applied_restart
        self._refused = refused
        self._now = now
        self._usb_roots = tuple(usb_roots)
        self._every_s = every_s
        self._every_scan = every_scan  # e.g. the enrolment screen's addresses, which DHCP may change
        self._seen: dict[Path, tuple[tuple[int, int, int, int], BundleRefused | None]] = {}
        self._shown: BundleRefused | None = None
        self._lock = threading.Lock()
        self._last: str = "no bundle seen"
        self._thread: threading.Thread | None = None

    # --- service ------------------------------------------------------------------------------

    def start(self) -> None:
        self._drop_folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        pass  # the shared stop event ends the loop

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> dict[str, Any]:
        with self._lock:
            last = self._last
        return {"drop_folder": str(self._drop_folder), "usb_roots": [str(p) for p in self._usb_roots],
                "applied_serial": read_applied(self._config_path).serial, "keys": len(self._keys), "last": last}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.scan_once():
                    return  # applied: the board restarts with its new config
                self._every_scan()
            except Exception:  # a scan that fails must not end provisioning for good
                log.exception("provisioning scan failed")
            self._stop.wait(self._every_s)

    # --- one scan -----------------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        found = [Candidate(p, sig, True) for p, sig in _files_in(self._drop_folder, "*.json")]
        folders: list[Path] = []
        for root in self._usb_roots:
            for child in _subfolders(root):
                folders.append(child)
                folders.extend(_subfolders(child))  # udisks2 mounts at /media/<user>/<label>
        for folder in folders[:MAX_FOLDERS]:
            found.extend(Candidate(p, sig, False) for p, sig in _files_in(folder, USB_PATTERN))
        return found

    def scan_once(self) -> bool:
        """Look once; True when a bundle was applied (and the restart asked for)."""
        present = self.candidates()
        applied = read_applied(self._config_path)
        best: tuple[Bundle, Candidate] | None = None
        settled_before = time.time_ns() - int(SETTLE_S * 1e9)
        for candidate in present:
            seen = self._seen.get(candidate.path)
            if seen is not None and seen[0] == candidate.signature:
                continue
            if candidate.signature[2] > settled_before:
                present = [c for c in present if c is not candidate]  # still being copied: next scan
                continue
            try:
                bundle = open_bundle(read_candidate(candidate.path), candidate.path, self._keys, self._own_key, applied)
                if bundle is not None:
                    check_bundle(self._config_path, bundle)
                    if best is None or bundle.serial > best[0].serial:
                        best = (bundle, candidate)
                else:
                    self._note(f"{candidate.path}: serial {applied.serial} applied already")
                self._seen[candidate.path] = (candidate.signature, None)
            except BundleRefused as refusal:
                log.warning("provisioning bundle refused: %s", refusal)
                self._seen[candidate.path] = (candidate.signature, refusal)
        for gone in set(self._seen) - {c.path for c in present}:
            del self._seen[gone]
        if best is not None:
            bundle, candidate = best
            try:
                apply_bundle(self._config_path, bundle, self._now())
            except BundleRefused as refusal:
                self._seen[candidate.path] = (candidate.signature, refusal)
            else:
                self._note(f"{bundle.path}: serial {bundle.serial} applied")
                log.warning("provisioning bundle serial %d from %s applied: restarting with the new config",
                            bundle.serial, bundle.path)
                if candidate.dropped:
                    candidate.path.unlink(missing_ok=True)  # it holds the device token in clear
                self._show(None)
                self._applied_restart(bundle)
                return True
        refusals = [r for _, r in self._seen.values() if r is not None]
        self._show(refusals[-1] if refusals else None)
        return False

    def _note(self, text: str) -> None:
        with self._lock:
            self._last = clip(text, 300)

    def _show(self, refusal: BundleRefused | None) -> None:
        if refusal is self._shown:
            return
        self._shown = refusal
        if refusal is not None:
            self._note(f"refused: {refusal}")
        self._refused(refusal)


def _subfolders(root: Path) -> list[Path]:
    try:
        with os.scandir(root) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))[:MAX_FOLDERS]
    except OSError:
        return []


def _files_in(folder: Path, pattern: str) -> list[tuple[Path, tuple[int, int, int, int]]]:
    try:
        paths = sorted(folder.glob(pattern))[:MAX_FILES]
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            info = path.lstat()
        except OSError:
            continue
        found.append((path, (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)))
    return found

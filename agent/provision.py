"""Provisioning bundles (PROTOCOL.md §12): a signed envelope that sets a board's config.

A bundle is found in `storage.dir/provision/*.json` (copied over SSH) or at the root of a USB
stick mounted under `/media` or `/run/media` (`bangtin-provision*.json`; docs/provisioning.md says
how a headless board mounts one). The "provision" thread looks every 2 s and takes a file once it
has looked the same on two looks in a row (still being copied otherwise; the board's clock is not
trusted for this: a FAT stick written in Vietnam carries local times, and a board without NTP is
wrong anyway), so a valid bundle is applied within 5 s of the drop. Its settings go to a drop-in
`agent.d/50-provision.yaml` beside the config file (the technician's own `agent.yaml` and its
comments are never rewritten), its token to `agent.d/provision.token` (0600), its serial to
`agent.d/provision.json`; then the board restarts in place and starts syncing.

Refused, changing nothing, and said on screen and in `errors`: anything unsigned or signed by a
key not in `security.provision_keys` (a board without such keys takes no bundle at all); a bundle
bound to another board's key; on an enrolled board, one bound to no board at all (an enrolled
board is re-provisioned only by name — its own key — or a stray stick for any board could re-point
it); one whose serial is not above the last applied; one whose config would not load, would leave
the board without its token, or would move `storage.dir` or the control socket (records and the
technician's door would be stranded); several different bundles for any board at once (every
board would take the same identity). A stranger with a USB stick cannot re-point a public screen.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.config import Config, ConfigError, dropin_dir, dropin_files, key_annotation, load_config, load_config_with
from agent.envelope import PROVISION_PAYLOAD_TYPE, TrustedKey, keyid_of, open_envelope
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
MAX_FILES = 256  # bundles looked at per folder: a district technician's stick may carry a commune's boards
MAX_ENTRIES = 4096  # directory entries read per folder per scan, whatever a stick holds
NOTICE_S = 120.0  # at most this long an enrolled board says in its header that it refused a bundle

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


@dataclass(frozen=True)
class Candidate:
    path: Path
    signature: tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns: looked at again only when changed
    dropped: bool  # in the drop folder (deleted once applied: it holds a token), not on a stick


Outcome = tuple[str, Bundle | BundleRefused | None]  # ("apply", bundle) / ("applied", None) / ("refused", why)


class Provisioner:
    """The "provision" thread: scans, checks, applies the best bundle, reports refusals."""

    name = "provision"

    def __init__(self, config_path: Path, drop_folder: Path, keys: Sequence[TrustedKey], own_key_b64: str | None,
                 stop: threading.Event, *, applied_restart: Callable[[Bundle], None],
                 refused: Callable[[BundleRefused | None], None], now: Callable[[], dt.datetime],
                 usb_roots: Sequence[Path] = USB_ROOTS, every_s: float = SCAN_EVERY_S,
                 every_scan: Callable[[], None] = lambda: None, current: Config | None = None) -> None:
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
        self._current = current  # the config this run started with (None: not enrolled, nothing to keep)
        self._enrolled = current is not None and current.enrolled
        self._looks: dict[Path, tuple[int, int, int, int]] = {}  # what each file looked like at the last scan
        self._seen: dict[Path, tuple[tuple[int, int, int, int], Outcome]] = {}
        self._config_state: object = None
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
        try:
            serial: int | str = read_applied(self._config_path).serial
        except BundleRefused as exc:
            serial = str(exc)
        with self._lock:
            last = self._last
        return {"drop_folder": str(self._drop_folder), "usb_roots": [str(p) for p in self._usb_roots],
                "applied_serial": serial, "keys": len(self._keys), "last": last}

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
        state = _config_files_state(self._config_path)
        if state != self._config_state:
            self._config_state = state
            self._seen.clear()  # a refusal the board's own config caused is looked at again once it changes
        present = self.candidates()
        settled = [c for c in present if self._looks.get(c.path) == c.signature]  # unchanged since the last look
        self._looks = {c.path: c.signature for c in present}
        for gone in set(self._seen) - {c.path for c in settled}:
            del self._seen[gone]
        try:
            applied = read_applied(self._config_path)
        except BundleRefused as unreadable_state:
            self._show([unreadable_state] if settled else [])
            return False
        outcomes = [(c, self._outcome(c, applied)) for c in settled]
        bundles = [(o[1], c) for c, o in outcomes if o[0] == "apply" and isinstance(o[1], Bundle)]
        bound = [(b, c) for b, c in bundles if b.board_key is not None]
        unbound = {b.sha256: (b, c) for b, c in bundles if b.board_key is None}
        if not bound and len(unbound) > 1:
            self._show([BundleRefused("ambiguous", f"{len(unbound)} different bundles for any board at once "
                                                   f"({', '.join(shown_path(c.path) for _, c in unbound.values())}): "
                                                   "bind them to their boards (refsource provision --board-key)")])
            return False
        choice = max(bound or list(unbound.values()), key=lambda pair: pair[0].serial, default=None)
        if choice is not None:
            bundle, candidate = choice
            try:
                check_bundle(self._config_path, bundle, self._current)
                apply_bundle(self._config_path, bundle, self._now())
            except BundleRefused as refusal:
                log.warning("provisioning bundle refused: %s", refusal)
                self._seen[candidate.path] = (candidate.signature, ("refused", refusal))
            else:
                self._note(f"{shown_path(bundle.path)}: serial {bundle.serial} applied")
                log.warning("provisioning bundle serial %d from %s applied: restarting with the new config",
                            bundle.serial, shown_path(bundle.path))
                if candidate.dropped:
                    candidate.path.unlink(missing_ok=True)  # it holds the device token in clear
                self._refused(None)
                self._applied_restart(bundle)
                return True
        refusals = [o[1] for _, (_, o) in self._seen.items() if o[0] == "refused" and isinstance(o[1], BundleRefused)]
        if any(o[0] == "applied" for _, o in outcomes):
            # This board's own bundle is here (applied already): the others on the stick are other boards'.
            refusals = [r for r in refusals if r.kind not in ("other-board", "unbound")]
        self._show(refusals)
        return False

    def _outcome(self, candidate: Candidate, applied: Applied) -> Outcome:
        seen = self._seen.get(candidate.path)
        if seen is not None and seen[0] == candidate.signature:
            return seen[1]
        outcome: Outcome
        try:
            raw = read_candidate(candidate.path)
            bundle = open_bundle(raw, candidate.path, self._keys, self._own_key, applied, enrolled=self._enrolled)
            outcome = ("apply", bundle) if bundle is not None else ("applied", None)
            if bundle is None:
                self._note(f"{shown_path(candidate.path)}: serial {applied.serial} applied already")
        except BundleRefused as refusal:
            log.warning("provisioning bundle refused: %s", refusal)
            outcome = ("refused", refusal)
        self._seen[candidate.path] = (candidate.signature, outcome)
        return outcome

    def _note(self, text: str) -> None:
        with self._lock:
            self._last = clip(text, 300)

    def _show(self, refusals: list[BundleRefused]) -> None:
        """Say the refusal that matters while it lasts (called every scan: `errors` must not forget
        it while the file is there). Many bundles for other boards and none for this one are said once."""
        others = [r for r in refusals if r.kind == "other-board"]
        if len(others) > 1 and len(others) == len(refusals):
            mine = fingerprint_of(self._own_key) if self._own_key else "none"
            refusal: BundleRefused | None = BundleRefused(
                "other-board", f"{len(others)} bundles, none for this board (key {mine})")
        else:
            refusal = refusals[-1] if refusals else None
        if refusal is not None:
            self._note(f"refused: {refusal}")
        self._refused(refusal)


def _config_files_state(config_path: Path) -> object:
    """What the config files look like: a refusal caused by them is worth another look once they change."""
    files = [config_path, dropin_dir(config_path), *dropin_files_quietly(config_path),
             dropin_dir(config_path) / STATE_NAME]
    state = []
    for path in files:
        try:
            info = path.stat()
            state.append((str(path), info.st_mtime_ns, info.st_size))
        except OSError:
            state.append((str(path), 0, -1))
    return tuple(state)


def dropin_files_quietly(config_path: Path) -> list[Path]:
    try:
        return dropin_files(config_path)
    except ConfigError:
        return []


def _subfolders(root: Path) -> list[Path]:
    found: list[Path] = []
    try:
        with os.scandir(root) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_ENTRIES or len(found) >= MAX_FOLDERS:
                    break
                if entry.is_dir(follow_symlinks=False):
                    found.append(Path(entry.path))
    except OSError:
        return []
    return sorted(found)


def _files_in(folder: Path, pattern: str) -> list[tuple[Path, tuple[int, int, int, int]]]:
    """At most MAX_FILES names matching `pattern`, from at most MAX_ENTRIES directory entries: a
    stick with a million files costs one bounded read, not a sorted million."""
    names: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_ENTRIES or len(names) >= MAX_FILES:
                    break
                if fnmatch.fnmatchcase(entry.name, pattern):
                    names.append(entry.name)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        path = folder / name
        try:
            info = path.lstat()
        except OSError:
            continue
        found.append((path, (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)))
    return found

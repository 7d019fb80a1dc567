"""Finding provisioning bundles (PROTOCOL.md §12) and taking the right one; the bundle itself
(format, checks, writing it) is agent/bundle.py.

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

import datetime as dt
import fnmatch
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle import (
    STATE_NAME,
    Applied,
    Bundle,
    BundleRefused,
    apply_bundle,
    check_bundle,
    fingerprint_of,
    open_bundle,
    read_applied,
    read_candidate,
    shown_path,
)
from agent.config import Config, ConfigError
from agent.configfiles import dropin_dir, dropin_files
from agent.envelope import TrustedKey
from agent.limits import clip

log = logging.getLogger(__name__)

SCAN_EVERY_S = 2.0
USB_ROOTS = (Path("/media"), Path("/run/media"))
USB_PATTERN = "bangtin-provision*.json"
DROP_FOLDER = "provision"
MAX_FOLDERS = 64  # mount points looked at per scan
MAX_FILES = 256  # bundles looked at per folder: a district technician's stick may carry a commune's boards
MAX_ENTRIES = 4096  # directory entries read per folder per scan, whatever a stick holds
NOTICE_S = 120.0  # at most this long an enrolled board says in its header that it refused a bundle

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

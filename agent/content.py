"""The board's current content: the last accepted manifest, persisted, and which media are verified.

Every source (the `file://` folder, HTTP) hands manifest bytes to `Content.offer` and media to the
store; only `Content.commit` changes what plays. The accepted envelope and serial are written
atomically to `storage.dir`, so the next start plays at once, and a rollback to an older serial is
refused even across restarts. The manifest accepted before the current one is kept too
(`manifest.previous`): it is what the board falls back to when the current one is set aside after
three failed starts (PROTOCOL.md §10).

State on disk (`state.json`): `{"serial", "etag", "set_aside"}`; v1 files without `set_aside`
read as "nothing set aside".
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cache.store import MediaStore
from agent.envelope import TrustedKey
from agent.files import atomic_write
from agent.health import Problems
from agent.manifest import accept_manifest
from agent.models import Manifest, ManifestRejected, Media

log = logging.getLogger(__name__)

SET_ASIDE_PROBLEM = "set-aside"


@dataclass(frozen=True)
class Snapshot:
    """A consistent view for one decision: the manifest and the media verified for it."""

    manifest: Manifest | None
    verified_sha256: frozenset[str]
    version: int  # bumps whenever the manifest or the set of verified media changes


@dataclass
class _State:
    serial: int | None = None
    etag: str | None = None  # of the accepted manifest's answer: polls stay conditional across restarts
    set_aside: int | None = None  # serial set aside after failed starts, until a newer one is accepted
    previous_set_aside: bool = False  # the fallback failed too: the splash until a newer serial

    def to_json(self) -> bytes:
        return json.dumps({"serial": self.serial, "etag": self.etag, "set_aside": self.set_aside,
                           "previous_set_aside": self.previous_set_aside}).encode()


class Content:
    def __init__(
        self,
        state_dir: Path,
        store: MediaStore,
        problems: Problems,
        *,
        keys: Sequence[TrustedKey],
        device_id: str,
        groups: Sequence[str],
        on_commit: Callable[[Manifest, int | None], None] | None = None,
    ) -> None:
        self._manifest_path = state_dir / "manifest.accepted"
        self._previous_path = state_dir / "manifest.previous"
        self._state_path = state_dir / "state.json"
        self._store = store
        self._problems = problems
        self._keys = tuple(keys)
        self._device_id = device_id
        self._groups = tuple(groups)
        self._on_commit = on_commit  # (new manifest, previous serial): the journal's manifest_changed event
        self._lock = threading.Lock()
        self._manifest: Manifest | None = None
        self._state = _State()
        self._version = 0

    @property
    def last_serial(self) -> int | None:
        with self._lock:
            return self._state.serial

    @property
    def etag(self) -> str | None:
        with self._lock:
            return self._state.etag

    def remember_etag(self, etag: str | None) -> None:
        """An unchanged manifest came with a new ETag: poll with it from now on."""
        with self._lock:
            if etag == self._state.etag or self._state.serial is None:
                return
            self._state.etag = etag
            state = self._state.to_json()
        atomic_write(self._state_path, state)

    # --- start --------------------------------------------------------------------------------

    def restore(self, *, set_aside: bool = False) -> Manifest | None:
        """Load the persisted manifest (re-verified with today's keys) without hashing its media.

        `set_aside`: this start follows three failed ones, so the stored manifest is not trusted
        to run: the previous one (or, if that was set aside too, none) becomes current instead.
        """
        state = self._read_state()
        if set_aside:
            stored = self._load(self._manifest_path, state.serial)
            if state.set_aside is None and stored is not None:
                state.set_aside = stored.serial
            elif state.set_aside is not None:
                state.previous_set_aside = True
            atomic_write(self._state_path, state.to_json())
        if state.set_aside is not None:
            note = " and the one before it" if state.previous_set_aside else ""
            self._problems.report(SET_ASIDE_PROBLEM,
                                  f"manifest serial {state.set_aside}{note} set aside after 3 failed starts")
            manifest = None if state.previous_set_aside else self._load(self._previous_path, None)
        else:
            manifest = self._load(self._manifest_path, state.serial)
        with self._lock:
            self._state = state
            self._manifest = manifest
            if manifest is not None and state.set_aside is None:
                state.serial = max(manifest.serial, state.serial or 0)
            self._version += 1
        if manifest is not None:
            log.info("restored manifest serial %d", manifest.serial)
        return manifest

    def _load(self, path: Path, last_serial: int | None) -> Manifest | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problems.report("manifest", f"stored manifest {path.name} unreadable: {exc.strerror or exc}")
            return None
        try:
            # Stored means accepted here before, maybe under protocol v1 (no audience then): an
            # upgraded board keeps playing it until the province's republished manifest arrives.
            return accept_manifest(raw, keys=self._keys, device_id=self._device_id, groups=self._groups,
                                   last_serial=last_serial, require_audience=False)
        except ManifestRejected as exc:
            self._problems.report("manifest", f"stored manifest rejected: {exc}")
            return None

    def verify_cached(self, media: Sequence[Media]) -> None:
        """Re-hash cached files (after a restart or power cut), in the order given; the player sees
        each as it passes, so the first item plays long before a large cache is checked."""
        for entry in media:
            corrupt = self._store.verify_existing([(entry.sha256, entry.size)])
            if corrupt:
                self._problems.report(f"media:{entry.id}", f"media {entry.id}: cached file was corrupt and is removed")
            self.media_changed()

    # --- new manifests ------------------------------------------------------------------------

    def offer(self, raw: bytes, origin: str) -> Manifest | None:
        """Verify manifest bytes. Returns a manifest to fetch media for and commit, or None if unchanged.

        Raises ManifestRejected (already reported in problems) when it is refused.
        """
        with self._lock:
            last_serial = self._state.serial
            set_aside = self._state.set_aside
            current = self._manifest
        try:
            manifest = accept_manifest(raw, keys=self._keys, device_id=self._device_id, groups=self._groups,
                                       last_serial=last_serial)
        except ManifestRejected as exc:
            self._problems.report("manifest", f"manifest from {origin} rejected: {exc}")
            raise
        if manifest.serial == last_serial:
            if set_aside == manifest.serial:
                self._problems.resolve("manifest")  # the set-aside problem says what there is to say
            elif current is not None and manifest != current:
                self._problems.report(
                    "manifest", f"manifest from {origin} has serial {manifest.serial} again but other content: "
                    "ignored (publish with a higher serial)")
            else:
                self._problems.resolve("manifest")
            return None
        return manifest

    def commit(self, manifest: Manifest, raw: bytes, etag: str | None = None) -> None:
        """Make `manifest` current and persist it (its serial is never accepted lower again)."""
        try:
            previous_raw = self._manifest_path.read_bytes()
        except FileNotFoundError:
            previous_raw = None
        with self._lock:
            was_set_aside = self._state.set_aside
            previous_serial = self._manifest.serial if self._manifest is not None else None
        if previous_raw is not None and was_set_aside is None:
            atomic_write(self._previous_path, previous_raw)
        atomic_write(self._manifest_path, raw)
        state = _State(serial=manifest.serial, etag=etag)
        atomic_write(self._state_path, state.to_json())
        with self._lock:
            self._manifest = manifest
            self._state = state
            self._version += 1
        self._problems.resolve("manifest")
        self._problems.resolve(SET_ASIDE_PROBLEM)
        # Problems about media and items the new manifest no longer has are no longer problems.
        self._problems.resolve_prefix("media:", keep={f"media:{m.id}" for m in manifest.media})
        self._problems.resolve_prefix("item:", keep={f"item:{i.id}" for i in manifest.items})
        if self._on_commit is not None:
            self._on_commit(manifest, previous_serial)
        log.info("manifest serial %d is now current (%d items, %d media)", manifest.serial,
                 len(manifest.items), len(manifest.media))

    def media_changed(self) -> None:
        """Tell the player that more media became verified (or went)."""
        with self._lock:
            self._version += 1

    def current(self) -> Manifest | None:
        with self._lock:
            return self._manifest

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._manifest, self._store.verified(), self._version)

    def _read_state(self) -> _State:
        try:
            data: Any = json.loads(self._state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _State()
        except (OSError, ValueError) as exc:
            # A torn state file cannot happen (atomic writes); a hand-edited one is reported.
            self._problems.report("state", f"{self._state_path} unreadable ({exc}); rollback check starts afresh")
            return _State()
        if not isinstance(data, dict):
            return _State()

        def integer(key: str) -> int | None:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        etag = data.get("etag")
        return _State(serial=integer("serial"), etag=etag if isinstance(etag, str) else None,
                      set_aside=integer("set_aside"), previous_set_aside=data.get("previous_set_aside") is True)

"""The board's current content: the last accepted manifest, persisted, and which media are verified.

Every source (the `file://` folder now, HTTP later) hands manifest bytes to `Content.offer` and
media to the store; only `Content.commit` changes what plays. The accepted envelope and serial are
written atomically to `storage.dir`, so the next start plays at once, and a rollback to an older
serial is refused even across restarts.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.cache.store import MediaStore
from agent.files import atomic_write
from agent.health import Problems
from agent.manifest import ManifestError, TrustedKey, accept_manifest
from agent.models import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """A consistent view for one decision: the manifest and the media verified for it."""

    manifest: Manifest | None
    verified_sha256: frozenset[str]
    version: int  # bumps whenever the manifest or the set of verified media changes


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
    ) -> None:
        self._manifest_path = state_dir / "manifest.accepted"
        self._state_path = state_dir / "state.json"
        self._store = store
        self._problems = problems
        self._keys = tuple(keys)
        self._device_id = device_id
        self._groups = tuple(groups)
        self._lock = threading.Lock()
        self._manifest: Manifest | None = None
        self._last_serial: int | None = None
        self._etag: str | None = None  # of the accepted manifest's answer: polls stay conditional across restarts
        self._version = 0

    @property
    def last_serial(self) -> int | None:
        with self._lock:
            return self._last_serial

    @property
    def etag(self) -> str | None:
        with self._lock:
            return self._etag

    def remember_etag(self, etag: str | None) -> None:
        """An unchanged manifest came with a new ETag: poll with it from now on."""
        with self._lock:
            if etag == self._etag or self._last_serial is None:
                return
            self._etag = etag
            state = {"serial": self._last_serial, "etag": etag}
        atomic_write(self._state_path, json.dumps(state).encode())

    def restore(self) -> Manifest | None:
        """Load the persisted manifest (re-verified with today's keys) and check its cached media."""
        self._last_serial, self._etag = self._read_state()
        try:
            raw = self._manifest_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            manifest = accept_manifest(raw, keys=self._keys, device_id=self._device_id, groups=self._groups,
                                       last_serial=self._last_serial)
        except ManifestError as exc:
            self._problems.report("manifest", f"stored manifest rejected: {exc}")
            return None
        corrupt = self._store.verify_existing((m.sha256, m.size) for m in manifest.media)
        for sha in corrupt:
            self._problems.report(f"media:{sha}", f"cached media {sha[:12]}… was corrupt and is removed")
        with self._lock:
            self._manifest = manifest
            self._last_serial = max(manifest.serial, self._last_serial or 0)
            self._version += 1
        log.info("restored manifest serial %d from %s", manifest.serial, self._manifest_path)
        return manifest

    def offer(self, raw: bytes, origin: str) -> Manifest | None:
        """Verify manifest bytes. Returns a manifest to fetch media for and commit, or None if unchanged.

        Raises ManifestError (already reported in problems) when it is refused.
        """
        with self._lock:
            last_serial = self._last_serial
            current = self._manifest
        try:
            manifest = accept_manifest(raw, keys=self._keys, device_id=self._device_id, groups=self._groups,
                                       last_serial=last_serial)
        except ManifestError as exc:
            self._problems.report("manifest", f"manifest from {origin} rejected: {exc}")
            raise
        if manifest.serial == last_serial:
            if current is not None and manifest != current:
                self._problems.report(
                    "manifest", f"manifest from {origin} has serial {manifest.serial} again but other content: "
                    "ignored (publish with a higher serial)")
            else:
                self._problems.resolve("manifest")
            return None
        return manifest

    def commit(self, manifest: Manifest, raw: bytes, etag: str | None = None) -> None:
        """Make `manifest` current and persist it (its serial is never accepted lower again)."""
        atomic_write(self._manifest_path, raw)
        atomic_write(self._state_path, json.dumps({"serial": manifest.serial, "etag": etag}).encode())
        with self._lock:
            self._manifest = manifest
            self._last_serial = manifest.serial
            self._etag = etag
            self._version += 1
        self._problems.resolve("manifest")
        # Problems about media and items the new manifest no longer has are no longer problems.
        self._problems.resolve_prefix("media:", keep={f"media:{m.id}" for m in manifest.media})
        self._problems.resolve_prefix("item:", keep={f"item:{i.id}" for i in manifest.items})
        log.info("manifest serial %d is now current (%d items, %d media)", manifest.serial,
                 len(manifest.items), len(manifest.media))

    def media_changed(self) -> None:
        """Tell the player that more media became verified."""
        with self._lock:
            self._version += 1

    def current(self) -> Manifest | None:
        with self._lock:
            return self._manifest

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._manifest, self._store.verified(), self._version)

    def _read_state(self) -> tuple[int | None, str | None]:
        try:
            state = json.loads(self._state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            # A torn state file cannot happen (atomic writes); a hand-edited one is reported.
            self._problems.report("state", f"{self._state_path} unreadable ({exc}); rollback check starts afresh")
            return None, None
        if not isinstance(state, dict):
            return None, None
        serial, etag = state.get("serial"), state.get("etag")
        return (serial if isinstance(serial, int) else None), (etag if isinstance(etag, str) else None)

"""The HTTP(S) source (PROTOCOL.md §1-§2, §7): conditional manifest polls and resumable media.

Built for metered 3G SIMs that drop: every request has connect/read timeouts and an overall
deadline; polls send `If-None-Match` (the ETag survives restarts); media resume with `Range` +
`If-Range` from the partial file; errors back off exponentially with jitter (cap 15 min) and honour
`Retry-After`. A new manifest becomes current once its media are in (or failed for good), so the
old content plays on meanwhile; on a first boot with nothing to play it becomes current at once and
items appear as their media are verified. Every answer's `Date` sets the clock offset.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin

from agent.models import Manifest, Media
from agent.sync.client import Backoff, ClientSettings, HttpClient, SourceError

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MIN_MEDIA_RATE = 4 * 1024  # bytes/s a download must average before its overall deadline cuts it
RETRY_FAILED_MEDIA_S = 3600.0  # a media that failed for good is tried again this much later (or with a new manifest)


class ManifestSink(Protocol):
    @property
    def etag(self) -> str | None: ...
    def offer(self, raw: bytes, origin: str) -> Manifest | None: ...
    def commit(self, manifest: Manifest, raw: bytes, etag: str | None = None) -> None: ...
    def remember_etag(self, etag: str | None) -> None: ...
    def current(self) -> Manifest | None: ...
    def media_changed(self) -> None: ...


class MediaSink(Protocol):
    def verified(self) -> frozenset[str]: ...
    def partial_size(self, sha256: str) -> int: ...
    def partial_path(self, sha256: str) -> Any: ...
    def partial_validator(self, sha256: str) -> str | None: ...
    def set_partial_validator(self, sha256: str, validator: str | None) -> None: ...
    def discard_partial(self, sha256: str) -> None: ...
    def finish_partial(self, sha256: str, size: int, label: str) -> None: ...
    def make_room(self, needed: int, limit: int, keep: set[str]) -> bool: ...


class ProblemSink(Protocol):
    def report(self, key: str, message: str) -> None: ...
    def resolve(self, key: str) -> None: ...


@dataclass(frozen=True)
class HttpSettings:
    base_url: str
    device_id: str
    token: str | None
    ca_file: str | None
    poll_interval_s: float
    cache_limit_bytes: int
    user_agent: str
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    manifest_deadline_s: float = 120.0

    def client_settings(self) -> ClientSettings:
        return ClientSettings(self.base_url, self.token, self.ca_file, self.user_agent,
                              self.connect_timeout_s, self.read_timeout_s)

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/devices/{self.device_id}/manifest"


class HttpSource:
    """Owns the "http-source" thread: poll, download, switch; sleeps between with jitter."""

    def __init__(
        self,
        settings: HttpSettings,
        content: ManifestSink,
        store: MediaSink,
        problems: ProblemSink,
        stop: threading.Event,
        on_change: Callable[[], None],
        set_clock_offset: Callable[[float], None],
        media_order: Callable[[Manifest], Sequence[Media]],
        rng: random.Random | None = None,
        client: HttpClient | None = None,
    ) -> None:
        self.settings = settings
        self._content = content
        self._store = store
        self._problems = problems
        self._stop = stop
        self._on_change = on_change
        self._set_clock_offset = set_clock_offset
        self._media_order = media_order
        self._rng = rng or random.Random()
        self._backoff = Backoff(self._rng)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._owns_client = client is None
        self._client = client or HttpClient(settings.client_settings(), set_clock_offset)
        self._pending: tuple[Manifest, bytes, str | None] | None = None
        # sha256 → monotonic time to try again: a 404 or wrong bytes are not fetched again every poll.
        self._failed_for_good: dict[str, float] = {}
        self._progress: dict[str, Any] | None = None
        self.last_sync_ok_at: float | None = None

    # --- thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="http-source", daemon=True)
        self._thread.start()

    def request_sync(self) -> None:
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if not self.is_alive() and self._owns_client:
            self._client.close()

    def blocked_in_network_io(self) -> bool:
        """True while the thread waits on a socket (a stalled 3G link can hold it up to the read
        timeout). Leaving it at shutdown is safe: partial files resume and only verified files show."""
        return self._thread is not None and self._thread.ident is not None and \
            self._client.blocked_in_network_io(self._thread.ident)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        pending = self._pending
        return {
            "pending_manifest_serial": pending[0].serial if pending else None,
            "download": dict(self._progress) if self._progress else None,
            "failures_in_a_row": self._backoff.failures,
        }

    def _run(self) -> None:
        # A random first delay spreads a district's boards after a power cut comes back.
        first = self._rng.uniform(0, min(10.0, self.settings.poll_interval_s / 10))
        self._wake.wait(first)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.sync_once()
                self._backoff.reset()
                self._problems.resolve("source")
                interval = self.settings.poll_interval_s
                delay = self._rng.uniform(interval * 0.9, interval * 1.1)
            except SourceError as exc:
                delay = self._backoff.next_delay(exc.retry_after)
                self._problems.report("source", f"source {self.settings.base_url}: {exc}")
                log.info("next try in %.0f s (failure %d in a row)", delay, self._backoff.failures)
            except Exception:  # a bug must not end the thread: the board keeps trying
                log.exception("http source failed")
                delay = self._backoff.next_delay()
            self._wake.wait(delay)

    # --- one round -------------------------------------------------------------------------------

    def sync_once(self) -> None:
        """Poll the manifest, fetch what is missing, switch when ready. Raises SourceError."""
        self._poll_manifest()
        target = self._pending[0] if self._pending else self._content.current()
        if target is None:
            return
        transient = self._fetch_media(target)
        if self._pending is not None:
            manifest, raw, etag = self._pending
            if transient is None:  # everything is in, or failed for good (reported): switch
                self._content.commit(manifest, raw, etag)
                self._pending = None
                self._on_change()
        if transient is not None:
            raise transient

    def _poll_manifest(self) -> None:
        pending_etag = self._pending[2] if self._pending else None
        etag = pending_etag or self._content.etag
        headers = {"If-None-Match": etag} if etag else {}
        with self._client.get(self.settings.manifest_url, headers, self.settings.manifest_deadline_s) as response:
            if response.status_code == 304:
                self.last_sync_ok_at = time.time()
                return
            if response.status_code != 200:
                raise self._client.http_error(response, "manifest")
            raw = self._client.read_limited(response, MAX_MANIFEST_BYTES,
                                            time.monotonic() + self.settings.manifest_deadline_s)
            new_etag = response.headers.get("ETag")
        self.last_sync_ok_at = time.time()
        try:
            manifest = self._content.offer(raw, self.settings.manifest_url)
        except ValueError:
            return  # reported by the content; the current manifest plays on; retried at the next poll
        if manifest is None:
            self._pending = None
            self._content.remember_etag(new_etag)
            return
        self._failed_for_good.clear()
        if self._content.current() is None:
            # Nothing to keep playing: current at once; items become playable as their media arrive.
            self._content.commit(manifest, raw, new_etag)
            self._pending = None
            self._on_change()
        else:
            self._pending = (manifest, raw, new_etag)
            log.info("manifest serial %d accepted; fetching its media before switching", manifest.serial)

    # --- media -----------------------------------------------------------------------------------

    def _fetch_media(self, manifest: Manifest) -> SourceError | None:
        """Download missing media one at a time in order of need; the first transient error stops the round."""
        keep = {m.sha256 for m in manifest.media}
        current = self._content.current()
        if current is not None:
            keep |= {m.sha256 for m in current.media}
        for media in self._media_order(manifest):
            if self._stop.is_set():
                return SourceError("stopping")
            if media.sha256 in self._store.verified():
                self._problems.resolve(f"media:{media.id}")
                continue
            if self._failed_for_good.get(media.sha256, 0.0) > time.monotonic():
                continue
            if not self._store.make_room(media.size, self.settings.cache_limit_bytes, keep):
                self._problems.report("cache", f"storage.cache_max_mb is too small for media {media.id} ({media.size} bytes)")
                self._failed_for_good[media.sha256] = time.monotonic() + RETRY_FAILED_MEDIA_S
                continue
            try:
                self._download(media, urljoin(self.settings.manifest_url, media.url))
            except SourceError as exc:
                self._problems.report(f"media:{media.id}", f"media {media.id}: {exc}")
                if exc.permanent:
                    self._failed_for_good[media.sha256] = time.monotonic() + RETRY_FAILED_MEDIA_S
                    continue
                return exc
            self._problems.resolve(f"media:{media.id}")
            self._content.media_changed()
            self._on_change()
        return None

    def _download(self, media: Media, url: str) -> None:
        store, sha = self._store, media.sha256
        have = store.partial_size(sha)
        validator = store.partial_validator(sha)
        if have > media.size or (have and not validator):
            store.discard_partial(sha)  # more than declared, or bytes we cannot prove belong together
            have = 0
        if have == media.size:
            self._finish(media)
            return
        headers = {"Range": f"bytes={have}-", "If-Range": validator} if have and validator else {}
        deadline = time.monotonic() + max(120.0, (media.size - have) / MIN_MEDIA_RATE)
        label = f"media {media.id}"
        log.info("downloading %s (%d bytes%s)", label, media.size, f", resuming at {have}" if have else "")
        with self._client.get(url, headers, deadline - time.monotonic()) as response:
            if response.status_code == 416:
                store.discard_partial(sha)  # the server says our offset is past its file: start over
                raise SourceError("416 Range Not Satisfiable: restarting the download")
            if response.status_code == 206:
                if not _content_range_starts_at(response.headers.get("Content-Range"), have):
                    store.discard_partial(sha)
                    raise SourceError(f"206 for the wrong range ({response.headers.get('Content-Range')})")
                mode = "ab"
            elif response.status_code == 200:
                have, mode = 0, "wb"  # the file changed (If-Range failed) or ranges are not supported
            else:
                raise self._client.http_error(response, label)
            store.set_partial_validator(sha, response.headers.get("ETag"))
            started, started_at = have, time.monotonic()
            with open(store.partial_path(sha), mode) as out:
                for chunk in self._client.chunks(response, deadline, self._stop):
                    have += len(chunk)
                    if have > media.size:
                        out.close()
                        store.discard_partial(sha)
                        raise SourceError(f"the server sent more than the declared {media.size} bytes", permanent=True)
                    out.write(chunk)
                    rate = (have - started) / max(1e-3, time.monotonic() - started_at)
                    self._progress = {"media": media.id, "bytes_done": have, "bytes_total": media.size,
                                      "eta_s": round((media.size - have) / rate) if rate > 0 else None}
        self._progress = None
        if have < media.size:
            raise SourceError(f"transfer ended at {have} of {media.size} bytes; will resume")
        self._finish(media)

    def _finish(self, media: Media) -> None:
        try:
            self._store.finish_partial(media.sha256, media.size, f"media {media.id}")
        except ValueError as exc:  # MediaError: wrong bytes are thrown away, never shown
            raise SourceError(str(exc), permanent=True) from None
        log.info("media %s verified (%d bytes)", media.id, media.size)

    # --- HTTP plumbing ---------------------------------------------------------------------------

def _content_range_starts_at(value: str | None, start: int) -> bool:
    return bool(value) and value.replace("bytes ", "").split("-", 1)[0].strip() == str(start)  # type: ignore[union-attr]



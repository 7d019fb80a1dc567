"""The HTTP(S) source (PROTOCOL.md §1-§2, §7): conditional manifest polls and resumable media.

Built for metered 3G SIMs that drop: every request has connect/read timeouts and an overall
deadline; polls send `If-None-Match` (the ETag survives restarts); media resume with `Range` +
`If-Range` from the partial file. Back-off is per host: manifest failures back off the polls
(exponential with jitter, cap 15 min, `Retry-After` up to an hour); a failing media host or CDN
backs off only its own downloads. Media that failed for good (404, wrong bytes) are retried with
their own back-off (1 min doubling to 1 h), without waiting for a manifest change.

A new manifest becomes current once its media are in (or failed for good), so the old content
plays on meanwhile; on a first boot with nothing to play it becomes current at once and items
appear as their media are verified. When the new media do not fit beside the old ones, old media
the new manifest does not need are evicted (never the one on screen).

With download windows (`downloads.windows`, agent/downloads.py) large media wait for a window;
they do not hold a new manifest back: it becomes current once everything that may come now is in
(an emergency, a withdrawn bulletin, new text must not wait for the night), and items whose media
wait play from the window on. `health()` lists what waits and until when.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin

from agent.downloads import DownloadRules, Hold
from agent.limits import MAX_MANIFEST_BYTES
from agent.models import Manifest, ManifestRejected, ManifestSink, Media, ProblemSink, Room
from agent.sync.client import Backoff, ClientSettings, HostBackoff, HttpClient, SourceError
from agent.sync.download import Downloader, DownloadPaused, MediaFailure, PartialStore

log = logging.getLogger(__name__)

MEDIA_RETRY_BASE_S = 60.0
MEDIA_RETRY_CAP_S = 3600.0
SCREEN_TURN_RETRY_S = 5.0  # how soon media waiting for the screen to turn over look again (no poll)
PAUSE_ROUNDING = dt.timedelta(minutes=1)  # windows are whole minutes



class MediaSink(PartialStore, Protocol):
    def verified(self) -> frozenset[str]: ...
    def make_room_for(self, media: Media, limit: int, manifest: Manifest, current: Manifest | None,
                      on_screen: set[str]) -> Room: ...
    def flush_shown(self) -> None: ...
    def prune_partials(self, keep: set[str]) -> int: ...



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
    media_min_deadline_s: float = 120.0  # a media transfer may take at least this long, more for big files

    def client_settings(self) -> ClientSettings:
        return ClientSettings(self.base_url, self.token, self.ca_file, self.user_agent,
                              self.connect_timeout_s, self.read_timeout_s)

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/devices/{self.device_id}/manifest"


@dataclass(frozen=True)
class SyncOutcome:
    """One round: which media are still to come, and when the next media attempt is due."""

    waiting_media: tuple[str, ...] = ()  # media ids not yet in because of a transient failure
    retry_media_in_s: float | None = None
    held_media: tuple[str, ...] = ()  # media ids waiting for a download window (downloads.windows)


class HttpSource:
    """Owns the "http-source" thread: poll, download, switch; sleeps between with jitter."""

    name = "http-source"

    def __init__(
        self,
        settings: HttpSettings,
        content: ManifestSink,
        store: MediaSink,
        problems: ProblemSink,
        stop: threading.Event,
        on_change: Callable[[], None],
        media_order: Callable[[Manifest], Sequence[Media]],
        client: HttpClient,
        *,
        rng: random.Random,
        on_screen: Callable[[], set[str]] = set,
        prepare: Callable[[], bool] = lambda: False,
        mono: Callable[[], float] = time.monotonic,
        on_polled: Callable[[], None] = lambda: None,
        downloads: DownloadRules | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.settings = settings
        self.downloads = downloads or DownloadRules()  # replaced whole by a live config edit
        self._content = content
        self._store = store
        self._problems = problems
        self._stop = stop
        self._on_change = on_change
        self._media_order = media_order
        self._on_screen = on_screen  # sha256 of media being shown: never evicted
        self._prepare = prepare  # run first on the thread (restoring content); True = poll at once
        self._on_polled = on_polled  # the reporter: its round can share the connection the poll just used
        self._next_poll_at: float | None = None
        self._rng = rng
        self._mono = mono
        self._now = now  # the board's corrected clock: windows are wall-clock times
        self._held: dict[str, Hold] = {}  # media id → the window it waits for (this round's view)
        self._poll_backoff = Backoff(rng)
        self._hosts = HostBackoff(rng, mono)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = client
        self.downloader = Downloader(client, stop, lambda: self.settings.media_min_deadline_s)
        self._pending: tuple[Manifest, bytes, str | None] | None = None
        # sha256 → (back-off, monotonic time to try again): a 404 or wrong bytes are not fetched every poll.
        self._failed: dict[str, tuple[Backoff, float]] = {}
        self.last_sync_ok_at: float | None = None

    # --- thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def request_sync(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def blocked_in_network_io(self) -> bool:
        """True while the thread waits on a socket (a stalled 3G link can hold it up to the read
        timeout). Leaving it at shutdown is safe: partial files resume and only verified files show."""
        return self._thread is not None and self._thread.ident is not None and \
            self._client.blocked_in_network_io(self._thread.ident)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> dict[str, Any]:
        pending = self._pending
        return {
            "pending_manifest_serial": pending[0].serial if pending else None,
            "download": self.downloader.progress(),
            "held": [{"media": media_id, "bytes": hold.size, "until": hold.until.isoformat(timespec="minutes"),
                      "because": "downloads.windows"} for media_id, hold in dict(self._held).items()],
            "failures_in_a_row": self._poll_backoff.failures,
        }

    status = health

    def next_poll_in(self) -> float | None:
        """Seconds to the next manifest poll; None while a round is running (a download may take long)."""
        at = self._next_poll_at
        return None if at is None else max(0.0, at - self._mono())

    def busy(self) -> bool:
        """Content is on its way (a new manifest's media, a download running): other transfers wait."""
        return self._pending is not None or self.downloader.progress() is not None

    def _run(self) -> None:
        try:
            poll_now = self._prepare()
        except Exception:  # the cache could not be restored: start from nothing, keep the thread
            log.exception("restoring content failed")
            poll_now = True
        # A random first delay spreads a district's boards after a power cut comes back.
        first = 0.0 if poll_now else self._rng.uniform(0, min(10.0, self.settings.poll_interval_s / 10))
        self._next_poll_at = self._mono() + first
        self._wake.wait(first)
        poll_due = self._mono()
        while not self._stop.is_set():
            # A round polls the manifest when its interval is up or a sync was asked for; a media
            # retry (a back-off, a window opening, the screen turning over) in between only fetches:
            # on a SIM a poll costs half a kilobyte, so retries must not bring polls with them.
            poll = self._wake.is_set() or self._mono() >= poll_due
            self._wake.clear()
            try:
                outcome = self.sync_once(poll=poll)
                self._poll_backoff.reset()
                self._problems.resolve("source")
                if poll:
                    interval = self.settings.poll_interval_s
                    poll_due = self._mono() + self._rng.uniform(interval * 0.9, interval * 1.1)
                delay = poll_due - self._mono()
                if outcome.retry_media_in_s is not None:
                    delay = min(delay, max(1.0, outcome.retry_media_in_s))
            except SourceError as exc:
                delay = self._poll_backoff.next_delay(exc.retry_after)
                poll_due = self._mono() + delay
                self._problems.report("source", f"source {self.settings.base_url}: {exc}")
                log.info("next poll in %.0f s (failure %d in a row)", delay, self._poll_backoff.failures)
            except Exception:  # a bug must not end the thread: the board keeps trying
                log.exception("http source failed")
                delay = self._poll_backoff.next_delay()
                poll_due = self._mono() + delay
            self._next_poll_at = poll_due
            self._wake.wait(max(0.0, delay))

    # --- one round -------------------------------------------------------------------------------

    def sync_once(self, *, poll: bool = True) -> SyncOutcome:
        """Poll the manifest (unless `poll` is False), fetch what is missing, switch when ready.
        Raises SourceError for the poll."""
        if poll:
            self._poll_manifest()
        target = self._pending[0] if self._pending else self._content.current()
        if target is None:
            return SyncOutcome()
        outcome = self._fetch_media(target)
        current = self._content.current()
        self._store.prune_partials({m.sha256 for m in target.media} |
                                   ({m.sha256 for m in current.media} if current is not None else set()))
        if self._pending is not None and not outcome.waiting_media:
            # Everything is in, or failed for good (reported): switch.
            manifest, raw, etag = self._pending
            self._content.commit(manifest, raw, etag)
            self._pending = None
            self._on_change()
        self._store.flush_shown()
        return outcome

    def _poll_manifest(self) -> None:
        pending_etag = self._pending[2] if self._pending else None
        etag = pending_etag or self._content.etag
        headers = {"If-None-Match": etag} if etag else {}
        deadline = time.monotonic() + self.settings.manifest_deadline_s
        with self._client.get(self.settings.manifest_url, headers, self.settings.manifest_deadline_s,
                              kind="manifest") as reply:
            unchanged = reply.status_code == 304
            if not unchanged and reply.status_code != 200:
                raise self._client.http_error(reply, "manifest")
            raw = b"" if unchanged else self._client.read_limited(reply, MAX_MANIFEST_BYTES, deadline)
            new_etag = reply.headers.get("ETag")
        self.last_sync_ok_at = time.time()
        self._on_polled()  # the connection is back in the pool: the reporter's round can take it
        if unchanged:
            return
        try:
            manifest = self._content.offer(raw, self.settings.manifest_url)
        except ManifestRejected:
            return  # reported by the content; the current manifest plays on; retried at the next poll
        if manifest is None:
            self._pending = None
            self._content.remember_etag(new_etag)
            return
        self._failed.clear()
        if self._content.current() is None:
            # Nothing to keep playing: current at once; items become playable as their media arrive.
            self._content.commit(manifest, raw, new_etag)
            self._pending = None
            self._on_change()
        else:
            self._pending = (manifest, raw, new_etag)
            log.info("manifest serial %d accepted; fetching its media before switching", manifest.serial)

    # --- media -----------------------------------------------------------------------------------

    def _fetch_media(self, manifest: Manifest) -> SyncOutcome:
        """Download missing media one at a time in order of need; a failing host waits on its own."""
        waiting: list[str] = []
        held: dict[str, Hold] = {}
        now = self._mono()
        rules = self.downloads
        for media in self._media_order(manifest):
            if self._stop.is_set():
                waiting.append(media.id)
                break
            if media.sha256 in self._store.verified():
                self._problems.resolve(f"media:{media.id}")
                continue
            hold = rules.hold_media(manifest, media, self._now())
            if hold is not None:
                held[media.id] = hold
                self._problems.resolve(f"media:{media.id}")  # waiting for its window is not a fault
                continue
            failed = self._failed.get(media.sha256)
            if failed is not None and failed[1] > now:
                continue  # failed for good, its retry is not due yet
            url = urljoin(self.settings.manifest_url, media.url)
            if self._hosts.wait_s(url) > 0:
                waiting.append(media.id)
                continue
            try:
                if not self._make_room(manifest, media):
                    # The switch takes the old picture off the screen; this one follows it shortly.
                    self._problems.report(f"media:{media.id}", f"media {media.id}: waits for the media on screen "
                                          "to leave it: storage.cache_max_mb holds no more beside them")
                    self._failed[media.sha256] = (Backoff(self._rng, MEDIA_RETRY_BASE_S, MEDIA_RETRY_CAP_S),
                                                  self._mono() + SCREEN_TURN_RETRY_S)
                    continue
                self.downloader.fetch(media, url, self._store, f"media {media.id}",
                                      pause_after_s=rules.media_seconds_left(manifest, media, self._now()))
            except DownloadPaused as exc:
                log.info("%s", exc)
                # Paused in the window's last minute: a minute on, it has closed and the next one is known.
                hold = rules.hold_media(manifest, media, self._now() + PAUSE_ROUNDING)
                if hold is not None:
                    held[media.id] = hold
                else:
                    waiting.append(media.id)  # another window opens at once: the next round goes on
                continue
            except MediaFailure as exc:
                self._problems.report(f"media:{media.id}", str(exc))
                if exc.permanent:
                    self._failed_for_good(media)
                    continue
                self._hosts.failed(url, exc.retry_after)
                waiting.append(media.id)
                continue
            self._hosts.succeeded(url)
            self._failed.pop(media.sha256, None)
            self._problems.resolve(f"media:{media.id}")
            self._content.media_changed()
            self._on_change()
        self._held = held
        # Only retries this round could act on: a held, verified or no longer wanted file's due
        # time slips into the past unseen and would bring a round every second.
        retry_for = {m.sha256 for m in manifest.media if m.id not in held and m.sha256 not in self._store.verified()}
        retries = [until - self._mono() for sha, (_, until) in self._failed.items() if sha in retry_for]
        # A second into the window, so the next round finds it open.
        windows = [(hold.until - self._now()).total_seconds() + 1.0 for hold in held.values()]
        host_wait = self._hosts.earliest_s()
        candidates = [t for t in (*retries, *windows, host_wait) if t is not None]
        return SyncOutcome(tuple(waiting), max(0.0, min(candidates)) if candidates else None, tuple(held))

    def _failed_for_good(self, media: Media) -> None:
        backoff = self._failed[media.sha256][0] if media.sha256 in self._failed else \
            Backoff(self._rng, MEDIA_RETRY_BASE_S, MEDIA_RETRY_CAP_S)
        self._failed[media.sha256] = (backoff, self._mono() + backoff.next_delay())

    def _make_room(self, manifest: Manifest, media: Media) -> bool:
        """Room for `media` (MediaStore.make_room_for); False: once the media on screen have left it."""
        limit = self.settings.cache_limit_bytes
        room = self._store.make_room_for(media, limit, manifest, self._content.current(), self._on_screen())
        if room is Room.NEVER:
            raise MediaFailure(f"media {media.id}: {media.size} bytes do not fit in storage.cache_max_mb "
                       f"({limit // (1024 * 1024)} MiB) beside the media this manifest needs", permanent=True)
        return room is Room.MADE

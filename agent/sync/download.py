"""Resumable, verified downloads into a content-addressed store (media, release documents, wheels).

One file at a time per caller: `Range` + `If-Range` from the partial file, an overall deadline
(enough for the rest at 4 KB/s, at least the configured minimum), every byte already received kept
when the link drops, and the file visible only once the store has checked its SHA-256 and size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, Protocol

from agent.models import Media, MediaRejected
from agent.sync.client import HttpClient, SourceError
from agent.wire import TrafficKind

log = logging.getLogger(__name__)

MIN_MEDIA_RATE = 4 * 1024  # bytes/s a download must average before its overall deadline cuts it


class PartialStore(Protocol):
    def partial_size(self, sha256: str) -> int: ...
    def open_partial(self, sha256: str, *, append: bool) -> AbstractContextManager[BinaryIO]: ...
    def partial_validator(self, sha256: str) -> str | None: ...
    def set_partial_validator(self, sha256: str, validator: str | None) -> None: ...
    def discard_partial(self, sha256: str) -> None: ...
    def finish_partial(self, sha256: str, size: int, label: str) -> None: ...


class MediaFailure(Exception):
    """One file could not be fetched; str() is the whole message (it names the file)."""

    def __init__(self, message: str, *, permanent: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class DownloadPaused(MediaFailure):
    """A large download reached the end of its download window (`downloads.windows`): its bytes
    are kept and it resumes in the next window. Not a failure of the host: no back-off."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


class Downloader:
    def __init__(self, client: HttpClient, stop: threading.Event, min_deadline_s: Callable[[], float]) -> None:
        self._client = client
        self._stop = stop
        self._min_deadline_s = min_deadline_s
        self._progress: dict[str, Any] | None = None
        self.bytes_received = 0  # body bytes, for the data meter and the benchmarks

    def progress(self) -> dict[str, Any] | None:
        progress = self._progress
        return dict(progress) if progress else None

    def fetch(self, media: Media, url: str, store: PartialStore, label: str, *, kind: TrafficKind = "media",
              pause_after_s: float | None = None) -> None:
        """Download (or resume) `media` from `url` into `store`; MediaFailure says why not. `kind`
        names the bytes in the data meter (agent releases are `update`); after `pause_after_s` the
        transfer pauses, keeping its bytes (DownloadPaused): its download window has closed."""
        stop_at = None if pause_after_s is None else time.monotonic() + pause_after_s
        sha = media.sha256
        have = store.partial_size(sha)
        validator = store.partial_validator(sha)
        if have > media.size or (have and not validator):
            store.discard_partial(sha)  # more than declared, or bytes we cannot prove belong together
            have = 0
        if have == media.size:
            self._finish(media, store, label)
            return
        headers = {"Range": f"bytes={have}-", "If-Range": validator} if have and validator else {}
        deadline_s = max(self._min_deadline_s(), (media.size - have) / MIN_MEDIA_RATE)
        deadline = time.monotonic() + deadline_s
        log.info("downloading %s (%d bytes%s)", label, media.size, f", resuming at {have}" if have else "")
        try:
            with self._client.get(url, headers, deadline_s, kind=kind) as reply:
                if reply.status_code == 416:
                    store.discard_partial(sha)  # the server says our offset is past its file: start over
                    raise SourceError("416 Range Not Satisfiable: restarting the download")
                if reply.status_code == 206:
                    if not _content_range_starts_at(reply.headers.get("Content-Range"), have):
                        store.discard_partial(sha)
                        raise SourceError(f"206 for the wrong range ({reply.headers.get('Content-Range')})")
                    append = True
                elif reply.status_code == 200:
                    have, append = 0, False  # the file changed (If-Range failed) or ranges are not supported
                else:
                    raise self._client.http_error(reply, "")
                store.set_partial_validator(sha, reply.headers.get("ETag"))
                have = self._receive(media, store, self._client.chunks(reply, deadline, self._stop), have, append,
                                     stop_at)
        except SourceError as exc:
            raise MediaFailure(f"{label}: {exc}", permanent=exc.permanent, retry_after=exc.retry_after) from None
        except OSError as exc:
            raise MediaFailure(f"{label}: cannot write the partial file: {exc.strerror or exc}", permanent=False) from None
        finally:
            self._progress = None
        if have < media.size and stop_at is not None and time.monotonic() >= stop_at:
            raise DownloadPaused(f"{label}: its download window closed at {have} of {media.size} bytes; "
                                 "resumes in the next one")
        if have < media.size:
            raise MediaFailure(f"{label}: transfer ended at {have} of {media.size} bytes; will resume", permanent=False)
        self._finish(media, store, label)

    def _receive(self, media: Media, store: PartialStore, chunks: Iterator[bytes], have: int, append: bool,
                 stop_at: float | None) -> int:
        started, started_at = have, time.monotonic()
        with store.open_partial(media.sha256, append=append) as out:
            for chunk in chunks:
                have += len(chunk)
                if have > media.size:
                    out.close()
                    store.discard_partial(media.sha256)
                    raise SourceError(f"the server sent more than the declared {media.size} bytes", permanent=True)
                out.write(chunk)
                self.bytes_received += len(chunk)
                rate = (have - started) / max(1e-3, time.monotonic() - started_at)
                self._progress = {"media": media.id, "bytes_done": have, "bytes_total": media.size,
                                  "eta_s": round((media.size - have) / rate) if rate > 0 else None}
                if stop_at is not None and time.monotonic() >= stop_at:
                    break  # the window has closed: the rest would cost the day's tariff
        return have

    def _finish(self, media: Media, store: PartialStore, label: str) -> None:
        try:
            store.finish_partial(media.sha256, media.size, label)
        except MediaRejected as exc:  # wrong bytes are thrown away, never shown
            raise MediaFailure(str(exc), permanent=True) from None
        except OSError as exc:
            raise MediaFailure(f"{label}: cannot store it: {exc.strerror or exc}", permanent=False) from None
        log.info("%s verified (%d bytes)", label, media.size)


def _content_range_starts_at(value: str | None, start: int) -> bool:
    return bool(value) and value.replace("bytes ", "").split("-", 1)[0].strip() == str(start)  # type: ignore[union-attr]

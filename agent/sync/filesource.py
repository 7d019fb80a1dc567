"""The `file://` source (PROTOCOL.md §1): a folder with `manifest.json` and the media it names.

For communes with no link: a technician copies a folder over SSH or from a USB stick. The folder
is watched (watchdog/inotify) and re-read within 2 s of a change; a stat check every few seconds
is the safety net for what inotify misses (a remounted stick, a folder that appears later).

Only regular files are read, never through a link (O_NOFOLLOW) and never a FIFO or device (opened
non-blocking, then checked), and never more than the manifest limit or a media's declared size:
a stick with `manifest.json` → /dev/zero cannot block the board or fill its memory. The cache
quota (`storage.cache_max_mb`) holds here as for HTTP.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from agent.limits import MAX_MANIFEST_BYTES
from agent.models import Manifest, ManifestRejected, ManifestSink, Media, MediaRejected, ProblemSink, Room
from agent.watching import start_watching, stop_watching

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SETTLE_S = 0.3  # let a copy finish writing before reading; well inside the 2 s promise
SAFETY_CHECK_S = 5.0



class MediaSink(Protocol):
    """The cache's side (agent/cache/store.py)."""

    def verified(self) -> frozenset[str]: ...
    def import_stream(self, source: BinaryIO, sha256: str, size: int, label: str) -> None: ...
    def make_room_for(self, media: Media, limit: int, manifest: Manifest, current: Manifest | None,
                      on_screen: set[str]) -> Room: ...
    def flush_shown(self) -> None: ...



class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("opened", "closed_no_write"):
            self._wake.set()


def resolve_local_media(folder: Path, media: Media) -> Path:
    """The file a media url names inside the folder; MediaRejected if it would leave the folder.

    The folders on the way are resolved (a sub-folder link inside the folder is fine); the file
    itself is opened with O_NOFOLLOW later, so it cannot be a link at all.
    """
    parts = urlsplit(media.url)
    if parts.scheme or parts.netloc:
        raise MediaRejected(f"media {media.id}: {media.url!r} is not a path inside the folder "
                            "(a file:// source has no network)")
    relative = unquote(parts.path).lstrip("/")
    candidate = folder / relative
    root = folder.resolve()
    parent = candidate.parent.resolve()
    if parent != root and root not in parent.parents:
        raise MediaRejected(f"media {media.id}: {media.url!r} leads outside {root}")
    return parent / candidate.name


def open_regular_file(path: Path) -> BinaryIO:
    """A regular file for reading: never through a link, never blocking on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a link; only regular files are read from the folder") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "it is not a regular file (a FIFO, device or folder)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_capped(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; OSError when it is longer (or not a regular file)."""
    with open_regular_file(path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} is larger than the limit of {limit} bytes")
    return data


class FileSource:
    """Owns one thread ("file-source") that re-reads the folder when told or when it changes."""

    name = "file-source"

    def __init__(
        self,
        folder: Path,
        content: ManifestSink,
        store: MediaSink,
        problems: ProblemSink,
        stop: threading.Event,
        on_change: Callable[[], None],
        *,
        cache_limit_bytes: int,
        on_screen: Callable[[], set[str]] = set,
        prepare: Callable[[], bool] = lambda: False,
    ) -> None:
        self.folder = folder
        self._content = content
        self._store = store
        self._problems = problems
        self._stop = stop
        self._on_change = on_change
        self._cache_limit_bytes = cache_limit_bytes
        self._on_screen = on_screen
        self._prepare = prepare
        self._wake = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None
        self._seen_signature: tuple[int, int, int] | None = None
        self._current: Manifest | None = None
        self._failed_files: dict[str, tuple[int, int, int] | None] = {}  # sha256 → stat of the file that failed
        self.last_sync_ok_at: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._wake.set()

    def request_sync(self) -> None:
        """Re-read now (the `sync` command), even if nothing seems to have changed."""
        self._seen_signature = None
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._wake.set()
        stop_watching(self._observer, timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def health(self) -> dict[str, object]:
        return {"folder": str(self.folder)}

    status = health

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _ensure_watch(self) -> None:
        if self._observer is not None or not self.folder.is_dir():
            return
        self._observer = start_watching(self.folder, _Wake(self._wake), "file-source-watch", recursive=True)

    def _run(self) -> None:
        try:
            self._prepare()
        except Exception:  # the cache could not be restored: start from nothing, keep the thread
            log.exception("restoring content failed")
        while not self._stop.is_set():
            self._ensure_watch()
            try:
                self.check()
            except Exception:  # a bug here must not end the source thread: keep trying
                log.exception("file source check failed")
            self._wake.wait(SAFETY_CHECK_S)
            if self._stop.is_set():
                break
            if self._wake.is_set():
                # Collapse a burst of events (a copy writes many times) into one read.
                while self._wake.is_set() and not self._stop.is_set():
                    self._wake.clear()
                    self._stop.wait(SETTLE_S)

    def check(self) -> None:
        """Read the folder if its manifest changed; fetch media still missing."""
        manifest_path = self.folder / MANIFEST_NAME
        try:
            found = manifest_path.lstat()
        except FileNotFoundError:
            self._problems.report("source", f"source folder has no {MANIFEST_NAME}: {manifest_path}")
            return
        except OSError as exc:
            self._problems.report("source", f"cannot read {manifest_path}: {exc.strerror}")
            return
        signature = (found.st_ino, found.st_mtime_ns, found.st_size)
        if signature != self._seen_signature:
            self._read_manifest(manifest_path, signature)
        if self._current is not None:
            self._import_missing(self._current)
        self._store.flush_shown()

    def _read_manifest(self, manifest_path: Path, signature: tuple[int, int, int]) -> None:
        try:
            raw = read_capped(manifest_path, MAX_MANIFEST_BYTES)
        except OSError as exc:
            self._problems.report("source", f"cannot read {manifest_path}: {exc.strerror or exc}")
            self._seen_signature = signature  # read again when it changes, not every few seconds
            return
        self._problems.resolve("source")
        try:
            manifest = self._content.offer(raw, str(manifest_path))
        except ManifestRejected:
            self._seen_signature = signature  # reported by the content; re-read when the file changes
            return
        self.last_sync_ok_at = time.time()
        if manifest is None:
            self._seen_signature = signature
            self._current = self._content.current()
            return
        # Media first, then the switch: the new items arrive playable, the old ones play meanwhile.
        self._import_missing(manifest)
        try:
            self._content.commit(manifest, raw)
        except OSError as exc:
            # Disk full or read-only storage: keep the old content, try again at the next check.
            self._problems.report("storage", f"cannot store manifest serial {manifest.serial}: {exc.strerror or exc}")
            return
        self._problems.resolve("storage")
        self._seen_signature = signature
        self._current = manifest
        self._on_change()

    def _import_missing(self, manifest: Manifest) -> None:
        verified = self._store.verified()
        changed = False
        for media in manifest.media:
            if media.sha256 in verified:
                self._problems.resolve(f"media:{media.id}")
                self._failed_files.pop(media.sha256, None)
                continue
            try:
                path = resolve_local_media(self.folder, media)
                file_signature = _signature(path)
                if self._failed_files.get(media.sha256) == file_signature:
                    continue  # the same wrong file again: copying and hashing it would only wear the card
                if not self._make_room(manifest, media):
                    # Looked at again at the next check (SAFETY_CHECK_S), once the switch has turned the screen.
                    self._problems.report(f"media:{media.id}", f"media {media.id}: waits for the media on screen "
                                          "to leave it: storage.cache_max_mb holds no more beside them")
                    continue
                with open_regular_file(path) as handle:
                    self._store.import_stream(handle, media.sha256, media.size, f"media {media.id} ({media.url})")
            except FileNotFoundError:
                self._problems.report(f"media:{media.id}", f"media {media.id}: {media.url} not found in {self.folder}")
                continue
            except MediaRejected as exc:
                self._problems.report(f"media:{media.id}", str(exc))
                self._failed_files[media.sha256] = _signature_or_none(media, self.folder)
                continue
            except OSError as exc:
                self._problems.report(f"media:{media.id}", f"media {media.id}: cannot read {media.url}: "
                                                           f"{exc.strerror or exc}")
                self._failed_files[media.sha256] = _signature_or_none(media, self.folder)
                continue
            self._problems.resolve(f"media:{media.id}")
            changed = True
        if changed:
            self._content.media_changed()
            self._on_change()


    def _make_room(self, manifest: Manifest, media: Media) -> bool:
        """Room for `media` (MediaStore.make_room_for); False: once the media on screen have left it."""
        limit = self._cache_limit_bytes
        room = self._store.make_room_for(media, limit, manifest, self._content.current(), self._on_screen())
        if room is Room.NEVER:
            raise MediaRejected(f"media {media.id}: {media.size} bytes do not fit in storage.cache_max_mb "
                        f"({limit // (1024 * 1024)} MiB) beside the media this manifest needs")
        return room is Room.MADE


def _signature(path: Path) -> tuple[int, int, int]:
    found = path.lstat()
    return (found.st_ino, found.st_mtime_ns, found.st_size)


def _signature_or_none(media: Media, folder: Path) -> tuple[int, int, int] | None:
    """The failed file's stat, so it is retried only once it changes; None (retry) if unknowable."""
    try:
        return _signature(resolve_local_media(folder, media))
    except (OSError, MediaRejected):
        return None

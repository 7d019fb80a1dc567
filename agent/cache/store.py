"""Content-addressed media store: `<dir>/<sha256>`, visible only once its SHA-256 and size match.

Files arrive through a partial file that is hashed as it is written, fsynced, renamed into place
and the directory fsynced, so a power cut leaves either nothing or a complete verified file.
Partials are opened with O_NOFOLLOW (and O_EXCL when new): a link planted in `partial/` cannot
make the board write or read anywhere else. Files take the process's umask.

The quota (`cache_max_mb`) evicts the least recently *shown* media first. The display thread marks
a showing with `touch`, which only writes to memory; the time reaches the file's mtime (and so
survives a restart) when the source thread next makes room or calls `flush_shown`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from agent.files import fsync_dir
from agent.models import Manifest, Media, MediaRejected, Room

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class MediaError(MediaRejected):
    """A media file could not be taken in; str() says which and why."""


def open_regular(path: Path, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """os.open that refuses links (O_NOFOLLOW), FIFOs and devices (never blocks on them)."""
    fd = os.open(path, flags | NOFOLLOW | os.O_NONBLOCK, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(open_regular(path), "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _real_directory(path: Path) -> None:
    """Create `path` as a directory; a link or file planted in its place is removed first."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        path.mkdir(parents=True)
        return
    if stat.S_ISDIR(found.st_mode):
        return
    log.warning("cache: %s was not a directory (mode %o): replaced", path, found.st_mode)
    path.unlink()
    path.mkdir()

MAX_PARTIAL_ENTRIES = 4096  # entries looked at per prune: a planted million costs one bounded read


class MediaStore:
    """The verified media on disk. Thread-safe: sources add, the display reads and touches."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial_dir = root / "partial"
        self._lock = threading.Lock()
        self._verified: set[str] = set()
        self._sizes: dict[str, int] = {}  # every complete file on disk, verified or not yet re-checked
        self._shown: dict[str, float] = {}  # sha → wall time last shown, not yet written to the file

    def open(self) -> None:
        _real_directory(self.root)
        _real_directory(self.partial_dir)
        sizes = {}
        for entry in os.scandir(self.root):
            if len(entry.name) == 64 and entry.is_file(follow_symlinks=False):
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
        with self._lock:
            self._sizes = sizes

    def path_for(self, sha256: str) -> str | None:
        with self._lock:
            return str(self.root / sha256) if sha256 in self._verified else None

    def verified(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._verified)

    def has_file(self, sha256: str) -> bool:
        """A complete file is on disk (verified, or waiting to be re-checked after a restart)."""
        with self._lock:
            return sha256 in self._sizes

    def verify_existing(self, wanted: Iterable[tuple[str, int]]) -> list[str]:
        """Re-hash files already on disk (after a restart or power cut); remove bad ones.

        Returns the sha256 of files that were present but corrupt.
        """
        corrupt = []
        for sha256, size in wanted:
            with self._lock:
                if sha256 in self._verified or sha256 not in self._sizes:
                    continue
            path = self.root / sha256
            try:
                actual, actual_size = sha256_of(path)
            except OSError:
                actual, actual_size = "", -1
            if actual == sha256 and actual_size == size:
                with self._lock:
                    self._verified.add(sha256)
            else:
                log.warning("cached media %s is corrupt (sha256 %s, %d bytes): removed", sha256, actual, actual_size)
                self._remove(sha256)
                corrupt.append(sha256)
        return corrupt

    def _remove(self, sha256: str) -> None:
        (self.root / sha256).unlink(missing_ok=True)
        with self._lock:
            self._verified.discard(sha256)
            self._sizes.pop(sha256, None)
            self._shown.pop(sha256, None)

    def _publish(self, partial: Path, sha256: str, size: int) -> None:
        os.replace(partial, self.root / sha256)
        fsync_dir(self.root)
        with self._lock:
            self._verified.add(sha256)
            self._sizes[sha256] = size

    def import_stream(self, source: BinaryIO, sha256: str, size: int, label: str) -> None:
        """Copy bytes into the store, verifying size and SHA-256 before the file becomes visible."""
        with self._lock:
            if sha256 in self._verified:
                return
        partial = self.partial_dir / f"{sha256}.part"
        partial.unlink(missing_ok=True)
        digest = hashlib.sha256()
        written = 0
        try:
            with os.fdopen(open_regular(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as out:
                # Read one byte past the declared size: a longer file is wrong, not truncated.
                while chunk := source.read(min(CHUNK, size + 1 - written)):
                    written += len(chunk)
                    if written > size:
                        raise MediaError(f"{label}: larger than the declared {size} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if written != size:
                raise MediaError(f"{label}: {written} bytes, the manifest declares {size}")
            if digest.hexdigest() != sha256:
                raise MediaError(f"{label}: SHA-256 {digest.hexdigest()} does not match the manifest's {sha256}")
            self._publish(partial, sha256, size)
        finally:
            partial.unlink(missing_ok=True)

    # --- resumable downloads (the HTTP source writes, the store verifies) -----------------------

    def partial_path(self, sha256: str) -> Path:
        return self.partial_dir / f"{sha256}.download"

    def partial_size(self, sha256: str) -> int:
        try:
            found = self.partial_path(sha256).lstat()
        except FileNotFoundError:
            return 0
        if not stat.S_ISREG(found.st_mode):
            self.discard_partial(sha256)  # not ours: a link or a FIFO planted there
            return 0
        return found.st_size

    @contextlib.contextmanager
    def open_partial(self, sha256: str, *, append: bool) -> Iterator[BinaryIO]:
        """The download's partial file, to append to (resume) or to start afresh."""
        path = self.partial_path(sha256)
        if append:
            fd = open_regular(path, os.O_WRONLY | os.O_APPEND)
        else:
            path.unlink(missing_ok=True)
            fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "ab" if append else "wb") as handle:
            yield handle

    def partial_validator(self, sha256: str) -> str | None:
        """The ETag the partial bytes came with, for `If-Range` (None: resume is not safe)."""
        try:
            with os.fdopen(open_regular(self.partial_dir / f"{sha256}.validator"), "rb") as handle:
                text = handle.read(1024).decode("utf-8", "replace").strip()
        except OSError:
            return None
        return text or None

    def set_partial_validator(self, sha256: str, validator: str | None) -> None:
        path = self.partial_dir / f"{sha256}.validator"
        path.unlink(missing_ok=True)
        if validator:
            with os.fdopen(open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as handle:
                handle.write(validator[:1024].encode("utf-8", "replace"))

    def prune_partials(self, keep: set[str]) -> int:
        """Remove partial downloads of media no manifest needs any more (a power cut or a replaced
        manifest leaves them: 24 after 20 power cuts in the system test), and every unfinished
        local copy (`.part`: never resumed). Returns the bytes freed; bounded to one directory read."""
        freed = 0
        try:
            with os.scandir(self.partial_dir) as entries:
                found = [(entry.name, entry) for entry in itertools.islice(entries, MAX_PARTIAL_ENTRIES)]
        except OSError:
            return 0
        for name, entry in found:
            sha, _, suffix = name.partition(".")
            if suffix in ("download", "validator") and sha in keep:
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.path)
            except OSError:
                continue
            freed += size
            log.info("cache: removed the unfinished %s (%d bytes): no manifest needs it", name[:24], size)
        return freed

    def discard_partial(self, sha256: str) -> None:
        self.partial_path(sha256).unlink(missing_ok=True)
        (self.partial_dir / f"{sha256}.validator").unlink(missing_ok=True)

    def finish_partial(self, sha256: str, size: int, label: str) -> None:
        """Verify a completed download and make it visible; a wrong file is discarded, never shown."""
        partial = self.partial_path(sha256)
        try:
            actual, actual_size = sha256_of(partial)
            if actual_size != size:
                raise MediaError(f"{label}: {actual_size} bytes, the manifest declares {size}")
            if actual != sha256:
                raise MediaError(f"{label}: SHA-256 {actual} does not match the manifest's {sha256}")
            with os.fdopen(open_regular(partial), "rb") as handle:
                os.fsync(handle.fileno())
            self._publish(partial, sha256, size)
        except BaseException:
            self.discard_partial(sha256)
            raise
        (self.partial_dir / f"{sha256}.validator").unlink(missing_ok=True)

    # --- quota ------------------------------------------------------------------------------------

    def bytes_used(self) -> int:
        """Bytes of complete media files on disk (verified or not yet re-checked); no disk access."""
        with self._lock:
            return sum(self._sizes.values())

    def touch(self, sha256: str, when: float | None = None) -> None:
        """Mark media as just shown. Memory only: safe and instant on the display thread."""
        self._shown[sha256] = time.time() if when is None else when

    def flush_shown(self) -> None:
        """Write the last-shown times to the files' mtimes (the eviction order across restarts)."""
        pending, self._shown = self._shown, {}
        for sha, when in list(pending.items()):  # list(): one step, a late touch cannot break the loop
            try:
                os.utime(self.root / sha, (when, when), follow_symlinks=False)
            except OSError:
                pass

    def make_room_for(self, media: Media, limit: int, manifest: Manifest, current: Manifest | None,
                      on_screen: set[str]) -> Room:
        """Room for `manifest`'s new file `media`: first from media neither it nor the one in force
        (`current`) needs, then from the current one's, never from what is on screen. A turnover to a
        manifest that fills the cache on its own can only finish once the old picture has left the
        screen: that is Room.AFTER_SCREEN_CHANGES, not a failure."""
        # The screen is never robbed: after the switch `old` is the new manifest itself, and the
        # picture still on screen belongs to neither.
        size, needed = media.size, {m.sha256 for m in manifest.media}
        old = {m.sha256 for m in current.media} if current is not None else set()
        if self.make_room(size, limit, needed | old | on_screen) or self.make_room(size, limit, needed | on_screen):
            return Room.MADE
        if self._would_fit(size, limit, needed):
            return Room.AFTER_SCREEN_CHANGES
        return Room.NEVER

    def _would_fit(self, needed: int, limit: int, keep: set[str]) -> bool:
        with self._lock:
            return sum(size for sha, size in self._sizes.items() if sha in keep) + needed <= limit

    def make_room(self, needed: int, limit: int, keep: set[str]) -> bool:
        """Evict least recently shown media outside `keep` until `needed` more bytes fit under `limit`.

        Returns False when even evicting everything allowed would not make room.
        """
        with self._lock:
            used = sum(self._sizes.values())
            candidates = [sha for sha in self._sizes if sha not in keep]
        if used + needed <= limit:
            return True
        if used + needed - sum(self._sizes.get(sha, 0) for sha in candidates) > limit:
            return False  # nothing is removed when removing all it may would still not be enough
        self.flush_shown()
        for sha in sorted(candidates, key=self._last_shown):
            size = self._sizes.get(sha, 0)
            self._remove(sha)
            log.info("cache: evicted %s (%d bytes) to stay under %d bytes", sha[:12], size, limit)
            used -= size
            if used + needed <= limit:
                return True
        return used + needed <= limit

    def _last_shown(self, sha256: str) -> float:
        try:
            return (self.root / sha256).lstat().st_mtime
        except OSError:
            return 0.0

    def import_file(self, path: Path, sha256: str, size: int, label: str) -> None:
        try:
            with os.fdopen(open_regular(path), "rb") as handle:
                self.import_stream(handle, sha256, size, label)
        except OSError as exc:
            raise MediaError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None

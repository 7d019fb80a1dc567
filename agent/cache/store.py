"""Content-addressed media store: `<dir>/<sha256>`, visible only once its SHA-256 and size match.

Files arrive through a partial file that is hashed as it is written, fsynced, renamed into place
and the directory fsynced, so a power cut leaves either nothing or a complete verified file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from agent.files import fsync_dir

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


class MediaError(ValueError):
    """A media file could not be taken in; str() says which and why."""


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class MediaStore:
    """The verified media on disk. Thread-safe: sources add, the display reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial_dir = root / "partial"
        self._lock = threading.Lock()
        self._verified: set[str] = set()

    def open(self) -> None:
        self.partial_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> str | None:
        with self._lock:
            return str(self.root / sha256) if sha256 in self._verified else None

    def verified(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._verified)

    def verify_existing(self, wanted: Iterable[tuple[str, int]]) -> list[str]:
        """Re-hash files already on disk (after a restart or power cut); remove bad ones.

        Returns the sha256 of files that were present but corrupt.
        """
        corrupt = []
        for sha256, size in wanted:
            with self._lock:
                if sha256 in self._verified:
                    continue
            path = self.root / sha256
            if not path.is_file():
                continue
            actual, actual_size = sha256_of(path)
            if actual == sha256 and actual_size == size:
                with self._lock:
                    self._verified.add(sha256)
            else:
                log.warning("cached media %s is corrupt (sha256 %s, %d bytes): removed", sha256, actual, actual_size)
                path.unlink(missing_ok=True)
                corrupt.append(sha256)
        return corrupt

    def import_stream(self, source: BinaryIO, sha256: str, size: int, label: str) -> None:
        """Copy bytes into the store, verifying size and SHA-256 before the file becomes visible."""
        with self._lock:
            if sha256 in self._verified:
                return
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        partial = self.partial_dir / f"{sha256}.part"
        digest = hashlib.sha256()
        written = 0
        try:
            with partial.open("wb") as out:
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
            os.replace(partial, self.root / sha256)
            fsync_dir(self.root)
        finally:
            partial.unlink(missing_ok=True)
        with self._lock:
            self._verified.add(sha256)

    # --- resumable downloads (the HTTP source writes, the store verifies) -----------------------

    def partial_path(self, sha256: str) -> Path:
        return self.partial_dir / f"{sha256}.download"

    def partial_size(self, sha256: str) -> int:
        try:
            return self.partial_path(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def partial_validator(self, sha256: str) -> str | None:
        """The ETag the partial bytes came with, for `If-Range` (None: resume is not safe)."""
        try:
            return (self.partial_dir / f"{sha256}.validator").read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def set_partial_validator(self, sha256: str, validator: str | None) -> None:
        path = self.partial_dir / f"{sha256}.validator"
        if validator:
            path.write_text(validator, encoding="utf-8")
        else:
            path.unlink(missing_ok=True)

    def discard_partial(self, sha256: str) -> None:
        self.partial_path(sha256).unlink(missing_ok=True)
        self.set_partial_validator(sha256, None)

    def finish_partial(self, sha256: str, size: int, label: str) -> None:
        """Verify a completed download and make it visible; a wrong file is discarded, never shown."""
        partial = self.partial_path(sha256)
        try:
            actual, actual_size = sha256_of(partial)
            if actual_size != size:
                raise MediaError(f"{label}: {actual_size} bytes, the manifest declares {size}")
            if actual != sha256:
                raise MediaError(f"{label}: SHA-256 {actual} does not match the manifest's {sha256}")
            with partial.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, self.root / sha256)
            fsync_dir(self.root)
        except BaseException:
            self.discard_partial(sha256)
            raise
        self.set_partial_validator(sha256, None)
        with self._lock:
            self._verified.add(sha256)

    # --- quota ------------------------------------------------------------------------------------

    def bytes_used(self) -> int:
        """Bytes of complete media files on disk (verified or not yet re-checked)."""
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[str, int, float]]:
        entries = []
        for path in self.root.iterdir():
            if path.is_file() and len(path.name) == 64:
                stat = path.stat()
                entries.append((path.name, stat.st_size, stat.st_mtime))
        return entries

    def make_room(self, needed: int, limit: int, keep: set[str]) -> bool:
        """Evict least recently used media outside `keep` until `needed` more bytes fit under `limit`.

        Returns False when even evicting everything allowed would not make room.
        """
        files = self._files()
        used = sum(size for _, size, _ in files)
        if used + needed <= limit:
            return True
        for sha, size, _ in sorted((f for f in files if f[0] not in keep), key=lambda f: f[2]):
            (self.root / sha).unlink(missing_ok=True)
            with self._lock:
                self._verified.discard(sha)
            log.info("cache: evicted %s (%d bytes) to stay under %d bytes", sha[:12], size, limit)
            used -= size
            if used + needed <= limit:
                return True
        return False

    def touch(self, sha256: str) -> None:
        """Mark media as just shown (eviction takes the least recently shown first)."""
        try:
            os.utime(self.root / sha256)
        except OSError:
            pass

    def import_file(self, path: Path, sha256: str, size: int, label: str) -> None:
        try:
            with path.open("rb") as handle:
                self.import_stream(handle, sha256, size, label)
        except OSError as exc:
            raise MediaError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None

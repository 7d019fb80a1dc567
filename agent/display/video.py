"""Video items: decode on a worker thread, present on the display thread at each frame's time.

The backend interface is small on purpose (`VideoBackend.open` → `VideoPlayback`), so a hardware
path (mpv/libmpv on a Pi 4, which decodes H.264 in hardware) can be added later without touching
the player or the renderer. The PyAV backend here decodes in-process: FFmpeg's scaler makes each
frame the zone's size (not pygame's), frames travel through a small bounded queue, and the display
thread shows the latest frame that is due on the monotonic clock, dropping late ones rather than
drifting. Audio is not played: bulletin boards are muted by default.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import pygame

# PyAV (FFmpeg's libraries, ~25 MB resident and a few hundred ms to load) is imported on the first
# video, not at start-up: most boards show images and text, and start faster and smaller without it.

log = logging.getLogger(__name__)

QUEUE_FRAMES = 4  # ~130 ms at 30 fps: enough to ride out a slow frame, small enough for a Pi's memory
FIRST_FRAME_TIMEOUT_S = 5.0
SLOW_AFTER_S = 3.0  # judge whether the board keeps up only after this much playback
SLOW_RATIO = 0.8  # presenting fewer than this share of the video's frames is "cannot keep up"


class VideoError(Exception):
    """The file cannot be played (corrupt, truncated, unsupported); str() says why."""


@dataclass
class VideoStats:
    presented: int = 0
    dropped: int = 0
    decoded: int = 0
    started_mono: float | None = None
    stream_fps: float | None = None

    def measured_fps(self, now: float) -> float | None:
        if self.started_mono is None or now - self.started_mono < 1e-3:
            return None
        return self.presented / (now - self.started_mono)


class VideoPlayback(Protocol):
    """One showing of one file, already sized for the zone."""

    size: tuple[int, int]
    stats: VideoStats

    def start(self, loop_for_s: float | None) -> None: ...
    def frame(self, now: float) -> pygame.Surface | None: ...
    def next_due(self) -> float | None: ...
    def finished(self) -> bool: ...
    def error(self) -> str | None: ...
    def close(self) -> None: ...


class VideoBackend(Protocol):
    def open(self, path: str, zone: tuple[int, int]) -> VideoPlayback: ...


def fit_size(source: tuple[int, int], zone: tuple[int, int]) -> tuple[int, int]:
    """Inside the zone with the video's aspect ratio; even numbers, as scalers and YUV like them."""
    scale = min(zone[0] / source[0], zone[1] / source[1])
    return max(2, int(source[0] * scale) // 2 * 2), max(2, int(source[1] * scale) // 2 * 2)


@dataclass
class _Decoded:
    pts_s: float
    pixels: bytes


@dataclass
class PyAVPlayback:
    path: str
    size: tuple[int, int]
    duration_s: float | None
    stats: VideoStats = field(default_factory=VideoStats)

    def __post_init__(self) -> None:
        self._queue: queue.Queue[_Decoded | None] = queue.Queue(maxsize=QUEUE_FRAMES)
        self._stop = threading.Event()
        self._error: str | None = None
        self._ended = threading.Event()  # the decoder has put its last frame
        self._thread: threading.Thread | None = None
        self._loop_for_s: float | None = None
        self._head: _Decoded | None = None
        self._clock_start: float | None = None  # monotonic time of pts 0
        self._done = False

    # --- decoder thread --------------------------------------------------------------------------

    def prefetch(self) -> None:
        """Start decoding now (the item is next): its first frames wait in the queue."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._decode, name="video-decode", daemon=True)
            self._thread.start()

    def start(self, loop_for_s: float | None) -> None:
        """`loop_for_s`: the item's duration_s when set (the video loops until then); None = play once."""
        self._loop_for_s = loop_for_s
        self.prefetch()

    def _put(self, item: _Decoded | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self) -> None:
        import av

        offset = 0.0
        try:
            while not self._stop.is_set():
                last_pts = self._decode_once(offset)
                if self._loop_for_s is None or last_pts is None or offset + last_pts >= self._loop_for_s:
                    break
                offset += max(last_pts + (1 / (self.stats.stream_fps or 25)), 1e-3)  # the next pass starts after it
        except VideoError as exc:
            self._error = str(exc)
        except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
            self._error = f"cannot decode video: {exc}"
        finally:
            self._ended.set()
            self._put(None)

    def _decode_once(self, offset: float) -> float | None:
        import av

        last = None
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if stream.average_rate:
                self.stats.stream_fps = float(stream.average_rate)
            width, height = self.size
            for frame in container.decode(stream):
                if self._stop.is_set():
                    return last
                pts = float(frame.time) if frame.time is not None else (last or 0.0) + 1 / (self.stats.stream_fps or 25)
                image = frame.reformat(width=width, height=height, format="rgb24")
                plane = image.planes[0]
                data = bytes(plane)
                if plane.line_size != width * 3:  # rows padded for alignment: keep only the pixels
                    data = b"".join(data[row * plane.line_size: row * plane.line_size + width * 3] for row in range(height))
                self.stats.decoded += 1
                last = pts
                if not self._put(_Decoded(offset + pts, data)):
                    return last
        if last is None:
            raise VideoError("the file has no video frames")
        return last

    # --- display thread ---------------------------------------------------------------------------

    def frame(self, now: float) -> pygame.Surface | None:
        """The newest frame due by `now` (older due ones are dropped), or None when none is new."""
        shown: _Decoded | None = None
        while True:
            head = self._head
            if head is None:
                try:
                    head = self._queue.get_nowait()
                except queue.Empty:
                    break
                if head is None:
                    self._done = True
                    break
                self._head = head
            if self._clock_start is None:
                self._clock_start = now - head.pts_s
                self.stats.started_mono = now
            if self._clock_start + head.pts_s > now:
                break
            if shown is not None:
                self.stats.dropped += 1
            shown, self._head = head, None
        if shown is None:
            return None
        self.stats.presented += 1
        return pygame.image.frombuffer(shown.pixels, self.size, "RGB")

    def next_due(self) -> float | None:
        if self._head is None or self._clock_start is None:
            return None
        return self._clock_start + self._head.pts_s

    def finished(self) -> bool:
        return self._done and self._head is None

    def error(self) -> str | None:
        return self._error

    def wait_first_frame(self, timeout: float = FIRST_FRAME_TIMEOUT_S) -> None:
        """Block until the decoder has a first frame (or failed): a video never starts on black."""
        deadline = time.monotonic() + timeout
        while self._head is None and time.monotonic() < deadline:
            try:
                self._head = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if self._head is None:
                self._done = True
                break
        if self._head is None:
            raise VideoError(self._error or f"no frame decoded within {timeout:g} s")

    def slow_report(self, now: float) -> str | None:
        """A sentence when the board cannot keep up with this file, with the measured rate."""
        stats = self.stats
        fps = stats.measured_fps(now)
        if fps is None or stats.stream_fps is None or stats.started_mono is None or now - stats.started_mono < SLOW_AFTER_S:
            return None
        if fps >= stats.stream_fps * SLOW_RATIO:
            return None
        return (f"plays at {fps:.1f} of its {stats.stream_fps:.0f} frames/s at {self.size[0]}x{self.size[1]} "
                f"({stats.dropped} dropped): re-encode it smaller or at a lower frame rate")

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a decoder waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None:
            self._thread.join(2.0)


class PyAVBackend:
    """Software decoding in-process: fine for 720p; 1080p on a Pi 4 will want a hardware backend."""

    def open(self, path: str, zone: tuple[int, int]) -> PyAVPlayback:
        import av

        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise VideoError("the file has no video stream")
                stream = container.streams.video[0]
                source = (stream.codec_context.width, stream.codec_context.height)
                duration = float(container.duration / av.time_base) if container.duration else None
        except av.error.FFmpegError as exc:
            raise VideoError(f"cannot open video: {exc}") from None
        if source[0] <= 0 or source[1] <= 0:
            raise VideoError(f"unsupported video ({stream.codec_context.name}, no picture size)")
        return PyAVPlayback(path, fit_size(source, zone), duration)

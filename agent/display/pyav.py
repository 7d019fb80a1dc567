"""Video with PyAV (FFmpeg in-process): probe and decode on a worker thread, present on time.

The worker opens the file, checks the stream's size against §10's limit before decoding a frame,
has FFmpeg's scaler make each frame the zone's size (not pygame's), and hands frames through a
small bounded queue. The display thread shows the latest frame that is due on the monotonic
clock, dropping late ones rather than drifting. Audio is not played: bulletin boards are muted.

PyAV (FFmpeg's libraries, ~25 MB resident and a few hundred ms to load) is imported on the first
video, not at start-up: most boards show images and text, and start faster and smaller without it.
Fine for 720p; 1080p on a Pi 4 will want a hardware backend behind the same interface.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pygame

from agent.display.video import VideoError, VideoStats, fit_size
from agent.display.videoheader import check_video_file
from agent.limits import MAX_VIDEO_SIZE

log = logging.getLogger(__name__)

QUEUE_FRAMES = 4  # ~130 ms at 30 fps: enough to ride out a slow frame, small enough for a Pi's memory
JOIN_AT_CLOSE_S = 2.0


@dataclass
class _Decoded:
    pts_s: float
    pixels: bytes


class PyAVPlayback:
    def __init__(self, path: str, zone: tuple[int, int], loop_for_s: float | None, wake: Callable[[], None]) -> None:
        self.path = path
        self.stats = VideoStats()
        self._zone = zone
        self._loop_for_s = loop_for_s
        self._wake = wake
        self._size: tuple[int, int] | None = None
        self._queue: queue.Queue[_Decoded | None] = queue.Queue(maxsize=QUEUE_FRAMES)
        self._stop = threading.Event()
        self._error: str | None = None
        self._first = threading.Event()  # a first frame is queued, or the decoder failed
        self._head: _Decoded | None = None
        self._clock_start: float | None = None  # monotonic time of pts 0
        self._done = False
        self.thread = threading.Thread(target=self._decode, name="video-decode", daemon=True)

    # --- decoder thread --------------------------------------------------------------------------

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
        except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError, MemoryError) as exc:
            self._error = f"cannot decode video: {exc}"
        finally:
            self._first.set()
            self._put(None)
            self._wake()

    def _open(self, container: Any) -> tuple[Any, tuple[int, int]]:
        if not container.streams.video:
            raise VideoError("the file has no video stream")
        stream = container.streams.video[0]
        source = (stream.codec_context.width, stream.codec_context.height)
        if source[0] <= 0 or source[1] <= 0:
            raise VideoError(f"unsupported video ({stream.codec_context.name}, no picture size)")
        if source[0] > MAX_VIDEO_SIZE[0] or source[1] > MAX_VIDEO_SIZE[1]:
            raise VideoError(f"video is {source[0]}x{source[1]} pixels: over the limit of "
                             f"{MAX_VIDEO_SIZE[0]}x{MAX_VIDEO_SIZE[1]}")
        return stream, fit_size(source, self._zone)

    def _decode_once(self, offset: float) -> float | None:
        import av

        last = None
        check_video_file(self.path)  # from the MP4 boxes: FFmpeg's own probing decodes frames
        try:
            container = av.open(self.path)
        except av.error.FFmpegError as exc:
            raise VideoError(f"cannot open video: {exc}") from None
        with container:
            stream, size = self._open(container)
            self._size = size
            stream.thread_type = "AUTO"
            if stream.average_rate:
                self.stats.stream_fps = float(stream.average_rate)
            width, height = size
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
                if not self._first.is_set():
                    self._first.set()
                    self._wake()
        if last is None:
            raise VideoError("the file has no video frames")
        return last

    # --- display thread ---------------------------------------------------------------------------

    @property
    def size(self) -> tuple[int, int] | None:
        return self._size if self._first.is_set() else None

    def ready(self) -> bool:
        return self._first.is_set()

    def error(self) -> str | None:
        return self._error

    def frame(self, now: float) -> pygame.Surface | None:
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
        if shown is None or self._size is None:
            return None
        self.stats.presented += 1
        return pygame.image.frombuffer(shown.pixels, self._size, "RGB")

    def next_due(self) -> float | None:
        if self._head is None or self._clock_start is None:
            return None
        return self._clock_start + self._head.pts_s

    def finished(self) -> bool:
        return self._done and self._head is None

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a decoder waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break


class PyAVBackend:
    """Software decoding in-process."""

    def __init__(self) -> None:
        self._playbacks: list[PyAVPlayback] = []

    def open(self, path: str, zone: tuple[int, int], loop_for_s: float | None,
             wake: Callable[[], None]) -> PyAVPlayback:
        self._playbacks = [p for p in self._playbacks if p.thread.is_alive()]
        playback = PyAVPlayback(path, zone, loop_for_s, wake)
        playback.thread.start()
        self._playbacks.append(playback)
        return playback

    def close(self) -> None:
        for playback in self._playbacks:
            playback.close()
        for playback in self._playbacks:
            playback.thread.join(JOIN_AT_CLOSE_S)
            if playback.thread.is_alive():
                log.error("bug: video decoder for %s still alive at exit", playback.path)
        self._playbacks.clear()

"""The video backend interface: what the renderer needs from anything that plays a file.

A backend opens a file without blocking (probing happens on its own thread), sizes the picture
for the zone, and hands finished frames to the display thread when they are due. The PyAV
backend (agent/display/pyav.py) decodes in-process; a hardware path (mpv/libmpv on a Pi 4, which
decodes H.264 in hardware) implements the same two protocols and is passed to the Renderer,
which never knows which one it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pygame

SLOW_AFTER_S = 3.0  # judge whether the board keeps up only after this much playback
SLOW_RATIO = 0.8  # presenting fewer than this share of the video's frames is "cannot keep up"


class VideoError(Exception):
    """The file cannot be played (corrupt, truncated, unsupported, too large); str() says why."""


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
    """One showing of one file. Every method returns at once (display thread)."""

    stats: VideoStats

    @property
    def size(self) -> tuple[int, int] | None:
        """The picture's size inside the zone, once known (after `ready`)."""

    def ready(self) -> bool:
        """The first frame is decoded (or the file failed: see `error`)."""

    def error(self) -> str | None: ...

    def frame(self, now: float) -> pygame.Surface | None:
        """The newest frame due by `now` (older due ones are dropped), or None when none is new."""

    def next_due(self) -> float | None:
        """Monotonic time the next frame is due, when known."""

    def finished(self) -> bool:
        """The file (and its loops, for an item with duration_s) has played to its end."""

    def close(self) -> None:
        """Stop decoding; never waits (the backend joins leftovers at its own close)."""


class VideoBackend(Protocol):
    def open(self, path: str, zone: tuple[int, int], loop_for_s: float | None,
             wake: Callable[[], None]) -> VideoPlayback:
        """Start playing `path` into a zone of `zone` pixels; `wake` is called when it becomes ready.

        `loop_for_s`: the item's duration_s when set (the file loops until then); None = play once.
        """

    def close(self) -> None:
        """End every playback's threads (at shutdown)."""


def fit_size(source: tuple[int, int], zone: tuple[int, int]) -> tuple[int, int]:
    """Inside the zone with the video's aspect ratio; even numbers, as scalers and YUV like them."""
    scale = min(zone[0] / source[0], zone[1] / source[1])
    return max(2, int(source[0] * scale) // 2 * 2), max(2, int(source[1] * scale) // 2 * 2)


def slow_report(stats: VideoStats, size: tuple[int, int], now: float) -> str | None:
    """A sentence when the board cannot keep up with a file, with the measured rate."""
    fps = stats.measured_fps(now)
    if fps is None or stats.stream_fps is None or stats.started_mono is None or now - stats.started_mono < SLOW_AFTER_S:
        return None
    if fps >= stats.stream_fps * SLOW_RATIO:
        return None
    return (f"plays at {fps:.1f} of its {stats.stream_fps:.0f} frames/s at {size[0]}x{size[1]} "
            f"({stats.dropped} dropped): re-encode it smaller or at a lower frame rate")

"""The main zone's videos, for the renderer: the one on screen, the one opening for the scene that
wants it, and the next item's, opened ahead of its turn. Nothing here waits: a playback that is not
ready yet leaves the previous picture on screen, and one that stays unready for five seconds fails
its item. Which backend plays the files is the caller's choice (agent/display/video.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pygame

from agent.display.video import VideoBackend, VideoError, VideoPlayback
from agent.models import Item, Manifest, MediaSource

FIRST_FRAME_TIMEOUT_S = 5.0


class VideoZone:
    def __init__(self, backend: VideoBackend, media: MediaSource, wake: Callable[[], None]) -> None:
        self._backend = backend
        self._media = media
        self._wake = wake
        self.playing: VideoPlayback | None = None  # on screen
        self.showing: str | None = None  # the showing it belongs to
        self.rect = pygame.Rect(0, 0, 0, 0)
        self.just_started = False  # its first frame is yet to be drawn with the scene
        self._next: tuple[object, VideoPlayback] | None = None
        self._opening: tuple[str | None, VideoPlayback, float] | None = None

    def stop(self) -> None:
        """The video on screen stops at once (a new scene, preemption, a new canvas)."""
        if self.playing is not None:
            self.playing.close()
        self.playing = self.showing = None

    def close(self) -> None:
        self.stop()
        for entry in (self._next, self._opening):
            if entry is not None:
                entry[1].close()
        self._next = self._opening = None
        self._backend.close()

    def path(self, manifest: Manifest, item: Item) -> str:
        media = manifest.media_by_id(item.media)
        path = self._media.path_for(media.sha256) if media is not None else None
        if path is None:
            raise VideoError("media not verified in the cache")
        return path

    def ready_for(self, showing: str | None, manifest: Manifest, item: Item, main: pygame.Rect,
                  mono: float) -> bool:
        """Whether this showing's video is on screen (True) or still opening (False); VideoError when it
        cannot play. The same showing under a new manifest object plays on."""
        if self.playing is not None and showing == self.showing:
            return True
        playback, opened_at = self._opening_for(showing, manifest, item, main.size, mono)
        if not playback.ready():
            if mono - opened_at > FIRST_FRAME_TIMEOUT_S:
                self._opening = None
                playback.close()
                raise VideoError(f"no frame decoded within {FIRST_FRAME_TIMEOUT_S:g} s")
            return False
        self._opening = None
        error, size = playback.error(), playback.size
        if error is not None or size is None:
            playback.close()
            raise VideoError(error or "the file has no video frames")
        self.playing, self.showing, self.just_started = playback, showing, True
        self.rect = pygame.Rect(main.x + (main.width - size[0]) // 2, main.y + (main.height - size[1]) // 2, *size)
        return True

    def _opening_for(self, showing: str | None, manifest: Manifest, item: Item, size: tuple[int, int],
                     mono: float) -> tuple[VideoPlayback, float]:
        if self._opening is not None and self._opening[0] == showing:
            return self._opening[1], self._opening[2]
        if self._opening is not None:
            self._opening[1].close()
        path = self.path(manifest, item)
        if self._next is not None and self._next[0] == (item, path, size):
            playback = self._next[1]
            self._next = None
        else:
            playback = self._backend.open(path, size, item.duration_s, self._wake)
        self._opening = (showing, playback, mono)
        return playback, mono

    def prefetch(self, manifest: Manifest, item: Item, size: tuple[int, int]) -> None:
        """Open the next item's video now, so its first frames are decoded when its turn comes."""
        if self._next is not None:
            self._next[1].close()
            self._next = None
        try:
            path = self.path(manifest, item)
        except VideoError:
            return  # reported when its turn comes and it fails again
        self._next = ((item, path, size), self._backend.open(path, size, item.duration_s, self._wake))

    def stats(self) -> dict[str, object] | None:
        video = self.playing
        if video is None or video.size is None:
            return None
        stats = video.stats
        fps = stats.measured_fps(time.monotonic())
        return {"size": list(video.size), "presented": stats.presented, "dropped": stats.dropped,
                "decoded": stats.decoded, "stream_fps": stats.stream_fps,
                "measured_fps": round(fps, 1) if fps is not None else None}

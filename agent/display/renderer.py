"""The screen: zones (header, main, ticker), the splash, alerts, rotation and presenting.

Runs on the one thread that owns pygame. A still screen is drawn once and flipped once; after
that only the rectangles that change are updated (the clock once a second, the ticker band per
frame), and `render` returns when the next change is due so the loop can sleep until then.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass

import pygame

from agent import schedule
from agent.display import kms
from agent.display.slides import SlideError, Slides, fit_image
from agent.display.text import FontBook, clean, fit_block
from agent.display.video import PyAVBackend, PyAVPlayback, VideoBackend, VideoError
from agent.manifest import DEFAULT_TIMEZONE
from agent.models import Alert, Item, Layout, Manifest, MediaSource, Scene

log = logging.getLogger(__name__)

WEEKDAYS_VI = ("Thứ Hai", "Thứ Ba", "Thứ Tư", "Thứ Năm", "Thứ Sáu", "Thứ Bảy", "Chủ Nhật")
ALERT_RED = (176, 0, 0)
ALERT_YELLOW = (255, 221, 0)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


@dataclass(frozen=True)
class DisplaySettings:
    width: int
    height: int
    fullscreen: bool
    fps: int
    crossfade_ms: int
    splash_title: str
    device_id: str


@dataclass(frozen=True)
class Frame:
    """What `render` tells the loop."""

    next_change: float  # monotonic time of the next scheduled visual change
    failed_showing: str | None = None
    failure: str = ""
    finished_showing: str | None = None  # a video without duration_s reached its end
    notice: str | None = None  # e.g. the board cannot keep up with a video


def vietnamese_date(local: dt.datetime) -> str:
    return f"{WEEKDAYS_VI[local.weekday()]}, {local:%d/%m/%Y}"


def rotate_rect(rect: pygame.Rect, logical: tuple[int, int], rotation: int) -> pygame.Rect:
    """Where a rectangle of the logical (unrotated) canvas lands on the physical screen."""
    width, height = logical
    x, y, w, h = rect
    if rotation == 90:
        return pygame.Rect(height - y - h, x, h, w)
    if rotation == 180:
        return pygame.Rect(width - x - w, height - y - h, w, h)
    if rotation == 270:
        return pygame.Rect(y, width - x - w, h, w)
    return pygame.Rect(rect)


class Renderer:
    def __init__(self, settings: DisplaySettings, media: MediaSource, video: VideoBackend | None = None) -> None:
        self.settings = settings
        self._media = media
        self._video_backend = video or PyAVBackend()
        self._video: PyAVPlayback | None = None  # the video on screen
        self._video_rect = pygame.Rect(0, 0, 0, 0)
        self._next_video: tuple[object, PyAVPlayback] | None = None  # decoding ahead of its turn
        self._video_showing: str | None = None
        self._fonts = FontBook()
        self._slides = Slides(self._fonts, media)
        self._screen: pygame.Surface | None = None
        self._canvas = pygame.Surface((1, 1))
        self._rotation = 0
        self._zones: tuple[pygame.Rect, pygame.Rect, pygame.Rect] | None = None
        self._zone_key: object = None
        self._drawn_key: object = None
        self._clock_rect: pygame.Rect | None = None
        self._clock_second = -1
        self._clock_kind = "header"  # header, splash or alert: how the clock rectangle is painted
        self._ticker_text = ""
        self._ticker_strip: pygame.Surface | None = None
        self._ticker_start = 0.0
        self._ticker_active = False
        self._fade_from: pygame.Surface | None = None
        self._fade_start = 0.0
        self._logo_cache: dict[str, pygame.Surface | None] = {}
        self._asked_to_prepare: object = None
        self.frames = 0
        self.first_frame_mono: float | None = None
        self.frame_costs_ms: deque[float] = deque(maxlen=600)  # draw + present, for status and the benchmark
        self.scene_shown_mono: float | None = None  # when the current scene's first frame was presented

    # --- window -------------------------------------------------------------------------------

    def open(self) -> None:
        """Initialise only video and fonts (pygame.init() would also open audio for nothing)."""
        kms.prefer_gles()  # before SDL starts: on kmsdrm, GLES 2 unless a renderer was chosen (issue #16.1)
        pygame.display.init()
        pygame.font.init()
        flags = pygame.FULLSCREEN if self.settings.fullscreen else 0
        self._screen = pygame.display.set_mode((self.settings.width, self.settings.height), flags)
        pygame.display.set_caption("bangtin-agent")
        pygame.mouse.set_visible(False)
        log.info("display %s %dx%d%s", pygame.display.get_driver(), *self._screen.get_size(),
                 " fullscreen" if self.settings.fullscreen else "")
        self._set_rotation(0)

    def close(self) -> None:
        self._close_videos()
        self._slides.close()
        pygame.display.quit()

    def _close_videos(self) -> None:
        for playback in (self._video, self._next_video[1] if self._next_video else None):
            if playback is not None:
                playback.close()
        self._video, self._next_video = None, None

    @property
    def size(self) -> tuple[int, int]:
        return self._screen.get_size() if self._screen is not None else (0, 0)

    def video_stats(self) -> dict[str, object] | None:
        """Frames presented and dropped for the video on screen (status and benchmarks)."""
        video = self._video
        if video is None:
            return None
        stats = video.stats
        fps = stats.measured_fps(time.monotonic())
        return {"size": list(video.size), "presented": stats.presented, "dropped": stats.dropped,
                "decoded": stats.decoded, "stream_fps": stats.stream_fps,
                "measured_fps": round(fps, 1) if fps is not None else None}

    def invalidate(self) -> None:
        """Draw everything again at the next frame (settings changed)."""
        self._drawn_key = None
        self._zone_key = None

    def screenshot_png(self) -> bytes:
        """A PNG of exactly what is on the physical screen now."""
        assert self._screen is not None
        buffer = io.BytesIO()
        pygame.image.save(self._screen, buffer, "screen.png")
        return buffer.getvalue()

    def _set_rotation(self, rotation: int) -> None:
        width, height = self.size
        logical = (height, width) if rotation in (90, 270) else (width, height)
        self._rotation = rotation
        self._canvas = pygame.Surface(logical).convert() if self._screen is not None else pygame.Surface(logical)
        self._zone_key = None

    # --- layout -------------------------------------------------------------------------------

    def _layout_zones(self, manifest: Manifest | None) -> tuple[pygame.Rect, pygame.Rect, pygame.Rect]:
        rotation = manifest.layout.rotation if manifest is not None else 0
        if rotation != self._rotation:
            self._set_rotation(rotation)
        has_ticker = bool(manifest and manifest.ticker)
        key = (self._canvas.get_size(), has_ticker)
        if key != self._zone_key or self._zones is None:
            width, height = self._canvas.get_size()
            header_h = max(48, round(height * 0.11))
            ticker_h = max(32, round(height * 0.075)) if has_ticker else 0
            self._zones = (
                pygame.Rect(0, 0, width, header_h),
                pygame.Rect(0, header_h, width, height - header_h - ticker_h),
                pygame.Rect(0, height - ticker_h, width, ticker_h),
            )
            self._zone_key = key
            self._slides.clear()
            self._drawn_key = None
        return self._zones

    # --- the frame ----------------------------------------------------------------------------

    def render(self, scene: Scene, now: dt.datetime, mono: float) -> Frame:
        """Draw what changed since the last call; never leaves the screen black unless asked."""
        started = time.perf_counter()
        header, main, ticker = self._layout_zones(scene.manifest)
        layout = scene.manifest.layout if scene.manifest is not None else Layout(title=self.settings.splash_title)
        tz = schedule.zone(scene.manifest.timezone if scene.manifest is not None else DEFAULT_TIMEZONE)
        local = now.astimezone(tz)
        key = (scene.mode, scene.showing_id, scene.item, scene.alert, id(scene.manifest))
        dirty: list[pygame.Rect] = []
        full = key != self._drawn_key
        if full:
            try:
                self._draw_scene(scene, layout, local, mono, header, main, ticker)
            except (SlideError, VideoError) as exc:
                return Frame(mono, failed_showing=scene.showing_id, failure=str(exc))
            self._drawn_key = key
        elif local.second != self._clock_second and self._clock_rect is not None and scene.mode != "off":
            dirty.append(self._paint_clock(layout, local))
        video = self._video
        if video is not None:
            if video.error():
                return Frame(mono, failed_showing=scene.showing_id, failure=str(video.error()))
            picture = video.frame(mono)
            if picture is not None:
                self._canvas.blit(picture, self._video_rect)
                dirty.append(self._video_rect)
        if scene.mode in ("item", "splash"):
            self._set_ticker(scene.ticker_text, layout, ticker, mono)
            if self._ticker_active:
                dirty.append(self._draw_ticker(layout, ticker, mono))
            if self._fade_from is not None:
                dirty.append(self._draw_fade(main, mono, scene))
        if self._present(full, dirty, mono):
            self.frame_costs_ms.append((time.perf_counter() - started) * 1000)
            if full:
                self.scene_shown_mono = time.monotonic()
        upcoming = (scene.upcoming, scene.manifest, main.size)
        if scene.upcoming is not None and scene.manifest is not None and upcoming != self._asked_to_prepare:
            # Once per new upcoming item, not per ticker frame: the key hashes the whole item.
            self._asked_to_prepare = upcoming
            if scene.upcoming.type == "video":
                self._prefetch_video(scene.manifest, scene.upcoming, main.size)
            else:
                self._slides.prepare(scene.manifest, scene.upcoming, main.size)
        if video is not None and video.finished():
            return Frame(mono, finished_showing=scene.showing_id)
        notice = video.slow_report(mono) if video is not None else None
        return Frame(self._next_change(mono, now, scene), notice=notice)

    def _next_change(self, mono: float, now: dt.datetime, scene: Scene) -> float:
        if scene.mode == "off":
            return mono + 1.0
        if self._video is not None:  # the next frame's time, at most the fps ceiling apart
            due = self._video.next_due()
            return max(mono + 1.0 / self.settings.fps / 2, due if due is not None else mono + 1.0 / self.settings.fps)
        if self._ticker_active or self._fade_from is not None:
            return mono + 1.0 / self.settings.fps
        # Wake just after the wall clock's next second so the clock ticks on time.
        return mono + (1.0 - now.microsecond / 1e6) + 0.002

    def _draw_scene(self, scene: Scene, layout: Layout, local: dt.datetime, mono: float,
                    header: pygame.Rect, main: pygame.Rect, ticker: pygame.Rect) -> None:
        canvas = self._canvas
        self._clock_rect = None
        keep_video = self._video is not None and scene.showing_id == self._video_showing
        if self._video is not None and not keep_video:  # a new scene: the video stops (preemption included)
            self._video.close()
            self._video = None
        if scene.mode == "off":
            self._fade_from = None
            canvas.fill(BLACK)
            return
        if scene.mode == "alert":
            assert scene.alert is not None
            self._fade_from = None
            self._draw_alert(scene.alert, local)
            return
        if scene.mode == "item" and scene.item is not None and scene.item.type == "video" and scene.manifest is not None:
            self._fade_from = None
            if not keep_video:  # the same showing under a new manifest object plays on
                self._start_video(scene.manifest, scene.item, main)  # may raise VideoError; the old frame stays
                self._video_showing = scene.showing_id
        elif scene.mode == "item" and scene.item is not None and scene.manifest is not None:
            slide = self._slides.get(scene.manifest, scene.item, main.size)  # may raise SlideError
            if self.settings.crossfade_ms > 0 and self.frames > 0:
                self._fade_from = canvas.subsurface(main).copy()
                self._fade_start = mono
            canvas.blit(slide, main)
        else:
            self._fade_from = None
            self._draw_splash(layout, local, main)
        self._draw_header(scene.manifest, layout, header, local)
        if ticker.height:
            canvas.fill(layout.theme.accent, ticker)
            self._ticker_text = ""  # redraw the strip from its start on the fresh band

    def _draw_header(self, manifest: Manifest | None, layout: Layout, rect: pygame.Rect, local: dt.datetime) -> None:
        canvas, theme = self._canvas, layout.theme
        canvas.fill(theme.background, rect)
        canvas.fill(theme.accent, (rect.x, rect.bottom - 3, rect.width, 3))  # the underline; the clock stays above it
        pad = max(6, rect.height // 10)
        x = pad
        logo = self._logo(manifest, layout, rect.height - 2 * pad)
        if logo is not None:
            canvas.blit(logo, (x, rect.y + (rect.height - logo.get_height()) // 2))
            x += logo.get_width() + pad
        clock_w = 0
        if layout.clock:  # wide enough for the longest weekday: the box never clips the date
            clock_w = max(self._fonts.get(int(rect.height * 0.36), bold=True).size("88:88:88")[0],
                          self._fonts.get(int(rect.height * 0.2)).size("Chủ Nhật, 28/12/2026")[0]) + 2 * pad
        title_box = (max(10, rect.width - x - clock_w - pad), rect.height - 2 * pad)
        title = fit_block(self._fonts, layout.title or self.settings.splash_title, title_box, theme.foreground,
                          bold=True, max_size=int(rect.height * 0.42))
        canvas.blit(title, (x, rect.y + (rect.height - title.get_height()) // 2))
        if layout.clock:
            self._clock_rect = pygame.Rect(rect.right - clock_w, rect.y, clock_w, rect.height - 3)
            self._clock_kind = "header"
            self._paint_clock(layout, local)

    def _logo(self, manifest: Manifest | None, layout: Layout, height: int) -> pygame.Surface | None:
        media = manifest.media_by_id(layout.logo) if manifest is not None else None
        path = self._media.path_for(media.sha256) if media is not None else None
        if path is None:
            return None
        key = f"{path}@{height}"
        if key not in self._logo_cache:
            try:
                image = pygame.image.load(path)
                w, h = image.get_size()
                self._logo_cache[key] = fit_image(image, (max(1, round(w * height / max(1, h))), height),
                                                  layout.theme.background)
            except (pygame.error, SlideError, OSError) as exc:
                log.warning("logo %s cannot be drawn: %s", layout.logo, exc)
                self._logo_cache[key] = None
        return self._logo_cache[key]

    def _paint_clock(self, layout: Layout, local: dt.datetime) -> pygame.Rect:
        assert self._clock_rect is not None
        rect, canvas = self._clock_rect, self._canvas
        self._clock_second = local.second
        if self._clock_kind == "alert":
            canvas.fill(ALERT_RED, rect)
            text = self._fonts.get(int(rect.height * 0.6), bold=True).render(f"{local:%H:%M:%S}", True, WHITE)
            canvas.blit(text, text.get_rect(center=rect.center))
            return rect
        background = layout.theme.background
        canvas.fill(background, rect)
        if self._clock_kind == "splash":
            big = self._fonts.get(int(rect.height * 0.62), bold=True).render(f"{local:%H:%M:%S}", True, layout.theme.accent)
            canvas.blit(big, big.get_rect(midtop=(rect.centerx, rect.y)))
            date = self._fonts.get(int(rect.height * 0.2)).render(vietnamese_date(local), True, layout.theme.foreground)
            canvas.blit(date, date.get_rect(midbottom=(rect.centerx, rect.bottom)))
            return rect
        time_text = self._fonts.get(int(rect.height * 0.36), bold=True).render(f"{local:%H:%M:%S}", True, layout.theme.accent)
        date_text = self._fonts.get(int(rect.height * 0.2)).render(vietnamese_date(local), True, layout.theme.foreground)
        top = rect.y + (rect.height - time_text.get_height() - date_text.get_height()) // 2
        canvas.blit(time_text, time_text.get_rect(midtop=(rect.centerx, top)))
        canvas.blit(date_text, date_text.get_rect(midtop=(rect.centerx, top + time_text.get_height())))
        return rect

    def _draw_splash(self, layout: Layout, local: dt.datetime, main: pygame.Rect) -> None:
        """The board's own screen when nothing is playable: title, clock, date — never black."""
        canvas = self._canvas
        canvas.fill(layout.theme.background, main)
        clock_h = main.height // 2
        self._clock_rect = pygame.Rect(main.x, main.y + main.height // 5, main.width, clock_h)
        self._clock_kind = "splash"
        self._paint_clock(layout, local)
        footer = self._fonts.get(max(12, main.height // 30)).render(
            f"bangtin-agent · {self.settings.device_id}", True, layout.theme.foreground)
        canvas.blit(footer, footer.get_rect(midbottom=(main.centerx, main.bottom - 8)))

    def _draw_alert(self, alert: Alert, local: dt.datetime) -> None:
        """Full screen, red and yellow, over header and ticker: unmistakable."""
        canvas = self._canvas
        width, height = canvas.get_size()
        pad = max(12, width // 40)
        canvas.fill(ALERT_RED)
        band = pygame.Rect(0, 0, width, height // 4)
        canvas.fill(ALERT_YELLOW, band)
        title = fit_block(self._fonts, alert.title or "CẢNH BÁO KHẨN CẤP", (width - 2 * pad, band.height - 2 * pad),
                          ALERT_RED, bold=True, max_size=height // 6, align="center")
        canvas.blit(title, title.get_rect(center=band.center))
        clock_h = max(24, height // 12)
        body_rect = pygame.Rect(pad, band.bottom + pad, width - 2 * pad, height - band.bottom - 2 * pad - clock_h)
        body = fit_block(self._fonts, alert.body, body_rect.size, WHITE, max_size=height // 9, align="center")
        canvas.blit(body, body.get_rect(midtop=body_rect.midtop))
        self._clock_rect = pygame.Rect(0, height - clock_h, width, clock_h)
        self._clock_kind = "alert"
        self._paint_clock(Layout(), local)

    # --- video -------------------------------------------------------------------------------

    def _video_path(self, manifest: Manifest, item: Item) -> str:
        media = manifest.media_by_id(item.media)
        path = self._media.path_for(media.sha256) if media is not None else None
        if path is None:
            raise VideoError("media not verified in the cache")
        return path

    def _prefetch_video(self, manifest: Manifest, item: Item, size: tuple[int, int]) -> None:
        """Open and start decoding the next item's video now, so its first frame is ready in time."""
        if self._next_video is not None:
            self._next_video[1].close()
            self._next_video = None
        try:
            playback = self._video_backend.open(self._video_path(manifest, item), size)
        except VideoError:
            return  # reported when its turn comes and it fails again
        assert isinstance(playback, PyAVPlayback)
        playback.start(item.duration_s)
        self._next_video = ((item, self._video_path(manifest, item), size), playback)

    def _start_video(self, manifest: Manifest, item: Item, main: pygame.Rect) -> None:
        key = (item, self._video_path(manifest, item), main.size)
        if self._next_video is not None and self._next_video[0] == key:
            playback = self._next_video[1]
            self._next_video = None
        else:
            opened = self._video_backend.open(self._video_path(manifest, item), main.size)
            assert isinstance(opened, PyAVPlayback)
            playback = opened
            playback.start(item.duration_s)
        try:
            playback.wait_first_frame()
        except VideoError:
            playback.close()
            raise
        width, height = playback.size
        self._video_rect = pygame.Rect(main.x + (main.width - width) // 2, main.y + (main.height - height) // 2,
                                       width, height)
        self._canvas.fill(BLACK, main)
        self._video = playback
        first = playback.frame(time.monotonic())
        if first is not None:
            self._canvas.blit(first, self._video_rect)

    # --- ticker and crossfade -----------------------------------------------------------------

    def _set_ticker(self, text: str, layout: Layout, band: pygame.Rect, mono: float) -> None:
        if text == self._ticker_text and (self._ticker_strip is not None or not text):
            return
        self._ticker_text = text
        self._ticker_active = bool(text) and band.height > 0
        if not self._ticker_active:
            self._ticker_strip = None
            return
        font = self._fonts.get(int(band.height * 0.6), bold=True)
        self._ticker_strip = font.render(clean(text), True, layout.theme.background)
        self._ticker_start = mono

    def _draw_ticker(self, layout: Layout, band: pygame.Rect, mono: float) -> pygame.Rect:
        """The strip moves by elapsed time in whole pixels; repeats with a gap; only the band is redrawn."""
        strip = self._ticker_strip
        assert strip is not None
        canvas = self._canvas
        canvas.fill(layout.theme.accent, band)
        period = strip.get_width() + max(band.width // 4, 100)
        travelled = int((mono - self._ticker_start) * layout.ticker_speed_px_s)
        first = max(0, (travelled - band.width - strip.get_width()) // period)
        y = band.y + (band.height - strip.get_height()) // 2
        canvas.set_clip(band)
        for k in range(first, first + math.ceil(band.width / period) + 2):
            x = band.width - travelled + k * period
            if x >= band.width:
                break
            if x + strip.get_width() > 0:
                canvas.blit(strip, (x, y))
        canvas.set_clip(None)
        return band

    def _draw_fade(self, main: pygame.Rect, mono: float, scene: Scene) -> pygame.Rect:
        assert self._fade_from is not None
        progress = (mono - self._fade_start) * 1000 / self.settings.crossfade_ms
        if progress >= 1.0 or scene.item is None or scene.manifest is None:
            self._fade_from = None
            if scene.item is not None and scene.manifest is not None:
                self._canvas.blit(self._slides.get(scene.manifest, scene.item, main.size), main)
            return main
        new = self._slides.get(scene.manifest, scene.item, main.size)
        self._canvas.blit(self._fade_from, main)
        new.set_alpha(int(255 * progress))
        self._canvas.blit(new, main)
        new.set_alpha(None)
        return main

    # --- presenting ---------------------------------------------------------------------------

    def _present(self, full: bool, dirty: list[pygame.Rect], mono: float) -> bool:
        """Put changed pixels on the screen; False when nothing changed (no frame at all)."""
        screen = self._screen
        assert screen is not None
        logical = self._canvas.get_size()
        if full:
            if self._rotation:
                screen.blit(pygame.transform.rotate(self._canvas, -self._rotation), (0, 0))
            else:
                screen.blit(self._canvas, (0, 0))
            pygame.display.flip()
        elif dirty:
            updated = []
            for rect in dirty:
                target = rotate_rect(rect, logical, self._rotation)
                part = self._canvas.subsurface(rect)
                screen.blit(pygame.transform.rotate(part, -self._rotation) if self._rotation else part, target)
                updated.append(target)
            pygame.display.update(updated)
        else:
            return False
        self.frames += 1
        if self.first_frame_mono is None:
            self.first_frame_mono = mono
            log.info("first frame on screen (pid %d)", os.getpid())
        return True

    def frame_cost_summary(self) -> dict[str, float]:
        """Percentiles of recent frame costs in ms (draw + present), for status and benchmarks."""
        costs = sorted(self.frame_costs_ms)
        if not costs:
            return {}
        def pick(q: float) -> float:
            return round(costs[min(len(costs) - 1, int(q * len(costs)))], 3)
        return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": round(costs[-1], 3), "n": len(costs)}

"""The screen: zones (header, main, ticker), the splash, alerts, rotation and presenting.

Runs on the one thread that owns pygame, and never waits: slides, logos and videos are prepared
on workers (their completion wakes the loop); until a new scene's picture is ready the screen
keeps what it shows. A still screen is drawn once and flipped once; after that only the
rectangles that change are updated (the clock once a second, the ticker band per frame), and
`render` returns when the next change is due so the loop can sleep until then.

Content cannot take the screen down: a failure in a zone is contained where it happens. The main
zone failing is an item failure (skipped, reported); the header, ticker, splash or alert failing
leaves a plain version of that zone and a problem in `zone_problems`, which the loop reports.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pygame

from agent import schedule
from agent.display import kms, painters
from agent.display.slides import SlideError, Slides
from agent.display.text import FontBook
from agent.display.ticker import Ticker
from agent.display.video import VideoBackend, VideoError, slow_report
from agent.display.videozone import VideoZone
from agent.enrolment import EnrolmentCard
from agent.i18n import N_, translations
from agent.limits import clip
from agent.manifest import DEFAULT_TIMEZONE
from agent.models import Item, Layout, Manifest, MediaSource, Scene

log = logging.getLogger(__name__)

WAIT_POLL_S = 0.05  # while a picture is being prepared, look again this soon (a worker also wakes the loop)


@dataclass(frozen=True)
class DisplaySettings:
    width: int
    height: int
    fullscreen: bool
    fps: int
    crossfade_ms: int
    splash_title: str
    device_id: str
    language: str = "en"  # of the splash's footer, for the technician (agent/i18n.py)


@dataclass(frozen=True)
class Frame:
    """What `render` tells the loop."""

    next_change: float  # monotonic time of the next scheduled visual change
    failed_showing: str | None = None
    failure: str = ""
    finished_showing: str | None = None  # a video without duration_s reached its end
    notice: str | None = None  # e.g. the board cannot keep up with a video
    waiting: bool = False  # the scene's picture is still being prepared; the previous one stays


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
    def __init__(self, settings: DisplaySettings, media: MediaSource, video: VideoBackend,
                 wake: Callable[[], None] = lambda: None, fonts: FontBook | None = None) -> None:
        self.settings = settings
        self._words = translations(settings.language)  # the catalogue is read here, never on the display loop
        self._media = media
        self._wake = wake
        self._videos = VideoZone(video, media, wake)
        self._fonts = fonts or FontBook()
        self._titles = painters.TitleCache(self._fonts)
        self._slides = Slides(self._fonts, media, wake)
        self._ticker = Ticker(self._fonts)
        self._screen: pygame.Surface | None = None
        self._canvas = pygame.Surface((1, 1))
        self._rotation = 0
        self._zones: tuple[pygame.Rect, pygame.Rect, pygame.Rect] | None = None
        self._zone_key: object = None
        self._drawn_key: object = None
        self._drawn_showing: str | None = None
        self._drawn_layout = Layout()
        self._drawn_mode = "none"
        self._clock: painters.ClockBox | None = None
        self._clock_second = -1
        self._logo_pending = False
        self._ticker_broken: str | None = None
        self._fade_from: pygame.Surface | None = None
        self._fade_to: pygame.Surface | None = None
        self._fade_start = 0.0
        self._asked_to_prepare: object = None
        self.driver: str | None = None  # SDL's video driver, once open
        self.zone_problems: dict[str, str] = {}  # zone → why it is drawn plain; the loop reports them
        self.frames = 0
        self.first_frame_mono: float | None = None
        self.frame_costs_ms: deque[float] = deque(maxlen=600)  # draw + present, for status and the benchmark
        self.scene_shown_mono: float | None = None  # when the current scene's first frame was presented
        self._enrolment: EnrolmentCard | None = None  # drawn in place of the splash on a board not enrolled
        self._notice: str | None = None  # the board's own word in the header (a refused bundle), for a while

    # --- window -------------------------------------------------------------------------------

    def open(self) -> None:
        """Initialise only video and fonts (pygame.init() would also open audio for nothing)."""
        kms.prefer_gles()  # before SDL starts: on kmsdrm, GLES 2 unless a renderer was chosen (issue #16.1)
        pygame.display.init()
        pygame.font.init()
        flags = pygame.FULLSCREEN if self.settings.fullscreen else 0
        self._screen = pygame.display.set_mode((self.settings.width, self.settings.height), flags)
        self.driver = pygame.display.get_driver()
        pygame.display.set_caption("bangtin-agent")
        pygame.mouse.set_visible(False)
        log.info("display %s %dx%d%s", pygame.display.get_driver(), *self._screen.get_size(),
                 " fullscreen" if self.settings.fullscreen else "")
        self._set_rotation(0)

    def close(self) -> None:
        self._videos.close()
        self._slides.close()
        pygame.display.quit()

    @property
    def size(self) -> tuple[int, int]:
        return self._screen.get_size() if self._screen is not None else (0, 0)

    def video_stats(self) -> dict[str, object] | None:
        """Frames presented and dropped for the video on screen (status and benchmarks)."""
        return self._videos.stats()

    @property
    def drawn_showing(self) -> str | None:
        """The showing whose scene is on screen (drawn whole at least once)."""
        return self._drawn_showing

    def is_preparing(self, manifest: Manifest, item: Item) -> bool:
        """Whether the item's slide is being prepared, or ready (ahead of its turn)."""
        main = self._zones[1] if self._zones is not None else pygame.Rect(0, 0, *self.size)
        return self._slides.is_preparing(manifest, item, main.size)

    def set_enrolment(self, card: EnrolmentCard | None) -> None:
        """Show the enrolment screen instead of the splash (display thread; redrawn when it changes)."""
        self._enrolment = card

    def set_notice(self, notice: str | None) -> None:
        """A line the board says in the header instead of the title (display thread)."""
        self._notice = notice

    def invalidate(self) -> None:
        """Draw everything again at the next frame (settings changed)."""
        self._drawn_key = None
        self._zone_key = None

    def screenshot(self) -> pygame.Surface:
        """A copy of exactly what is on the physical screen now (encode it off the display thread)."""
        assert self._screen is not None
        return self._screen.copy()

    def _set_rotation(self, rotation: int) -> None:
        width, height = self.size
        self._rotation = rotation
        if rotation == 0 and self._screen is not None:
            self._canvas = self._screen  # no second 8 MB canvas when nothing needs turning
        else:
            logical = (height, width) if rotation in (90, 270) else (width, height)
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
            self._forget_drawn()
        return self._zones

    def _forget_drawn(self) -> None:
        """A new canvas or new zones: nothing drawn before fits them; the next scene is drawn whole."""
        self._drawn_key = None
        self._drawn_mode = "none"  # nothing moves on a canvas no scene has been drawn on yet
        self._clock = None
        self._fade_from = self._fade_to = None
        self._videos.stop()

    # --- the frame ----------------------------------------------------------------------------

    def render(self, scene: Scene, now: dt.datetime, mono: float) -> Frame:
        """Draw what changed since the last call; never leaves the screen black unless asked."""
        started = time.perf_counter()
        header, main, ticker = self._layout_zones(scene.manifest)
        layout = scene.manifest.layout if scene.manifest is not None else Layout(title=self.settings.splash_title)
        tz = schedule.zone(scene.manifest.timezone if scene.manifest is not None else DEFAULT_TIMEZONE)
        local = now.astimezone(tz)
        key = (scene.mode, scene.showing_id, scene.item, scene.alert, id(scene.manifest), self._enrolment, self._notice)
        dirty: list[pygame.Rect] = []
        full = key != self._drawn_key
        waiting = False
        if full:
            if self._videos.playing is not None and scene.showing_id != self._videos.showing:
                self._videos.stop()  # a new scene: the video stops at once (preemption included)
            try:
                ready, slide = self._picture_for(scene, main, mono)
            except (SlideError, VideoError) as exc:
                return Frame(mono, failed_showing=scene.showing_id, failure=clip(exc))
            waiting = not ready
            if waiting:
                full = False
            else:
                self._draw_scene(scene, layout, local, mono, header, main, ticker, slide)
                self._drawn_key, self._drawn_showing = key, scene.showing_id
                self._drawn_layout, self._drawn_mode = layout, scene.mode
        dirty.extend(self._changing_parts(scene, local, mono, main, ticker))
        video = self._videos.playing
        if video is not None and video.error():
            return Frame(mono, failed_showing=scene.showing_id, failure=clip(video.error()))
        if self._present(full, dirty, mono):
            self.frame_costs_ms.append((time.perf_counter() - started) * 1000)
            if full:
                self.scene_shown_mono = time.monotonic()
        self._prepare_upcoming(scene, main.size)
        if video is not None and video.finished():
            return Frame(mono, finished_showing=scene.showing_id)
        notice = slow_report(video.stats, video.size, mono) if video is not None and video.size else None
        next_change = self._next_change(mono, now)
        if waiting or self._logo_pending:
            next_change = min(next_change, mono + WAIT_POLL_S)
        return Frame(next_change, notice=notice, waiting=waiting)

    def _changing_parts(self, scene: Scene, local: dt.datetime, mono: float, main: pygame.Rect,
                        ticker: pygame.Rect) -> list[pygame.Rect]:
        """The rectangles that move by themselves: clock, video, ticker, crossfade, a logo arriving."""
        dirty = []
        layout, mode = self._drawn_layout, self._drawn_mode
        if self._clock is not None and local.second != self._clock_second and mode != "off":
            self._clock_second = local.second
            dirty.append(painters.paint_clock(self._canvas, self._fonts, self._clock, layout, local))
        if self._videos.playing is not None:
            picture = self._videos.playing.frame(mono)
            if picture is not None:
                self._canvas.blit(picture, self._videos.rect)
                dirty.append(self._videos.rect)
        if mode in ("item", "splash") and ticker.height:
            text = scene.ticker_text if scene.ticker_text != self._ticker_broken else ""
            try:
                self._ticker.set(text, ticker, layout.theme.background, mono)
                if self._ticker.active:
                    dirty.append(self._ticker.draw(self._canvas, ticker, layout.ticker_speed_px_s, layout.theme.accent,
                                                   layout.theme.background, mono))
                self.zone_problems.pop("ticker", None)
            except (pygame.error, MemoryError, ValueError, OverflowError) as exc:
                self._ticker_broken = scene.ticker_text
                self._canvas.fill(layout.theme.accent, ticker)
                dirty.append(ticker)
                self.zone_problems["ticker"] = clip(f"ticker cannot be drawn: {exc}")
        if self._fade_from is not None:
            dirty.append(self._draw_fade(main, mono))
        if self._logo_pending and self._drawn_key is not None and scene.manifest is not None:
            media = scene.manifest.media_by_id(layout.logo)
            path = self._media.path_for(media.sha256) if media is not None else None
            if path is None or not self._slides.logo(path, self._logo_height(), layout.theme.background)[1]:
                self._drawn_key = None  # the logo is decoded: draw the header again with it, next frame
        return dirty

    def _next_change(self, mono: float, now: dt.datetime) -> float:
        fps = self.settings.fps
        if self._drawn_mode == "off":
            return mono + 1.0
        if self._videos.playing is not None:  # the next frame's time, at most the fps ceiling apart
            due = self._videos.playing.next_due()
            return max(mono + 1.0 / fps / 2, due if due is not None else mono + 1.0 / fps)
        if self._ticker.active and self._drawn_mode in ("item", "splash"):
            return mono + self._ticker.frame_period_s(self._drawn_layout.ticker_speed_px_s, fps)
        if self._fade_from is not None:
            return mono + 1.0 / fps
        # Wake just after the wall clock's next second so the clock ticks on time.
        return mono + (1.0 - now.microsecond / 1e6) + 0.002

    # --- the scene's picture ------------------------------------------------------------------

    def _picture_for(self, scene: Scene, main: pygame.Rect, mono: float) -> tuple[bool, pygame.Surface | None]:
        """(ready, slide): an image/text item's slide once prepared; a video item is ready once its
        first frame is decoded (the playback is then on screen). Raises SlideError / VideoError."""
        if scene.mode != "item" or scene.item is None or scene.manifest is None:
            return True, None
        if scene.item.type != "video":
            slide = self._slides.poll(scene.manifest, scene.item, main.size)
            return slide is not None, slide
        return self._videos.ready_for(scene.showing_id, scene.manifest, scene.item, main, mono), None

    def _prepare_upcoming(self, scene: Scene, size: tuple[int, int]) -> None:
        upcoming = (scene.upcoming, scene.manifest, size)
        if scene.upcoming is None or scene.manifest is None or upcoming == self._asked_to_prepare:
            return
        # Once per new upcoming item, not per ticker frame: the key hashes the whole item.
        self._asked_to_prepare = upcoming
        if scene.upcoming.type != "video":
            self._slides.prepare(scene.manifest, scene.upcoming, size)
        else:
            self._videos.prefetch(scene.manifest, scene.upcoming, size)

    # --- drawing a scene ------------------------------------------------------------------------

    def _draw_scene(self, scene: Scene, layout: Layout, local: dt.datetime, mono: float, header: pygame.Rect,
                    main: pygame.Rect, ticker: pygame.Rect, picture: pygame.Surface | None) -> None:
        canvas = self._canvas
        self._clock = None
        self._clock_second = local.second
        if scene.mode == "off":
            self._fade_from = None
            canvas.fill(painters.BLACK)
            return
        if scene.mode == "alert":
            alert = scene.alert
            assert alert is not None
            self._fade_from = None
            self._contained("alert", lambda: self._set_clock(painters.draw_alert(canvas, self._fonts, alert, local)),
                            lambda: painters.draw_plain_alert(canvas, self._fonts))
            return
        videos = self._videos
        if scene.mode == "item" and picture is None and videos.playing is not None:
            self._fade_from = None
            if videos.just_started:  # the first frame of a new playback; a replayed scene keeps its picture
                videos.just_started = False
                canvas.fill(painters.BLACK, main)
                first = videos.playing.frame(mono)
                if first is not None:
                    canvas.blit(first, videos.rect)
        elif scene.mode == "item" and picture is not None:
            if self.settings.crossfade_ms > 0 and self.frames > 0 and scene.showing_id != self._drawn_showing:
                self._fade_from = canvas.subsurface(main).copy()
                self._fade_to = picture
                self._fade_start = mono
            canvas.blit(picture, main)
        else:
            self._fade_from = None
            card = self._enrolment
            self._contained("splash", lambda: painters.draw_enrolment(canvas, self._fonts, layout, card, main)
                            if card is not None else self._set_clock(painters.draw_splash(
                                canvas, self._fonts, layout, local, main, self._splash_footer(scene))),
                lambda: canvas.fill(layout.theme.background, main))
        clock_before = self._clock
        self._contained("header", lambda: self._set_clock(self._header(scene.manifest, layout, header, local)),
                        lambda: canvas.fill(layout.theme.background, header))
        if self._clock is None:
            self._clock = clock_before
        if ticker.height:
            canvas.fill(layout.theme.accent, ticker)
            self._ticker.reset_position(mono)  # the strip starts again on the fresh band

    def _splash_footer(self, scene: Scene) -> str:
        """Who the board is and why it shows its own screen, for a technician passing by."""
        why = N_("waiting for content from the source") if scene.manifest is None else N_("no item to show now")
        return f"bangtin-agent · {self.settings.device_id} · {self._words.gettext(why)}"

    def _set_clock(self, box: painters.ClockBox | None) -> None:
        if box is not None:
            self._clock = box

    def _contained(self, zone: str, draw: Callable[[], None], plain: Callable[[], object]) -> None:
        """Draw a zone; if its content breaks it, draw it plain and say so (never a crash, never black)."""
        try:
            draw()
        except (pygame.error, MemoryError, ValueError, OverflowError, SlideError) as exc:
            problem = clip(f"{zone} cannot be drawn: {exc}")
            if self.zone_problems.get(zone) != problem:
                log.warning("%s", problem)
            self.zone_problems[zone] = problem
            plain()
        else:
            self.zone_problems.pop(zone, None)

    def _logo_height(self) -> int:
        header = self._zones[0] if self._zones is not None else pygame.Rect(0, 0, 0, 48)
        return max(1, header.height - 2 * max(6, header.height // 10))

    def _header(self, manifest: Manifest | None, layout: Layout, rect: pygame.Rect,
                local: dt.datetime) -> painters.ClockBox | None:
        logo = None
        self._logo_pending = False
        media = manifest.media_by_id(layout.logo) if manifest is not None else None
        path = self._media.path_for(media.sha256) if media is not None else None
        if path is not None:
            logo, self._logo_pending = self._slides.logo(path, self._logo_height(), layout.theme.background)
        title = self._notice or layout.title or self.settings.splash_title
        return painters.draw_header(self._canvas, self._fonts, self._titles, layout, rect, local, title, logo)

    def _draw_fade(self, main: pygame.Rect, mono: float) -> pygame.Rect:
        old, new = self._fade_from, self._fade_to
        assert old is not None and new is not None
        progress = (mono - self._fade_start) * 1000 / max(1, self.settings.crossfade_ms)
        if progress >= 1.0:
            self._fade_from = self._fade_to = None
            self._canvas.blit(new, main)
            return main
        self._canvas.blit(old, main)
        new.set_alpha(int(255 * progress))
        self._canvas.blit(new, main)
        new.set_alpha(None)
        return main

    # --- presenting ---------------------------------------------------------------------------

    def _present(self, full: bool, dirty: list[pygame.Rect], mono: float) -> bool:
        """Put changed pixels on the screen; False when nothing changed (no frame at all)."""
        screen = self._screen
        assert screen is not None
        if full:
            if self._canvas is not screen:
                screen.blit(pygame.transform.rotate(self._canvas, -self._rotation), (0, 0))
            pygame.display.flip()
        elif dirty:
            if self._canvas is screen:
                pygame.display.update(dirty)
            else:
                logical = self._canvas.get_size()
                updated = []
                for rect in dirty:
                    target = rotate_rect(rect, logical, self._rotation)
                    screen.blit(pygame.transform.rotate(self._canvas.subsurface(rect), -self._rotation), target)
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

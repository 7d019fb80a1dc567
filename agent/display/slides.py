"""Main-zone slides and the header logo, prepared before their turn, never waited for.

Images are checked (pixel limits, from the header) and decoded and scaled on a worker thread
("slide-prep"; SDL_image and the scalers do not touch the window); when one is done the worker
wakes the display loop, which converts it for fast blits. The display thread asks with `poll`,
which never blocks: until a slide is ready the screen keeps what it shows. Text slides need
SDL_ttf, which is not thread-safe, so they are drawn on the display thread when they are named as
upcoming — one item ahead, not at the moment of the switch — and wrapping is fast for any text.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import pygame

from agent.display.images import ImageRefused, check_image_file
from agent.display.text import FontBook, fit_block
from agent.models import Item, Manifest, MediaSource, Theme

log = logging.getLogger(__name__)

KEEP_SLIDES = 3  # the one on screen, the next, one more: a 1080p main zone is ~6.6 MB
PREPARE_TIMEOUT_S = 10.0


class SlideError(Exception):
    """The item cannot be shown; str() says why (reported, item skipped)."""


def fit_image(image: pygame.Surface, size: tuple[int, int], background: tuple[int, int, int]) -> pygame.Surface:
    """Scale to fit inside `size` keeping the aspect ratio; the rest is letterbox in `background`."""
    width, height = size
    source_w, source_h = image.get_size()
    if source_w == 0 or source_h == 0:
        raise SlideError("image has no pixels")
    scale = min(width / source_w, height / source_h)
    scaled_size = (max(1, round(source_w * scale)), max(1, round(source_h * scale)))
    if image.get_bitsize() not in (24, 32):
        # smoothscale needs 24/32-bit pixels; a blit converts palette PNGs without the window.
        deep = pygame.Surface((source_w, source_h), 0, 32)
        deep.blit(image, (0, 0))
        image = deep
    scaled = pygame.transform.smoothscale(image, scaled_size)
    slide = pygame.Surface(size)
    slide.fill(background)
    slide.blit(scaled, ((width - scaled_size[0]) // 2, (height - scaled_size[1]) // 2))
    return slide


def load_image(path: str) -> pygame.Surface:
    """Decode a file whose header passed the pixel limits."""
    try:
        check_image_file(path)
        return pygame.image.load(path)
    except ImageRefused as exc:
        raise SlideError(str(exc)) from None
    except (pygame.error, OSError, MemoryError) as exc:
        raise SlideError(f"cannot decode image: {exc}") from None


def load_image_slide(path: str, size: tuple[int, int], background: tuple[int, int, int]) -> pygame.Surface:
    return fit_image(load_image(path), size, background)


def load_logo(path: str, height: int, background: tuple[int, int, int]) -> pygame.Surface:
    image = load_image(path)
    width, source_h = image.get_size()
    return fit_image(image, (max(1, min(height * 8, round(width * height / max(1, source_h)))), height), background)


def draw_text_slide(fonts: FontBook, item: Item, size: tuple[int, int], theme: Theme) -> pygame.Surface:
    """Title in the accent colour over the body, both fitted to the zone."""
    width, height = size
    pad = max(12, width // 40)
    slide = pygame.Surface(size)
    slide.fill(theme.background)
    inner_w, inner_h = width - 2 * pad, height - 2 * pad
    y = pad
    if item.title:
        title_h = inner_h // 4 if item.body else inner_h
        title = fit_block(fonts, item.title, (inner_w, title_h), theme.accent, bold=True,
                          max_size=max(24, height // 8), align="center")
        slide.blit(title, ((width - title.get_width()) // 2, y))
        y += title.get_height() + pad
        pygame.draw.line(slide, theme.accent, (pad * 3, y - pad // 2), (width - pad * 3, y - pad // 2), 2)
    if item.body:
        body = fit_block(fonts, item.body, (inner_w, max(1, height - pad - y)), theme.foreground,
                         max_size=max(20, height // 10))
        slide.blit(body, (pad, y))
    return slide


class Slides:
    """A small cache of prepared main-zone slides (and logos), keyed by what they depend on."""

    def __init__(self, fonts: FontBook, media: MediaSource, wake: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fonts = fonts
        self._media = media
        self._wake = wake
        self._clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slide-prep")
        self._ready: OrderedDict[tuple[object, ...], pygame.Surface] = OrderedDict()
        self._pending: dict[tuple[object, ...], tuple[concurrent.futures.Future[pygame.Surface], float]] = {}
        self._logos: dict[tuple[str, int, object], concurrent.futures.Future[pygame.Surface]] = {}
        self._logos_reported: set[tuple[str, int, object]] = set()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def clear(self) -> None:
        self._ready.clear()
        self._pending.clear()

    @staticmethod
    def _key(manifest: Manifest, item: Item, size: tuple[int, int]) -> tuple[object, ...]:
        media = manifest.media_by_id(item.media)
        return (item, media.sha256 if media else None, size, manifest.layout.theme)

    def is_preparing(self, manifest: Manifest, item: Item, size: tuple[int, int]) -> bool:
        key = self._key(manifest, item, size)
        return key in self._pending or key in self._ready

    def _submit(self, work: Callable[[], pygame.Surface]) -> concurrent.futures.Future[pygame.Surface]:
        future = self._pool.submit(work)
        future.add_done_callback(lambda _: self._wake())  # the loop takes the result at its next turn
        return future

    def prepare(self, manifest: Manifest, item: Item, size: tuple[int, int]) -> None:
        """Start preparing an item ahead of its turn (safe to call repeatedly)."""
        key = self._key(manifest, item, size)
        if key in self._ready or key in self._pending:
            return
        theme = manifest.layout.theme
        started = self._clock()
        if item.type == "text":
            self._pending[key] = (_done(lambda: draw_text_slide(self._fonts, item, size, theme)), started)
            return
        if item.type != "image":  # videos are played by the renderer's video backend, never as slides
            self._pending[key] = (_done(_raise(SlideError(f"{item.type} items have no slide"))), started)
            return
        media = manifest.media_by_id(item.media)
        path = self._media.path_for(media.sha256) if media else None
        if path is None:
            self._pending[key] = (_done(_raise(SlideError("media not verified in the cache"))), started)
            return
        self._pending[key] = (self._submit(lambda: load_image_slide(path, size, theme.background)), started)

    def poll(self, manifest: Manifest, item: Item, size: tuple[int, int]) -> pygame.Surface | None:
        """The prepared slide, or None while it is being prepared; SlideError when it cannot be."""
        key = self._key(manifest, item, size)
        slide = self._ready.get(key)
        if slide is not None:
            self._ready.move_to_end(key)
            return slide
        self.prepare(manifest, item, size)
        future, started = self._pending[key]
        if not future.done():
            if self._clock() - started > PREPARE_TIMEOUT_S:
                del self._pending[key]
                raise SlideError(f"preparing took longer than {PREPARE_TIMEOUT_S:g} s")
            return None
        del self._pending[key]
        try:
            slide = future.result()
        except SlideError:
            raise
        except Exception as exc:  # noqa: BLE001 — any decoder failure skips the item, never the board
            raise SlideError(f"{type(exc).__name__}: {exc}") from None
        slide = slide.convert() if pygame.display.get_surface() is not None else slide
        self._ready[key] = slide
        while len(self._ready) > KEEP_SLIDES:
            self._ready.popitem(last=False)
        return slide

    def logo(self, path: str, height: int, background: tuple[int, int, int]) -> tuple[pygame.Surface | None, bool]:
        """(the logo or None, whether it is still being decoded). A broken logo is logged once and left out."""
        key = (path, height, background)
        future = self._logos.get(key)
        if future is None:
            if len(self._logos) > 8:
                self._logos.clear()
            future = self._logos[key] = self._submit(lambda: load_logo(path, height, background))
        if not future.done():
            return None, True
        try:
            return future.result(), False
        except Exception as exc:  # noqa: BLE001 — the header is drawn without it
            if key not in self._logos_reported:
                self._logos_reported.add(key)
                log.warning("logo %s cannot be drawn: %s", path, exc)
            return None, False


def _raise(error: Exception) -> Callable[[], pygame.Surface]:
    def fail() -> pygame.Surface:
        raise error
    return fail


def _done(make: Callable[[], pygame.Surface]) -> concurrent.futures.Future[pygame.Surface]:
    """A finished future from work done here and now (text slides, known failures)."""
    future: concurrent.futures.Future[pygame.Surface] = concurrent.futures.Future()
    try:
        future.set_result(make())
    except Exception as exc:  # noqa: BLE001 — delivered through the future like a worker's error
        future.set_exception(exc)
    return future

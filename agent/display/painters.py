"""The board's own pictures: the header (title, logo, clock), the splash, the alert, and the clock.

Plain functions over a canvas; the renderer decides when each is drawn and contains their
failures (a header that cannot be drawn leaves a plain band; an alert that cannot be drawn
leaves a plain red screen with its title — the screen is never dark).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pygame
import segno

from agent.display.text import FontBook, clean, fit_block
from agent.enrolment import EnrolmentCard
from agent.models import Alert, Layout

WEEKDAYS_VI = ("Thứ Hai", "Thứ Ba", "Thứ Tư", "Thứ Năm", "Thứ Sáu", "Thứ Bảy", "Chủ Nhật")
ALERT_RED = (176, 0, 0)
ALERT_YELLOW = (255, 221, 0)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
DEFAULT_ALERT_TITLE = "CẢNH BÁO KHẨN CẤP"


def vietnamese_date(local: dt.datetime) -> str:
    return f"{WEEKDAYS_VI[local.weekday()]}, {local:%d/%m/%Y}"


@dataclass(frozen=True)
class ClockBox:
    """Where the clock is, and how it is painted: "header", "splash" or "alert"."""

    rect: pygame.Rect
    kind: str


def paint_clock(canvas: pygame.Surface, fonts: FontBook, box: ClockBox, layout: Layout,
                local: dt.datetime) -> pygame.Rect:
    rect = box.rect
    if box.kind == "alert":
        canvas.fill(ALERT_RED, rect)
        text = fonts.get(int(rect.height * 0.6), bold=True).render(f"{local:%H:%M:%S}", True, WHITE)
        canvas.blit(text, text.get_rect(center=rect.center))
        return rect
    theme = layout.theme
    canvas.fill(theme.background, rect)
    if box.kind == "splash":
        big = fonts.get(int(rect.height * 0.62), bold=True).render(f"{local:%H:%M:%S}", True, theme.accent)
        canvas.blit(big, big.get_rect(midtop=(rect.centerx, rect.y)))
        date = fonts.get(int(rect.height * 0.2)).render(vietnamese_date(local), True, theme.foreground)
        canvas.blit(date, date.get_rect(midbottom=(rect.centerx, rect.bottom)))
        return rect
    time_text = fonts.get(int(rect.height * 0.36), bold=True).render(f"{local:%H:%M:%S}", True, theme.accent)
    date_text = fonts.get(int(rect.height * 0.2)).render(vietnamese_date(local), True, theme.foreground)
    top = rect.y + (rect.height - time_text.get_height() - date_text.get_height()) // 2
    canvas.blit(time_text, time_text.get_rect(midtop=(rect.centerx, top)))
    canvas.blit(date_text, date_text.get_rect(midtop=(rect.centerx, top + time_text.get_height())))
    return rect


class TitleCache:
    """Fitted titles by (text, box, colour): the header is redrawn at every item change."""

    def __init__(self, fonts: FontBook) -> None:
        self._fonts = fonts
        self._cache: dict[tuple[object, ...], pygame.Surface] = {}

    def get(self, text: str, box: tuple[int, int], colour: tuple[int, int, int], max_size: int) -> pygame.Surface:
        key = (text, box, colour, max_size)
        surface = self._cache.get(key)
        if surface is None:
            if len(self._cache) > 8:
                self._cache.clear()
            surface = self._cache[key] = fit_block(self._fonts, text, box, colour, bold=True, max_size=max_size)
        return surface


def draw_header(canvas: pygame.Surface, fonts: FontBook, titles: TitleCache, layout: Layout, rect: pygame.Rect,
                local: dt.datetime, title: str, logo: pygame.Surface | None) -> ClockBox | None:
    theme = layout.theme
    canvas.fill(theme.background, rect)
    canvas.fill(theme.accent, (rect.x, rect.bottom - 3, rect.width, 3))  # the underline; the clock stays above it
    pad = max(6, rect.height // 10)
    x = pad
    if logo is not None:
        canvas.blit(logo, (x, rect.y + (rect.height - logo.get_height()) // 2))
        x += logo.get_width() + pad
    clock_w = 0
    if layout.clock:  # wide enough for the longest weekday: the box never clips the date
        clock_w = max(fonts.get(int(rect.height * 0.36), bold=True).size("88:88:88")[0],
                      fonts.get(int(rect.height * 0.2)).size("Chủ Nhật, 28/12/2026")[0]) + 2 * pad
    title_box = (max(10, rect.width - x - clock_w - pad), max(1, rect.height - 2 * pad))
    fitted = titles.get(title, title_box, theme.foreground, int(rect.height * 0.42))
    canvas.blit(fitted, (x, rect.y + (rect.height - fitted.get_height()) // 2))
    if not layout.clock:
        return None
    box = ClockBox(pygame.Rect(rect.right - clock_w, rect.y, clock_w, rect.height - 3), "header")
    paint_clock(canvas, fonts, box, layout, local)
    return box


def draw_splash(canvas: pygame.Surface, fonts: FontBook, layout: Layout, local: dt.datetime, main: pygame.Rect,
                footer: str) -> ClockBox:
    """The board's own screen when nothing is playable: title, clock, date — never black."""
    canvas.fill(layout.theme.background, main)
    box = ClockBox(pygame.Rect(main.x, main.y + main.height // 5, main.width, main.height // 2), "splash")
    paint_clock(canvas, fonts, box, layout, local)
    text = fonts.get(max(12, main.height // 30)).render(footer, True, layout.theme.foreground)
    canvas.blit(text, text.get_rect(midbottom=(main.centerx, main.bottom - 8)))
    return box


def grouped_fingerprint(fingerprint: str) -> str:
    """`0123 4567 89ab cdef`: read aloud over the phone, four at a time."""
    return " ".join(fingerprint[i:i + 4] for i in range(0, len(fingerprint), 4))


def draw_qr(canvas: pygame.Surface, text: str, rect: pygame.Rect) -> pygame.Rect:
    """A QR code of `text` (segno), whole modules of at least 2 px with its 4-module quiet zone, as
    large as fits `rect`, centred. Returns where it went."""
    code = segno.make(text, error="m", micro=False)
    rows = list(code.matrix_iter(border=4))
    modules = len(rows)
    module_px = max(2, min(rect.width, rect.height) // modules)
    side = modules * module_px
    area = pygame.Rect(0, 0, side, side)
    area.center = rect.center
    canvas.fill(WHITE, area)
    for y, row in enumerate(rows):
        for x, dark in enumerate(row):
            if dark:
                canvas.fill(BLACK, (area.x + x * module_px, area.y + y * module_px, module_px, module_px))
    return area


def _line(fonts: FontBook, text: str, width: int, size: int, colour: tuple[int, int, int],
          bold: bool = False) -> pygame.Surface:
    """One line of text at `size`, or smaller until it fits `width` (an address or a path can be long)."""
    text = clean(text)
    while size > 10 and fonts.get(size, bold).size(text)[0] > width:
        size = int(size * 0.9)
    return fonts.get(size, bold).render(text, True, colour)


def draw_enrolment(canvas: pygame.Surface, fonts: FontBook, layout: Layout, card: EnrolmentCard,
                   main: pygame.Rect) -> None:
    """The enrolment screen (PROTOCOL.md §12): the board's code as text and QR, its addresses, what
    it waits for and the last refusal. Side by side on a wide screen, stacked on a tall one. No clock
    of its own: the header's ticks (a second one would be a frozen copy)."""
    theme = layout.theme
    canvas.fill(theme.background, main)
    pad = max(8, min(main.size) // 30)
    wide = main.width >= main.height
    qr_side = min(main.height - 2 * pad, main.width // 2 - 2 * pad) if wide else min(main.width - 2 * pad,
                                                                                      main.height // 2 - 2 * pad)
    if wide:
        qr_box = pygame.Rect(main.x + pad, main.y + pad, qr_side, main.height - 2 * pad)
        text_box = pygame.Rect(qr_box.right + pad, main.y + pad, main.right - qr_box.right - 2 * pad, main.height - 2 * pad)
    else:
        qr_box = pygame.Rect(main.x + pad, main.y + pad, main.width - 2 * pad, qr_side)
        text_box = pygame.Rect(main.x + pad, qr_box.bottom + pad, main.width - 2 * pad, main.bottom - qr_box.bottom - 2 * pad)
    if card.qr_text:
        draw_qr(canvas, card.qr_text, pygame.Rect(qr_box.x, qr_box.y, qr_box.width, min(qr_box.height, qr_side)))
    unit = max(12, min(text_box.height // 16, text_box.width // 22))
    lines: list[pygame.Surface] = [
        _line(fonts, "BẢNG TIN CHƯA ĐƯỢC THIẾT LẬP", text_box.width, int(unit * 1.4), theme.accent, bold=True),
        _line(fonts, "Mã bảng tin (khóa nhận dạng):", text_box.width, unit, theme.foreground),
        _line(fonts, grouped_fingerprint(card.fingerprint) or "không có khóa", text_box.width, int(unit * 1.6),
              theme.foreground, bold=True),
        _line(fonts, "Địa chỉ mạng:", text_box.width, unit, theme.foreground),
        *[_line(fonts, address, text_box.width, unit, theme.foreground) for address in card.addresses or ("chưa có mạng",)],
        *[_line(fonts, line, text_box.width, int(unit * 0.8), theme.foreground) for line in card.waiting_for],
    ]
    y = text_box.y
    for surface in lines:
        canvas.blit(surface, (text_box.x, y))
        y += surface.get_height() + unit // 3
    if card.refusal:
        band_h = int(unit * 1.2) * 2 + pad
        band = pygame.Rect(text_box.x, y + unit // 2, text_box.width, band_h)
        canvas.fill(ALERT_RED, band)
        refusal = fit_block(fonts, card.refusal, (band.width - pad, band.height - pad // 2), ALERT_YELLOW, bold=True,
                            max_size=unit)
        canvas.blit(refusal, refusal.get_rect(center=band.center))


def draw_alert(canvas: pygame.Surface, fonts: FontBook, alert: Alert, local: dt.datetime) -> ClockBox:
    """Full screen, red and yellow, over header and ticker: unmistakable."""
    width, height = canvas.get_size()
    pad = max(12, width // 40)
    canvas.fill(ALERT_RED)
    band = pygame.Rect(0, 0, width, height // 4)
    canvas.fill(ALERT_YELLOW, band)
    title = fit_block(fonts, alert.title or DEFAULT_ALERT_TITLE, (width - 2 * pad, band.height - 2 * pad),
                      ALERT_RED, bold=True, max_size=height // 6, align="center")
    canvas.blit(title, title.get_rect(center=band.center))
    clock_h = max(24, height // 12)
    body_rect = pygame.Rect(pad, band.bottom + pad, width - 2 * pad, max(1, height - band.bottom - 2 * pad - clock_h))
    body = fit_block(fonts, alert.body, body_rect.size, WHITE, max_size=height // 9, align="center")
    canvas.blit(body, body.get_rect(midtop=body_rect.midtop))
    box = ClockBox(pygame.Rect(0, height - clock_h, width, clock_h), "alert")
    paint_clock(canvas, fonts, box, Layout(), local)
    return box


def draw_plain_alert(canvas: pygame.Surface, fonts: FontBook) -> None:
    """What is left when an alert cannot be drawn: red, a yellow band, the words everyone knows."""
    width, height = canvas.get_size()
    canvas.fill(ALERT_RED)
    band = pygame.Rect(0, 0, width, height // 4)
    canvas.fill(ALERT_YELLOW, band)
    for bold in (True, False):  # the words if any face can draw them; the colours say it anyway
        try:
            text = fonts.get(max(12, band.height // 3), bold=bold).render(DEFAULT_ALERT_TITLE, True, ALERT_RED)
        except pygame.error:
            continue
        canvas.blit(text, text.get_rect(center=band.center))
        return

"""The ticker band: text scrolling right to left, drawn in bounded tiles.

A ticker may carry a thousand lines of a thousand characters; one surface of that would be tens of
millions of pixels wide (SDL refuses, memory runs out). So the text is cut into short pieces at
word boundaries, and pieces are measured and rendered only as they come into the band: the band
holds a few tiles at a time and a frame costs the same for any length of text. Position follows
elapsed time in whole pixels, so the scroll is smooth whatever the frame rate.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass

import pygame

from agent.display.text import FontBook, clean

PIECE_CHARS = 80
KEEP_TILES = 16


def pieces_of(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """Consecutive pieces of at most `limit` characters, cut after a space where there is one."""
    pieces = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind(" ", limit // 2, limit)
        cut = cut + 1 if cut >= 0 else limit
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces


@dataclass
class _Placed:
    x: int  # position on the endless tape the band slides along
    width: int
    index: int  # which piece; -1 is the gap between two passes


class Ticker:
    def __init__(self, fonts: FontBook) -> None:
        self._fonts = fonts
        self._text: str | None = None
        self._pieces: list[str] = []
        self._tiles: OrderedDict[int, pygame.Surface] = OrderedDict()
        self._placed: deque[_Placed] = deque()
        self._next_x = 0
        self._next_index = 0
        self._start = 0.0
        self._key: object = None

    @property
    def active(self) -> bool:
        return bool(self._pieces)

    def set(self, text: str, band: pygame.Rect, colour: tuple[int, int, int], mono: float) -> None:
        """New text (or band, or colour) starts from the right edge; the same again changes nothing."""
        key = (band.size, colour)
        if (text is self._text or text == self._text) and key == self._key:
            return
        self._text, self._key = text, key
        self._pieces = pieces_of(clean(text)) if text and band.height > 0 else []
        self._tiles.clear()
        self._placed.clear()
        self._next_x, self._next_index, self._start = 0, 0, mono

    def reset_position(self, mono: float) -> None:
        """The band was repainted: start the text again from the right edge."""
        self._placed.clear()
        self._next_x, self._next_index, self._start = 0, 0, mono

    def _font(self, band: pygame.Rect) -> pygame.font.Font:
        return self._fonts.get(int(band.height * 0.6), bold=True)

    def _tile(self, index: int, band: pygame.Rect, colour: tuple[int, int, int]) -> pygame.Surface:
        tile = self._tiles.get(index)
        if tile is None:
            tile = self._font(band).render(self._pieces[index], True, colour)
            self._tiles[index] = tile
            while len(self._tiles) > KEEP_TILES:
                self._tiles.popitem(last=False)
        else:
            self._tiles.move_to_end(index)
        return tile

    def _lay_out(self, travelled: int, band: pygame.Rect) -> None:
        """Place pieces on the tape up to what the band shows now; forget those that left it."""
        font = self._font(band)
        gap = max(band.width // 4, 100)
        while self._next_x <= travelled:
            if self._next_index >= len(self._pieces):
                self._placed.append(_Placed(self._next_x, gap, -1))
                self._next_x += gap
                self._next_index = 0
                continue
            width = max(1, int(font.size(self._pieces[self._next_index])[0]))
            self._placed.append(_Placed(self._next_x, width, self._next_index))
            self._next_x += width
            self._next_index += 1
        while self._placed and self._placed[0].x + self._placed[0].width < travelled - band.width:
            self._placed.popleft()

    def draw(self, canvas: pygame.Surface, band: pygame.Rect, speed_px_s: float, background: tuple[int, int, int],
             colour: tuple[int, int, int], mono: float) -> pygame.Rect:
        """Paint the band at `mono`; returns the rectangle to present."""
        canvas.fill(background, band)
        if not self._pieces:
            return band
        travelled = int((mono - self._start) * speed_px_s)
        if travelled - self._next_x > 10 * max(1, band.width):
            # Not drawn for a long while (the screen was off): start afresh rather than catch up.
            self.reset_position(mono)
            travelled = 0
        self._lay_out(travelled, band)
        canvas.set_clip(band)
        try:
            for placed in self._placed:
                if placed.index < 0:
                    continue
                x = band.x + band.width - travelled + placed.x
                if x >= band.right or x + placed.width <= band.x:
                    continue
                tile = self._tile(placed.index, band, colour)
                canvas.blit(tile, (x, band.y + (band.height - tile.get_height()) // 2))
        finally:
            canvas.set_clip(None)
        return band

    def frame_period_s(self, speed_px_s: float, fps: int) -> float:
        """How often the band needs a frame: at the fps ceiling, or once per pixel when slower."""
        return max(1.0 / fps, 1.0 / max(1.0, speed_px_s)) if math.isfinite(speed_px_s) else 1.0 / fps

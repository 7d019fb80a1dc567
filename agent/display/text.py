"""Vietnamese text with pygame.font (SDL_ttf + HarfBuzz): fonts, wrapping, fitting into a box.

pygame's default font lacks ư, ơ, ạ …, so the agent ships DejaVu Sans (Bitstream Vera licence,
agent/display/fonts/LICENSE-DejaVu.txt), which has every Vietnamese letter. Text is normalised to
NFC before drawing: decomposed input ("Unicode tổ hợp") would otherwise place marks badly.

Wrapping is fast for any input: each word is measured once per size, and a word wider than the
box is cut by bisection (a few measurements per line), so 4000 characters without a space cost
milliseconds. Surfaces never grow past the box they are fitted to.
"""

from __future__ import annotations

import unicodedata
from importlib import resources
from pathlib import Path

import pygame

REGULAR = "DejaVuSans.ttf"
BOLD = "DejaVuSans-Bold.ttf"
LINE_GAP = 0.15


def font_path(name: str) -> Path:
    return Path(str(resources.files("agent.display") / "fonts" / name))


class FontBook:
    """Font objects by (bold, size), opened once: opening a face reads the file."""

    def __init__(self) -> None:
        self._fonts: dict[tuple[bool, int], pygame.font.Font] = {}

    def get(self, size: int, bold: bool = False) -> pygame.font.Font:
        key = (bold, max(6, min(1000, int(size))))
        font = self._fonts.get(key)
        if font is None:
            font = pygame.font.Font(str(font_path(BOLD if bold else REGULAR)), key[1])
            self._fonts[key] = font
        return font


def clean(text: str) -> str:
    """NFC, and no control characters other than newlines (they draw as boxes)."""
    text = unicodedata.normalize("NFC", text)
    return "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch)[0] != "C")


def width_of(font: pygame.font.Font, text: str) -> int:
    return int(font.size(text)[0]) if text else 0


def break_word(font: pygame.font.Font, word: str, width: int) -> list[str]:
    """A word wider than `width`, cut into pieces that fit (at least one character each)."""
    pieces = []
    rest = word
    while rest and width_of(font, rest) > width:
        low, high = 1, len(rest)  # the longest prefix that fits, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if width_of(font, rest[:middle]) <= width:
                low = middle
            else:
                high = middle - 1
        pieces.append(rest[:low])
        rest = rest[low:]
    if rest:
        pieces.append(rest)
    return pieces


def wrap(font: pygame.font.Font, text: str, width: int, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap on spaces; a word wider than the box is broken between letters.

    Stops after `max_lines` (the rest would not be drawn anyway).
    """
    lines: list[str] = []
    space = width_of(font, " ")
    for paragraph in clean(text).split("\n"):
        if max_lines is not None and len(lines) >= max_lines:
            break
        words = paragraph.split()
        if not words:
            lines.append("")
            continue
        line, line_width = "", 0
        for word in words:
            if max_lines is not None and len(lines) >= max_lines:
                break
            word_width = width_of(font, word)
            if word_width > width:
                if line:
                    lines.append(line)
                pieces = break_word(font, word, width)
                lines.extend(pieces[:-1])
                line, line_width = pieces[-1], width_of(font, pieces[-1])
                continue
            joined = line_width + space + word_width if line else word_width
            if joined <= width:
                line, line_width = (f"{line} {word}" if line else word), joined
            else:
                lines.append(line)
                line, line_width = word, word_width
        lines.append(line)
    lines = _settle(font, lines, width)
    return lines[:max_lines] if max_lines is not None else lines


def _settle(font: pygame.font.Font, lines: list[str], width: int) -> list[str]:
    """Measured word by word, a line can come out a pixel or two wider when drawn whole (kerning
    across spaces): such a line gives its last word to the next line."""
    settled: list[str] = []
    queue = list(reversed(lines))
    while queue:
        line = queue.pop()
        if " " in line and width_of(font, line) > width:
            head, last = line.rsplit(" ", 1)
            settled.append(head)
            queue.append(last)
            continue
        settled.append(line)
    return settled


def line_height(font: pygame.font.Font) -> int:
    return int(font.get_linesize() * (1 + LINE_GAP))


def render_lines(
    font: pygame.font.Font,
    lines: list[str],
    colour: tuple[int, int, int],
    align: str = "left",
    max_height: int | None = None,
) -> pygame.Surface:
    """Lines stacked into one transparent surface, no taller than `max_height`."""
    height = font.get_linesize()
    gap = int(height * LINE_GAP)
    if max_height is not None:
        fitting = max(1, (max_height + gap) // (height + gap))
        lines = lines[:fitting]
    rendered = [font.render(line, True, colour) for line in lines]
    width = max((surface.get_width() for surface in rendered), default=1)
    total = max(1, len(rendered) * height + max(0, len(rendered) - 1) * gap)
    if max_height is not None:
        total = min(total, max(1, max_height))
    block = pygame.Surface((max(1, width), total), pygame.SRCALPHA)
    for index, surface in enumerate(rendered):
        x = {"left": 0, "center": (width - surface.get_width()) // 2}.get(align, width - surface.get_width())
        block.blit(surface, (x, index * (height + gap)))
    return block


def fit_block(
    fonts: FontBook,
    text: str,
    box: tuple[int, int],
    colour: tuple[int, int, int],
    *,
    bold: bool = False,
    max_size: int = 96,
    min_size: int = 12,
    align: str = "left",
) -> pygame.Surface:
    """The largest size at which `text`, wrapped, fits `box`; a binary search over sizes.

    At the smallest size, text that still does not fit is cut at the box's bottom, never spilled.
    """
    width, height = max(1, box[0]), max(1, box[1])
    low, high = min_size, max(min_size, min(max_size, height))
    best = min_size
    while low <= high:
        size = (low + high) // 2
        font = fonts.get(size, bold)
        most = height // max(1, line_height(font)) + 1
        lines = wrap(font, text, width, max_lines=most)
        if len(lines) * line_height(font) <= height and len(lines) < most:
            best, low = size, size + 1
        else:
            high = size - 1
    font = fonts.get(best, bold)
    most = height // max(1, line_height(font)) + 1
    return render_lines(font, wrap(font, text, width, max_lines=most), colour, align, max_height=height)

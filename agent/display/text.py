"""Vietnamese text with pygame.font (SDL_ttf + HarfBuzz): fonts, wrapping, fitting into a box.

pygame's default font lacks ư, ơ, ạ …, so the agent ships DejaVu Sans (Bitstream Vera licence,
agent/display/fonts/LICENSE-DejaVu.txt), which has every Vietnamese letter. Text is normalised to
NFC before drawing: decomposed input ("Unicode tổ hợp") would otherwise place marks badly.
"""

from __future__ import annotations

import unicodedata
from importlib import resources
from pathlib import Path

import pygame

REGULAR = "DejaVuSans.ttf"
BOLD = "DejaVuSans-Bold.ttf"


def font_path(name: str) -> Path:
    return Path(str(resources.files("agent.display") / "fonts" / name))


class FontBook:
    """Font objects by (bold, size), opened once: opening a face reads the file."""

    def __init__(self) -> None:
        self._fonts: dict[tuple[bool, int], pygame.font.Font] = {}

    def get(self, size: int, bold: bool = False) -> pygame.font.Font:
        key = (bold, max(6, int(size)))
        font = self._fonts.get(key)
        if font is None:
            font = pygame.font.Font(str(font_path(BOLD if bold else REGULAR)), key[1])
            self._fonts[key] = font
        return font


def clean(text: str) -> str:
    """NFC, and no control characters other than newlines (they draw as boxes)."""
    text = unicodedata.normalize("NFC", text)
    return "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch)[0] != "C")


def wrap(font: pygame.font.Font, text: str, width: int) -> list[str]:
    """Greedy word wrap on spaces; a word wider than the box is broken between letters."""
    lines: list[str] = []
    for paragraph in clean(text).split("\n"):
        words = paragraph.split()
        if not words:
            lines.append("")
            continue
        line = ""
        for word in words:
            candidate = f"{line} {word}" if line else word
            if font.size(candidate)[0] <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = word
            while font.size(line)[0] > width and len(line) > 1:
                cut = len(line)
                while cut > 1 and font.size(line[:cut])[0] > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def render_lines(
    font: pygame.font.Font,
    lines: list[str],
    colour: tuple[int, int, int],
    align: str = "left",
    line_gap: float = 0.15,
) -> pygame.Surface:
    """Lines stacked into one transparent surface."""
    height = font.get_linesize()
    gap = int(height * line_gap)
    rendered = [font.render(line, True, colour) for line in lines]
    width = max((surface.get_width() for surface in rendered), default=1)
    total = max(1, len(rendered) * height + max(0, len(rendered) - 1) * gap)
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
    """The largest size at which `text`, wrapped, fits `box`; a binary search over sizes."""
    width, height = box
    low, high = min_size, max(min_size, max_size)
    best = min_size
    while low <= high:
        size = (low + high) // 2
        font = fonts.get(size, bold)
        lines = wrap(font, text, width)
        needed = len(lines) * font.get_linesize() * 1.15
        if needed <= height and all(font.size(line)[0] <= width for line in lines):
            best, low = size, size + 1
        else:
            high = size - 1
    font = fonts.get(best, bold)
    block = render_lines(font, wrap(font, text, width), colour, align)
    if block.get_height() > height:  # even the smallest size overflows: cut, never spill
        block = block.subsurface((0, 0, block.get_width(), height)).copy()
    return block

"""The test bulletin: real PNG and JPEG files (pygame's encoders), each item one recognisable colour
so the screen read back from the VM says which item is showing, and a big low-noise PNG for the
starved-link download (incompressible, yet one colour to the eye and to the pixel check).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from systemtest.screen import Colour, Look, hex_colour
from systemtest.source import DEVICE

THEME = {"background": "#0B3D91", "foreground": "#FFFFFF", "accent": "#FFD200"}
ITEMS: dict[str, tuple[Colour, str]] = {  # item id -> colour, file type
    "i1": ((200, 40, 40), "png"),
    "i2": ((40, 150, 70), "jpg"),
    "i3": ((130, 60, 170), "png"),
}
BIG_ITEM = "big"
BIG_COLOUR: Colour = (230, 120, 20)
MAIN_SIZE = (1280, 587)  # the main zone of a 1280x720 screen with a ticker


def _pygame() -> Any:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    return pygame


def solid_image(path: Path, colour: Colour, size: tuple[int, int] = MAIN_SIZE) -> Path:
    pygame = _pygame()
    surface = pygame.Surface(size)
    surface.fill(colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    pygame.image.save(surface, str(path))
    return path


def noisy_image(path: Path, colour: Colour, min_bytes: int, seed: int, amplitude: int = 12) -> Path:
    """A PNG of `colour` with per-pixel noise of ±amplitude, shaped like the main zone (no letterbox):
    at least `min_bytes` on disk."""
    pygame = _pygame()
    rng = random.Random(seed)
    aspect = MAIN_SIZE[0] / MAIN_SIZE[1]
    pixels_wanted = min_bytes / 1.95  # PNG of this noise: ~1.96 bytes per pixel
    while True:
        height = int((pixels_wanted / aspect) ** 0.5)
        width = int(height * aspect)
        noise = rng.randbytes(width * height * 3)
        pixels = bytearray(len(noise))
        for channel in range(3):  # per-channel lookup tables: fast for megapixels
            table = bytes(max(0, min(255, colour[channel] + b % (2 * amplitude + 1) - amplitude)) for b in range(256))
            pixels[channel::3] = noise[channel::3].translate(table)
        surface = pygame.image.frombuffer(bytes(pixels), (width, height), "RGB")
        path.parent.mkdir(parents=True, exist_ok=True)
        pygame.image.save(surface, str(path))
        if path.stat().st_size >= min_bytes:
            return path
        pixels_wanted *= min_bytes / path.stat().st_size * 1.02


def look() -> Look:
    return Look(hex_colour(THEME["background"]), hex_colour(THEME["foreground"]), hex_colour(THEME["accent"]),
                {item: colour for item, (colour, _) in ITEMS.items()} | {BIG_ITEM: BIG_COLOUR})


def make_files(folder: Path) -> dict[str, Path]:
    return {f"{item}.{kind}": solid_image(folder / f"{item}.{kind}", colour) for item, (colour, kind) in ITEMS.items()}


def manifest(files: dict[str, Path], duration_s: float = 4, extra_media: list[tuple[str, Path, bool]] | None = None,
             ) -> dict[str, Any]:
    """The board's manifest: header with clock, three items, a ticker; `extra_media` adds items
    (id, file, playable) — a never-playable one only makes the board download."""
    media = [{"id": f"m-{name.split('.')[0]}", "url": name} for name in files]
    items: list[dict[str, Any]] = [
        {"id": name.split(".")[0], "type": "image", "media": f"m-{name.split('.')[0]}", "duration_s": duration_s,
         "title": f"Thông báo {name.split('.')[0]}"} for name in files]
    for item_id, path, playable in extra_media or []:
        media.append({"id": f"m-{item_id}", "url": path.name})
        entry: dict[str, Any] = {"id": item_id, "type": "image", "media": f"m-{item_id}", "duration_s": duration_s,
                                 "title": "Bản tin lớn"}
        if not playable:
            entry["when"] = {"from": "2099-01-01T00:00:00+07:00"}  # downloaded, never shown
        items.append(entry)
    return {
        "audience": [DEVICE],
        "timezone": "Asia/Ho_Chi_Minh",
        "layout": {"header": {"title": "ỦY BAN NHÂN DÂN XÃ THỬ NGHIỆM", "clock": True}, "theme": THEME,
                   "ticker": {"speed_px_s": 120}},
        "media": media,
        "items": items,
        "ticker": [{"id": "t1", "text": "Người dân chủ động phòng chống bão số 3 — kiểm tra hệ thống bảng tin"}],
    }

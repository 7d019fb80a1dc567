"""Rendering under the SDL dummy driver, checked by pixels: fonts, zones, ticker, rotation, alerts."""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygame
import pytest

from agent.cache.store import MediaStore
from agent.display.pyav import PyAVBackend
from agent.display.renderer import DisplaySettings, Frame, Renderer, rotate_rect
from agent.display.text import FontBook, fit_block, wrap
from agent.manifest import accept_manifest
from agent.models import Alert, Manifest, Scene
from tests.conftest import base_manifest, media_entry, near, wait_for, write_png

BLUE, WHITE, YELLOW = (0x0B, 0x3D, 0x91), (0xFF, 0xFF, 0xFF), (0xFF, 0xD2, 0x00)
T0 = dt.datetime(2026, 11, 26, 2, 0, 0, 500000, tzinfo=dt.UTC)
TONES = ("", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323")
VOWELS = ("a", "ă", "â", "e", "ê", "i", "o", "ô", "ơ", "u", "ư", "y")


def vietnamese_letters() -> list[str]:
    """The 134 non-ASCII Vietnamese letters, each one precomposed code point."""
    lower = [unicodedata.normalize("NFC", v + t) for v in VOWELS for t in TONES]
    lower = [letter for letter in lower if not letter.isascii()] + ["đ"]
    letters = lower + [letter.upper() for letter in lower]
    assert all(len(letter) == 1 for letter in letters)
    return letters


def glyph_problems(font: pygame.font.Font, letters: list[str]) -> list[str]:
    """Letters whose glyph is empty, or identical to another letter's (a missing-glyph box)."""
    problems, seen = [], {}
    for letter in letters:
        surface = font.render(letter, True, (0, 0, 0), (255, 255, 255))
        pixels = pygame.image.tobytes(surface, "RGB")
        if len(set(pixels)) < 2:
            problems.append(f"{letter!r} renders empty")
        elif pixels in seen:
            problems.append(f"{letter!r} renders like {seen[pixels]!r}")
        seen.setdefault(pixels, letter)
    return problems


@pytest.fixture(scope="module", autouse=True)
def pygame_display() -> Iterator[None]:
    pygame.display.init()
    pygame.font.init()
    yield
    pygame.display.quit()


def test_all_134_vietnamese_letters_have_distinct_glyphs_in_the_bundled_fonts() -> None:
    letters = vietnamese_letters()
    assert len(letters) == 134 and len(set(letters)) == 134
    fonts = FontBook()
    for bold in (False, True):
        assert glyph_problems(fonts.get(40, bold), letters) == []


def test_the_glyph_check_catches_a_font_without_vietnamese() -> None:
    """pygame's default font lacks ư, ơ, ạ …: the check above must be able to fail."""
    problems = glyph_problems(pygame.font.Font(None, 40), vietnamese_letters())
    assert any("'ư'" in p or "'ạ'" in p for p in problems)


def test_wrap_and_fit_keep_text_inside_the_box() -> None:
    fonts = FontBook()
    body = "Ủy ban nhân dân xã Vĩnh Thuận thông báo: từ ngày 01/12/2026 bộ phận Một cửa tiếp nhận hồ sơ trực tuyến. " * 3
    for size in ((300, 200), (900, 120), (120, 400)):
        block = fit_block(fonts, body, size, WHITE, max_size=80)
        assert block.get_width() <= size[0] and block.get_height() <= size[1]
    lines = wrap(fonts.get(30), "Ngườiiiiiiiiiiiiiiiiiiiiiiiii dân", 120)
    assert all(fonts.get(30).size(line)[0] <= 120 for line in lines)
    decomposed = unicodedata.normalize("NFD", "Người dân")
    assert wrap(fonts.get(30), decomposed, 500) == ["Người dân"]


def parse(**changes: Any) -> Manifest:
    raw = json.dumps(base_manifest(1, **changes)).encode()
    return accept_manifest(raw, keys=(), device_id="b1", groups=(), last_serial=None)


class Board:
    """A renderer with a verified store, as main.py builds it."""

    def __init__(self, tmp_path: Path, width: int = 320, height: int = 180) -> None:
        self.tmp_path = tmp_path
        self.store = MediaStore(tmp_path / "store")
        self.store.open()
        self.renderer = Renderer(DisplaySettings(width, height, False, 30, 0, "BẢNG TIN", "b1"), self.store,
                                 PyAVBackend())
        self.renderer.open()

    def render(self, scene: Scene, now: dt.datetime, mono: float) -> Frame:
        """Render until the scene's picture is ready (decoding happens on a worker; the loop is woken)."""
        frames: list[Frame] = []

        def drawn() -> bool:
            frames.append(self.renderer.render(scene, now, mono))
            return not frames[-1].waiting

        wait_for(drawn, timeout=10, interval=0.01, what="the scene to be drawn")
        return frames[-1]

    def add_png(self, name: str, size: tuple[int, int], colour: tuple[int, int, int]) -> dict[str, Any]:
        path = write_png(self.tmp_path / name, size, colour)
        entry = media_entry(path, name.split(".")[0], "image/png")
        self.store.import_file(path, entry["sha256"], entry["size"], name)
        return entry

    def shot(self) -> pygame.Surface:
        return self.renderer.screenshot()

    def close(self) -> None:
        self.renderer.close()
        pygame.display.init()
        pygame.font.init()


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    b = Board(tmp_path)
    yield b
    b.close()



def test_image_is_scaled_to_fit_with_letterbox(board: Board) -> None:
    red = board.add_png("m1.png", (400, 100), (220, 20, 20))  # wider than the zone's aspect
    m = parse(media=[red], items=[{"id": "i1", "type": "image", "media": "m1", "duration_s": 5}])
    frame = board.render(Scene("item", m, item=m.items[0], showing_id="s1"), T0, 0.0)
    assert frame.failed_showing is None
    shot = board.shot()
    header_h = max(48, round(180 * 0.11))
    main_mid = header_h + (180 - header_h) // 2
    assert near(shot.get_at((160, main_mid)), (220, 20, 20))  # image in the middle
    assert near(shot.get_at((160, header_h + 3)), BLUE)  # letterbox band above it
    assert near(shot.get_at((2, 2)), BLUE)  # header


def test_text_item_draws_title_in_accent_and_body(board: Board) -> None:
    m = parse(items=[{"id": "t", "type": "text", "title": "THÔNG BÁO", "body": "Người dân chú ý.", "duration_s": 5}])
    board.render(Scene("item", m, item=m.items[0], showing_id="s1"), T0, 0.0)
    shot = board.shot()
    main = [shot.get_at((x, y)) for x in range(0, 320, 2) for y in range(60, 170, 2)]
    assert sum(near(p, YELLOW, 40) for p in main) > 20  # title strokes
    assert sum(near(p, WHITE, 40) for p in main) > 20  # body strokes


def test_splash_is_never_black_and_its_clock_ticks(board: Board) -> None:
    board.render(Scene("splash", None), T0, 0.0)
    first = board.shot()
    assert near(first.get_at((5, 100)), BLUE)
    frames = board.renderer.frames
    board.render(Scene("splash", None), T0 + dt.timedelta(milliseconds=100), 0.1)
    assert board.renderer.frames == frames  # same second, nothing changed: nothing presented
    board.render(Scene("splash", None), T0 + dt.timedelta(seconds=1), 1.0)
    assert board.renderer.frames == frames + 1
    assert pygame.image.tobytes(first, "RGB") != pygame.image.tobytes(board.shot(), "RGB")


def test_ticker_scrolls_and_only_its_band_changes(board: Board) -> None:
    m = parse(items=[{"id": "t", "type": "text", "title": "X", "duration_s": 5}], ticker=[{"id": "k", "text": "Bão số 3"}],
              layout={"ticker": {"speed_px_s": 100}, "header": {"title": "XÃ", "clock": False}})
    scene = Scene("item", m, item=m.items[0], ticker_text="Bão số 3", showing_id="s1")
    frame = board.render(scene, T0, 0.0)
    assert frame.next_change == pytest.approx(1 / 30)  # the ticker needs frames
    before = board.shot()
    board.render(scene, T0 + dt.timedelta(milliseconds=500), 1.0)
    after = board.shot()
    band_top = 180 - max(32, round(180 * 0.075))
    changed_rows = {y for y in range(180) for x in range(0, 320, 3) if before.get_at((x, y)) != after.get_at((x, y))}
    assert changed_rows, "the ticker did not move"
    assert min(changed_rows) >= band_top


def test_rotation_90_puts_the_header_on_the_right(tmp_path: Path) -> None:
    board = Board(tmp_path, 180, 320)  # a portrait screen
    try:
        m = parse(items=[{"id": "t", "type": "text", "title": "A", "duration_s": 5}], ticker=[{"id": "k", "text": "x"}],
                  layout={"rotation": 90, "header": {"title": "XÃ", "clock": False},
                          "theme": {"background": "#102030", "foreground": "#FFFFFF", "accent": "#00FF00"}})
        board.render(Scene("item", m, item=m.items[0], ticker_text="", showing_id="s1"), T0, 0.0)
        shot = board.shot()
        # Logical canvas is 320x180 (landscape); clockwise 90° → header (top) on the right, ticker (bottom) on the left.
        # The header's accent underline (logical y 44-46 of a 48 px header) lands at physical x 133-135.
        assert any(near(shot.get_at((x, 160)), (0, 255, 0)) for x in range(131, 138))
        assert not any(near(shot.get_at((x, 160)), (0, 255, 0)) for x in range(36, 80))  # main zone: no accent there
        assert near(shot.get_at((178, 160)), (0x10, 0x20, 0x30))  # header background at the right edge
        assert near(shot.get_at((3, 160)), (0, 255, 0))  # ticker band, accent colour, on the left
    finally:
        board.close()
    assert rotate_rect(pygame.Rect(0, 0, 10, 5), (320, 180), 90) == pygame.Rect(175, 0, 5, 10)
    assert rotate_rect(pygame.Rect(0, 0, 10, 5), (320, 180), 180) == pygame.Rect(310, 175, 10, 5)
    assert rotate_rect(pygame.Rect(0, 0, 10, 5), (320, 180), 270) == pygame.Rect(0, 310, 5, 10)


def test_screen_off_is_black_and_alert_is_red(board: Board) -> None:
    board.render(Scene("off", None), T0, 0.0)
    shot = board.shot()
    assert all(shot.get_at((x, y))[:3] == (0, 0, 0) for x in range(0, 320, 16) for y in range(0, 180, 16))
    alert = Alert("c1", "CẢNH BÁO KHẨN CẤP", "Bão số 3 đổ bộ", until=T0 + dt.timedelta(hours=1))
    board.render(Scene("alert", None, alert=alert, showing_id="a"), T0, 0.1)
    shot = board.shot()
    assert near(shot.get_at((5, 100)), (176, 0, 0))
    assert near(shot.get_at((5, 5)), (255, 221, 0))


def test_undecodable_image_is_reported_and_the_screen_keeps_its_frame(board: Board) -> None:
    good = board.add_png("good.png", (64, 36), (10, 200, 10))
    garbage = board.tmp_path / "bad.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    bad = media_entry(garbage, "bad", "image/png")
    board.store.import_file(garbage, bad["sha256"], bad["size"], "bad")
    m = parse(media=[good, bad], items=[{"id": "g", "type": "image", "media": "good", "duration_s": 5},
                                        {"id": "b", "type": "image", "media": "bad", "duration_s": 5}])
    board.render(Scene("item", m, item=m.items[0], showing_id="s1"), T0, 0.0)
    before = pygame.image.tobytes(board.shot(), "RGB")
    frame = board.render(Scene("item", m, item=m.items[1], showing_id="s2"), T0, 0.5)
    assert frame.failed_showing == "s2" and "cannot decode image" in frame.failure
    assert pygame.image.tobytes(board.shot(), "RGB") == before


def test_upcoming_item_is_prepared_before_its_turn(board: Board) -> None:
    red = board.add_png("m1.png", (64, 36), (220, 20, 20))
    green = board.add_png("m2.png", (64, 36), (20, 220, 20))
    m = parse(media=[red, green], items=[{"id": "a", "type": "image", "media": "m1", "duration_s": 5},
                                         {"id": "b", "type": "image", "media": "m2", "duration_s": 5}])
    board.render(Scene("item", m, item=m.items[0], upcoming=m.items[1], showing_id="s1"), T0, 0.0)
    assert board.renderer.is_preparing(m, m.items[1])  # decoding started while "a" is shown
    board.render(Scene("item", m, item=m.items[1], showing_id="s2"), T0, 5.0)
    assert near(board.shot().get_at((160, 110)), (20, 220, 20))


def test_logo_is_drawn_in_the_header(board: Board) -> None:
    logo = board.add_png("logo.png", (40, 40), (200, 16, 46))
    m = parse(media=[logo], layout={"header": {"title": "XÃ", "logo": "logo", "clock": True}})
    header_h = max(48, round(180 * 0.11))

    def logo_drawn() -> bool:
        board.render(Scene("splash", m), T0, 0.0)  # the logo is decoded on a worker, then the header redrawn
        return near(board.shot().get_at((10, header_h // 2)), (200, 16, 46))

    wait_for(logo_drawn, timeout=5, what="the logo in the header")


def test_crossfade_blends_old_and_new_slides(tmp_path: Path) -> None:
    board = Board(tmp_path)
    board.renderer.settings = DisplaySettings(320, 180, False, 30, 400, "BẢNG TIN", "b1")
    try:
        red = board.add_png("m1.png", (64, 36), (240, 0, 0))
        green = board.add_png("m2.png", (64, 36), (0, 240, 0))
        m = parse(media=[red, green], items=[{"id": "a", "type": "image", "media": "m1", "duration_s": 5},
                                             {"id": "b", "type": "image", "media": "m2", "duration_s": 5}])
        board.render(Scene("item", m, item=m.items[0], showing_id="s1"), T0, 10.0)
        scene = Scene("item", m, item=m.items[1], showing_id="s2")
        frame = board.render(scene, T0, 20.0)
        assert frame.next_change == pytest.approx(20.0 + 1 / 30)  # fading needs frames
        board.render(scene, T0, 20.2)  # half-way
        r, g, _ = tuple(board.shot().get_at((160, 110)))[:3]
        assert 60 < r < 180 and 60 < g < 180
        board.render(scene, T0, 20.5)  # done
        assert near(board.shot().get_at((160, 110)), (0, 240, 0))
        assert board.render(scene, T0, 20.6).next_change > 20.6 + 1 / 30  # still again
    finally:
        board.close()


def test_splash_without_a_manifest_shows_vietnamese_time(board: Board) -> None:
    """Before any manifest, the clock is in the protocol's default zone, Asia/Ho_Chi_Minh."""
    header_h = max(48, round(180 * 0.11))

    def main_zone() -> bytes:
        # Above the footer line, which says why the splash is up (no manifest yet / nothing to play).
        return pygame.image.tobytes(board.shot().subsurface((0, header_h, 320, 180 - header_h - 24)), "RGB")

    board.render(Scene("splash", None), T0, 0.0)  # T0 is 02:00 UTC, 09:00 in Vietnam
    without_manifest = main_zone()
    board.render(Scene("splash", parse(timezone="Asia/Ho_Chi_Minh")), T0, 0.1)
    assert main_zone() == without_manifest
    board.render(Scene("splash", parse(timezone="UTC")), T0, 0.2)
    assert main_zone() != without_manifest
    # Header underline runs the full width, under the clock too.
    assert near(board.shot().get_at((318, header_h - 2)), YELLOW)


def test_a_rotation_change_while_the_new_picture_is_prepared_draws_nothing_half(board: Board) -> None:
    """Found by the renderer fuzzer: the old scene's clock and ticker were painted on the new, turned
    canvas while the new slide was still decoding (a rectangle outside the canvas, an exception)."""
    # Big enough that decoding takes milliseconds: the render right after submitting it finds it unfinished.
    red = board.add_png("m1.png", (2400, 1350), (220, 20, 20))
    flat = parse(items=[{"id": "t", "type": "text", "title": "A", "duration_s": 5}], ticker=[{"id": "k", "text": "x"}])
    board.render(Scene("item", flat, item=flat.items[0], ticker_text="x", showing_id="s1"), T0, 0.0)
    turned = parse(media=[red], items=[{"id": "i", "type": "image", "media": "m1", "duration_s": 5}],
                   ticker=[{"id": "k", "text": "x"}], layout={"rotation": 90})
    scene = Scene("item", turned, item=turned.items[0], ticker_text="x", showing_id="s2")
    frame = board.renderer.render(scene, T0 + dt.timedelta(seconds=1), 1.0)  # the slide is still decoding
    assert frame.waiting and frame.failed_showing is None
    assert not board.render(scene, T0 + dt.timedelta(seconds=2), 2.0).waiting

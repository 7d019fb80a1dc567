"""The renderer fuzzer, run in a process of its own (tests/test_fuzz.py starts it).

    python -m tests.fuzz_render --examples 40 --work DIR

Generates manifests that pass acceptance but push every limit (texts at their maximum length in
hostile characters, a thousand ticker lines, rotations, images up to the pixel limits, videos,
alerts), and drives the real Player and Renderer through them under the SDL dummy driver with the
address space capped (resource.setrlimit). Exits 1 on any exception or on a frame that takes more
than a second; prints the failing example so it can be kept as a regression @example.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import pygame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cache.store import MediaStore
from agent.content import Snapshot
from agent.display.pyav import PyAVBackend
from agent.display.renderer import DisplaySettings, Renderer
from agent.health import Problems
from agent.manifest import accept_manifest
from agent.models import Alert, Manifest, PlayRecord
from agent.player import Player
from tests.video_files import make_mp4

MEMORY_LIMIT = 3 * 1024**3  # address space: room for a 40-megapixel decode, not for a runaway
FRAME_LIMIT_S = 1.0
T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)
CHARS = "ươạđỦỹ\u0300\u0301\u0323\u200b\u200d\u202e\ufeff 𝕍😀中-—"
texts = st.text(alphabet=st.sampled_from(CHARS) | st.characters(blacklist_categories=("Cs",)), max_size=40)


def sized(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(texts, st.builds(lambda unit, n: (unit * n)[:limit], texts.filter(bool), st.integers(1, limit)))


class Records:
    def add(self, records: list[PlayRecord]) -> None:
        pass


class Board:
    def __init__(self, work: Path, size: tuple[int, int]) -> None:
        self.store = MediaStore(work / "media")
        self.store.open()
        self.renderer = Renderer(DisplaySettings(size[0], size[1], False, 30, 300, "BẢNG TIN", "fuzz"), self.store,
                                 PyAVBackend())
        self.renderer.open()
        self.media: dict[object, dict[str, Any]] = {}  # by picture size, or ("video", kind)
        self.work = work

    def video(self, kind: str) -> dict[str, Any]:
        """A real MP4 in the verified store: short, odd-sized, or cut in half (a broken download the
        province signed anyway); made once per kind."""
        key = ("video", kind)
        if key not in self.media:
            path = self.work / f"video-{kind}.mp4"
            size = (96, 320) if kind == "odd" else (160, 90)  # portrait into a landscape zone
            make_mp4(path, [(200, 40, 40), (40, 40, 200)], seconds_each=0.2, fps=10, size=size)
            if kind == "truncated":
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            self.media[key] = self._stored(path, "video/mp4")
        return self.media[key]

    def image(self, size: tuple[int, int]) -> dict[str, Any]:
        """A real PNG of that size in the verified store (made once per size)."""
        if size not in self.media:
            path = self.work / f"img-{size[0]}x{size[1]}.png"
            surface = pygame.Surface(size)
            surface.fill((size[0] % 256, size[1] % 256, 90))
            pygame.image.save(surface, str(path))
            self.media[size] = self._stored(path, "image/png")
        return self.media[size]

    def _stored(self, path: Path, mime: str) -> dict[str, Any]:
        """`path` imported into the verified store; its manifest media entry."""
        data = path.read_bytes()
        entry = {"id": f"m{len(self.media)}", "url": path.name, "sha256": hashlib.sha256(data).hexdigest(),
                 "size": len(data), "type": mime}
        self.store.import_file(path, entry["sha256"], entry["size"], entry["id"])
        return entry


@st.composite
def manifests(draw: st.DrawFn, board: Board) -> dict[str, Any]:
    images = [board.image(draw(st.sampled_from([(1, 1), (64, 3000), (3000, 64), (1920, 1080), (4096, 4096),
                                                 (8192, 600)]))) for _ in range(draw(st.integers(0, 2)))]
    videos = [board.video(draw(st.sampled_from(["plain", "odd", "truncated"]))) for _ in range(draw(st.integers(0, 1)))]
    media = {entry["id"]: entry for entry in images}
    items: list[dict[str, Any]] = []
    for n in range(draw(st.integers(1, 6))):
        if videos and draw(st.booleans()):
            duration = draw(st.none() | st.floats(0.05, 3))
            items.append({"id": f"i{n}", "type": "video", "media": videos[0]["id"],
                          **({"duration_s": duration} if duration is not None else {})})
        elif images and draw(st.booleans()):
            items.append({"id": f"i{n}", "type": "image", "media": draw(st.sampled_from(sorted(media))),
                          "duration_s": draw(st.floats(0.05, 3)), "priority": draw(st.sampled_from(
                              ["normal", "high", "emergency"]))})
        else:
            items.append({"id": f"i{n}", "type": "text", "title": draw(sized(200)) or "X", "body": draw(sized(4000)),
                          "duration_s": draw(st.floats(0.05, 3))})
    ticker_lines = draw(st.integers(0, 1000))
    line = draw(sized(1000)) or "x"
    return {
        "schema": "bangtin.manifest/1", "serial": 1, "issued_at": "2026-11-26T08:00:00+07:00",
        "layout": {"header": {"title": draw(sized(200)), "clock": draw(st.booleans()),
                              **({"logo": draw(st.sampled_from(sorted(media)))} if media else {})},
                   "ticker": {"speed_px_s": draw(st.floats(1, 2000))},
                   "rotation": draw(st.sampled_from([0, 90, 180, 270]))},
        "media": list(media.values()) + videos, "items": items,
        "ticker": [{"id": f"k{n}", "text": line} for n in range(ticker_lines)],
    }


def regressions() -> list[tuple[dict[str, Any], tuple[str, str] | None]]:
    """Kept examples, run before the generated ones: each froze the loop on 8bde1ac (issue 10)."""
    def manifest(items: list[dict[str, Any]], ticker: list[str], title: str = "UBND") -> dict[str, Any]:
        return {"schema": "bangtin.manifest/1", "serial": 1, "issued_at": "2026-11-26T08:00:00+07:00",
                "layout": {"header": {"title": title, "clock": True}, "ticker": {"speed_px_s": 2000}},
                "media": [], "items": items, "ticker": [{"id": f"k{n}", "text": t} for n, t in enumerate(ticker)]}

    text = {"id": "t", "type": "text", "title": "Thông báo", "body": "đ" * 4000, "duration_s": 1}
    return [
        (manifest([text], []), None),  # a 4000-character word: wrapping stepped back one character at a time
        (manifest([text], ["-" * 1000] * 1000), None),  # the longest ticker the limits allow, unbroken
        (manifest([text], [], title="Ư" * 200), ("a", "-" * 4000)),  # an unbroken alert body froze the loop ~37 s
    ]


class Fixed:
    def __init__(self, manifest: Manifest, verified: frozenset[str]) -> None:
        self._snapshot = Snapshot(manifest, verified, 1)

    def snapshot(self) -> Snapshot:
        return self._snapshot


def drive(board: Board, document: dict[str, Any], alert_text: tuple[str, str] | None) -> int:
    raw = json.dumps(document, ensure_ascii=False).encode()
    manifest = accept_manifest(raw, keys=(), device_id="fuzz", groups=(), last_serial=None)
    player = Player(Fixed(manifest, board.store.verified()), Records(), Problems())
    if alert_text is not None:
        player.add_alert(Alert("a", alert_text[0], alert_text[1], T0 + dt.timedelta(seconds=2)))
    frames = 0
    mono = 0.0
    for _ in range(60):
        mono += 0.05
        now = T0 + dt.timedelta(seconds=mono)
        scene = player.update(now, mono)
        started = time.monotonic()
        frame = board.renderer.render(scene, now, mono)
        took = time.monotonic() - started
        if took > FRAME_LIMIT_S:
            raise AssertionError(f"one frame took {took:.2f} s (scene {scene.mode}, item {scene.item and scene.item.id})")
        if frame.failed_showing is not None:
            player.item_failed(frame.failed_showing, frame.failure, now, mono)
        if frame.waiting:
            time.sleep(0.01)  # a worker is decoding: give it the CPU, as the loop's wait would
        frames += 1
    return frames


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    pygame.display.init()
    pygame.font.init()
    total = [0]
    args.work.mkdir(parents=True, exist_ok=True)
    board = Board(args.work, (640, 360))  # one window per process (SDL); rotation covers portrait screens

    @settings(max_examples=args.examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def run(data: st.DataObject) -> None:
        document = data.draw(manifests(board))
        alert = data.draw(st.none() | st.tuples(sized(200), sized(4000)))
        total[0] += drive(board, document, alert)

    try:
        for document, alert in regressions():  # inputs that once froze or crashed the board, first
            total[0] += drive(board, document, alert)
        run()
    finally:
        board.renderer.close()
    print(f"frames rendered: {total[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

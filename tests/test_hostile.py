"""Input an attacker (or a mistaken publisher) sends, as issue 10 found it: each is refused or contained.

PROTOCOL.md v1.1 §3, §7, §8, §10. Parsers and the renderer are also fuzzed in test_fuzz.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pygame
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cache.store import MediaStore
from agent.config import ConfigError, load_config
from agent.content import Content
from agent.ctlsocket import ControlServer, parse_request
from agent.display.pyav import PyAVBackend
from agent.display.renderer import DisplaySettings, Frame, Renderer
from agent.display.text import FontBook, wrap
from agent.envelope import load_trusted_keys
from agent.files import atomic_write
from agent.health import Problems
from agent.manifest import accept_manifest
from agent.models import InputRejected, ManifestRejected, Scene
from agent.sync.filesource import FileSource
from agent.sync.http import HttpSettings, HttpSource
from refsource.server import Faults, ReferenceServer, SourceState
from tests.conftest import (
    ROOT,
    VECTORS,
    ContentFolder,
    RunningAgent,
    base_manifest,
    media_entry,
    near,
    sign_manifest,
    wait_for,
    write_config,
    write_png,
)
from tests.test_video import opened_renderer

DEVICE = "vinhthuan-ubnd-01"
T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


def accept(document: Any, keys: Any = (), last: int | None = None) -> Any:
    raw = document if isinstance(document, bytes) else json.dumps(document, ensure_ascii=False).encode()
    return accept_manifest(raw, keys=keys, device_id=DEVICE, groups=("angiang",), last_serial=last)


def text_item(item_id: str = "t", **extra: Any) -> dict[str, Any]:
    return {"id": item_id, "type": "text", "title": "THÔNG BÁO", "body": "Nội dung", "duration_s": 10, **extra}


# --- manifests: §10 limits, refused with the limit named ------------------------------------------


@pytest.mark.parametrize(("document", "reason"), [
    (b'{"schema": "bangtin.manifest/1", "serial": 1, "layout": {"ticker": {"speed_px_s": Infinity}}}',
     "JSON number Infinity is not allowed"),
    (b'{"schema": "bangtin.manifest/1", "serial": 1, "layout": {"ticker": {"speed_px_s": 1e999}}}', "is not finite"),
    (b'{"schema": "bangtin.manifest/1", "serial": 1, "x": NaN}', "JSON number NaN is not allowed"),
    (b'{"schema": "bangtin.manifest/1", "serial": 12345678901234567890}', r"is not below 2\^53"),
    (b"[" * 50_000 + b"]" * 50_000, "nesting deeper than 32"),
    (json.dumps({"a": json.loads("[" * 33 + "1" + "]" * 33)}).encode(), "nesting deeper than 32"),
    (b'{"x": "' + b"a" * (4 * 1024 * 1024) + b'"}', "over the limit of 4194304 bytes"),
])
def test_hostile_json_is_refused_naming_the_rule(document: bytes, reason: str) -> None:
    with pytest.raises(ManifestRejected, match=reason):
        accept(document)


@pytest.mark.parametrize(("change", "reason"), [
    ({"layout": {"ticker": {"speed_px_s": 5000}}}, r"speed_px_s: expected a number >= 1 and <= 2000, found 5000"),
    ({"layout": {"ticker": {"speed_px_s": 0}}}, r"speed_px_s: expected a number >= 1"),
    ({"ticker": [{"id": "k", "text": "x" * 205_000}]}, r"ticker\[0\].text: 205000 characters, over the limit of 1000"),
    ({"items": [text_item(title="Đ" * 201)]}, r"items\[0\].title: 201 characters, over the limit of 200"),
    ({"items": [text_item(body="-" * 4001)]}, r"items\[0\].body: 4001 characters, over the limit of 4000"),
    ({"items": [text_item(duration_s=86_401)]}, r"duration_s: expected a number > 0 and <= 86400"),
    ({"items": [text_item(f"t{n}") for n in range(1001)]}, "items: 1001 entries, over the limit of 1000"),
    ({"layout": {"header": {"title": "X" * 201}}}, r"layout.header.title: 201 characters, over the limit of 200"),
    ({"items": [text_item(when={"times": [["07:00", "08:00"]] * 1441})]}, "1441 windows, over the limit of 1440"),
])
def test_manifest_limits_name_the_limit(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ManifestRejected, match=reason):
        accept(base_manifest(1, **change))


def test_more_than_four_signatures_are_refused_before_any_is_checked(public_key_b64: str,
                                                                      private_key: Ed25519PrivateKey) -> None:
    envelope = json.loads(sign_manifest(base_manifest(3), private_key))
    good = envelope["signatures"][0]
    envelope["signatures"] = [{"sig": ""}] * 39_999 + [good]
    with pytest.raises(ManifestRejected, match="40000 signatures, over the limit of 4"):
        accept(json.dumps(envelope).encode(), load_trusted_keys([public_key_b64]))
    envelope["signatures"] = envelope["signatures"][-4:]  # four, the good one last: fine
    assert accept(json.dumps(envelope).encode(), load_trusted_keys([public_key_b64])).serial == 3


def test_outside_text_is_clipped_wherever_it_is_echoed(public_key_b64: str) -> None:
    envelope = {"payloadType": "x" * 3_000_000, "payload": "", "signatures": []}
    with pytest.raises(ManifestRejected) as caught:
        accept(json.dumps(envelope).encode(), load_trusted_keys([public_key_b64]))
    assert len(str(caught.value)) < 300 and "envelope payloadType" in str(caught.value)
    problems = Problems()
    problems.report("x", "y" * 10_000)
    assert len(problems.current()[0]) <= 400


def test_a_manifest_without_audience_cannot_lock_a_board_out_of_its_own_serials(
        tmp_path: Path, public_key_b64: str, private_key: Ed25519PrivateKey) -> None:
    """§3: captured from board A (serial 44, no audience), replayed to board B, whose real serial is 13."""
    store = MediaStore(tmp_path / "media")
    store.open()
    problems = Problems()
    board_b = Content(tmp_path, store, problems, keys=load_trusted_keys([public_key_b64]), device_id=DEVICE,
                      groups=("angiang",))
    with pytest.raises(ManifestRejected, match="manifest has no audience"):
        board_b.offer((VECTORS / "manifest.no-audience.signed.json").read_bytes(), "http://cdn/x")
    assert any("manifest has no audience" in e for e in problems.current())
    own = board_b.offer(sign_manifest(base_manifest(13), private_key), "http://source")
    assert own is not None and own.serial == 13  # not refused as a "rollback" below 44


# --- the renderer: content cannot take the screen down -------------------------------------------


@pytest.fixture
def screen(tmp_path: Path) -> Iterator[tuple[Renderer, MediaStore]]:
    yield from opened_renderer(tmp_path, (640, 360), "b1")


def drawn(renderer: Renderer, scene: Scene, mono: float = 0.0) -> Frame:
    frames: list[Frame] = []

    def ready() -> bool:
        frames.append(renderer.render(scene, T0, mono))
        return not frames[-1].waiting

    wait_for(ready, timeout=10, interval=0.01, what="the scene drawn")
    return frames[-1]


def test_a_long_unbroken_word_wraps_at_once_and_fits() -> None:
    pygame.font.init()
    font = FontBook().get(40)
    started = time.monotonic()
    lines = wrap(font, "Đ" * 4000, 600)
    assert time.monotonic() - started < 1.0  # a liveness bound (the watchdog), not a benchmark: 25 s before
    assert "".join(lines) == "Đ" * 4000 and all(font.size(line)[0] <= 600 for line in lines)


def test_the_longest_alert_and_ticker_the_limits_allow_are_drawn_without_blocking(screen) -> None:
    renderer, _ = screen
    from agent.models import Alert

    alert = Alert("c", "CẢNH BÁO " * 22, "-" * 4000, T0 + dt.timedelta(hours=1))  # an alert body of 4000 '-'
    started = time.monotonic()
    drawn(renderer, Scene("alert", None, alert=alert, showing_id="a"))
    assert time.monotonic() - started < 1.0  # liveness: 37 s before (a watchdog restart, again and again)
    assert near(renderer.screenshot().get_at((3, 200)), (176, 0, 0))
    lines = [{"id": f"k{n}", "text": "Bão số 3 " * 111} for n in range(1000)]  # ~1 million characters
    manifest = accept(base_manifest(1, items=[text_item()], ticker=lines))
    text = " • ".join(line.text for line in manifest.ticker)
    scene = Scene("item", manifest, item=manifest.items[0], ticker_text=text, showing_id="s1")
    drawn(renderer, scene)
    for step in range(1, 40):
        started = time.monotonic()
        renderer.render(scene, T0, step * 0.1)
        assert time.monotonic() - started < 1.0
    assert renderer.zone_problems == {}
    band_y = 360 - max(32, round(360 * 0.075)) + 3
    assert near(renderer.screenshot().get_at((2, band_y)), (0xFF, 0xD2, 0x00))  # the band is there, scrolling


class BoldFailsFonts(FontBook):
    """A font book whose bold face cannot render (what a broken or hostile glyph would do to SDL_ttf)."""

    def get(self, size: int, bold: bool = False) -> pygame.font.Font:
        if bold:
            raise pygame.error("Text has zero width")
        return super().get(size, bold)


def test_a_zone_that_cannot_be_drawn_is_drawn_plain_and_reported(tmp_path: Path) -> None:
    pygame.display.init()
    pygame.font.init()
    store = MediaStore(tmp_path / "store")
    store.open()
    renderer = Renderer(DisplaySettings(640, 360, False, 30, 0, "BẢNG TIN", "b1"), store, PyAVBackend(),
                        fonts=BoldFailsFonts())
    renderer.open()
    try:
        from agent.models import Alert

        frame = drawn(renderer, Scene("splash", None))  # the header title and the splash clock are bold
        assert frame.failed_showing is None
        assert set(renderer.zone_problems) == {"header", "splash"}
        assert "header cannot be drawn: Text has zero width" in renderer.zone_problems["header"]
        assert near(renderer.screenshot().get_at((320, 20)), (0x0B, 0x3D, 0x91))  # a plain header band, not black
        drawn(renderer, Scene("alert", None, alert=Alert("c", "KHẨN", "Lũ", T0 + dt.timedelta(hours=1)),
                              showing_id="a"))
        assert "alert" in renderer.zone_problems
        shot = renderer.screenshot()
        assert near(shot.get_at((3, 200)), (176, 0, 0)) and near(shot.get_at((3, 3)), (255, 221, 0))
    finally:
        renderer.close()


def huge_png(path: Path, side: int) -> Path:
    """A real, valid PNG of side×side one-bit pixels: a few dozen KB on disk, hundreds of MB decoded."""
    row = b"\x00" + b"\x00" * (side // 8)
    raw = zlib.compress(row * side, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(screen, tmp_path: Path) -> None:
    renderer, store = screen
    png = huge_png(tmp_path / "bomb.png", 16_000)
    assert png.stat().st_size < 1_000_000
    entry = media_entry(png, "m1", "image/png")
    store.import_file(png, entry["sha256"], entry["size"], "m1")
    manifest = accept(base_manifest(1, media=[entry], items=[{"id": "i", "type": "image", "media": "m1",
                                                              "duration_s": 5}]))
    frame = drawn(renderer, Scene("item", manifest, item=manifest.items[0], showing_id="s1"))
    assert frame.failed_showing == "s1"
    assert frame.failure == "image is 16000x16000 pixels: over the limit of 8192 a side"


# --- the set-aside rule: a restored manifest that keeps the board from starting ------------------


def test_three_failed_starts_set_the_manifest_aside_until_a_newer_one(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str,
        agent_factory: Callable[[Path], RunningAgent]) -> None:
    def publish(serial: int, colour: tuple[int, int, int]) -> None:
        png = write_png(content_folder.root / "media" / f"{serial}.png", (160, 90), colour)
        content_folder.publish(base_manifest(serial, media=[media_entry(png, f"m{serial}", "image/png")],
                                             items=[{"id": f"i{serial}", "type": "image", "media": f"m{serial}",
                                                     "duration_s": 60}]))

    publish(1, (220, 20, 20))
    config = write_config(tmp_path / "agent.yaml", content_folder.root, tmp_path / "state", [public_key_b64])
    first = agent_factory(config).start()
    wait_for(lambda: first.status()["current_item"] == "i1", what="serial 1 on screen")
    publish(2, (20, 200, 20))  # valid, signed, and (we say) it brings the board down at every start
    wait_for(lambda: first.status()["current_item"] == "i2", what="serial 2 on screen")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    for _ in range(2):  # killed before 60 s of content each time: the watchdog, the OOM killer, a crash
        again = agent_factory(config).start()
        wait_for(lambda: again.status()["current_item"] == "i2", what="serial 2 restored")  # noqa: B023
        assert again.stop(signal.SIGKILL) == -signal.SIGKILL
    fourth = agent_factory(config).start()
    wait_for(lambda: fourth.status()["current_item"] == "i1", what="the previous manifest back on screen")
    status = fourth.status()
    assert status["manifest_serial"] == 1
    assert "manifest serial 2 set aside after 3 failed starts" in status["errors"]
    assert near(fourth.screenshot().get_at((320, 200)), (220, 20, 20))
    publish(3, (20, 20, 220))  # the province publishes a fix: accepted at once, the note goes
    wait_for(lambda: fourth.status()["current_item"] == "i3", timeout=5, what="the corrected manifest")
    assert not any("set aside" in e for e in fourth.status()["errors"])
    assert fourth.stop() == 0


# --- sync: the clock, back-off per host, deadlines ---------------------------------------------


@pytest.fixture
def source() -> Iterator[ReferenceServer]:
    server = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/api", token="tok")).start()
    yield server
    server.stop()


def http_board(tmp_path: Path, server: ReferenceServer, keys: list[str], stop: threading.Event | None = None,
               **settings: Any) -> tuple[HttpSource, Content, list[float]]:
    from agent.sync.client import HttpClient

    store = MediaStore(tmp_path / "state" / "media")
    store.open()
    content = Content(tmp_path / "state", store, Problems(), keys=load_trusted_keys(keys), device_id=DEVICE,
                      groups=("angiang",))
    offsets: list[float] = []
    http = HttpSettings(base_url=server.base_url, device_id=DEVICE, token="tok", ca_file=None, poll_interval_s=2,
                        cache_limit_bytes=1 << 30, user_agent="bangtin-agent/test", **settings)
    client = HttpClient(http.client_settings(), offsets.append)
    from agent import schedule

    source = HttpSource(http, content, store, Problems(), stop or threading.Event(), lambda: None,
                        lambda m: schedule.media_in_order_of_need(m, dt.datetime.now(dt.UTC), None), client,
                        rng=random.Random(3))
    return source, content, offsets


def cdn_manifest(server: ReferenceServer, cdn: ReferenceServer, key: Ed25519PrivateKey, tmp_path: Path,
                 serial: int = 1) -> None:
    path = tmp_path / f"cdn-{serial}.png"
    path.write_bytes(os.urandom(4000))
    data = path.read_bytes()
    cdn.publish("unused", b"{}", {f"/cdn/{path.name}": path})
    server.publish(DEVICE, sign_manifest(base_manifest(serial, media=[
        {"id": "m1", "url": f"http://127.0.0.1:{cdn.server_address[1]}/cdn/{path.name}",
         "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "type": "image/png"}],
        items=[{"id": "i1", "type": "image", "media": "m1", "duration_s": 5}]), key))


def test_a_media_hosts_date_never_sets_the_clock(tmp_path, source, private_key, public_key_b64) -> None:
    cdn = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/cdn")).start()
    try:
        cdn.state.faults = Faults(date_offset_s=-6.9 * 365 * 86400)  # "Date: 2020-01-01"
        cdn_manifest(source, cdn, private_key, tmp_path)
        http, content, offsets = http_board(tmp_path, source, [public_key_b64])
        http.sync_once()
        assert content.current() is not None and cdn.requests_to(".png")
        assert offsets and all(abs(offset) < 5 for offset in offsets)  # only the source's own answers count
    finally:
        cdn.stop()


def test_a_media_hosts_retry_after_never_delays_manifest_polls(tmp_path, source, private_key, public_key_b64) -> None:
    cdn = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/cdn")).start()
    try:
        cdn.state.faults = Faults(unavailable_times=100, retry_after_s=86400)
        cdn_manifest(source, cdn, private_key, tmp_path)
        stop = threading.Event()
        http, _content, _ = http_board(tmp_path, source, [public_key_b64], stop)
        http.start()
        try:
            wait_for(lambda: cdn.requests_to(".png"), timeout=15, what="the media host's 503")
            polls = len(source.requests_to("/manifest"))
            wait_for(lambda: len(source.requests_to("/manifest")) >= polls + 2, timeout=15,
                     what="manifest polls going on at their own interval")
            assert len(cdn.requests_to(".png")) == 1  # the CDN waits its hour alone (Retry-After capped at 1 h)
        finally:
            stop.set()
            http.join(5)
    finally:
        cdn.stop()


@pytest.mark.parametrize("headers_too", [False, True])
def test_a_server_dripping_bytes_cannot_outlast_the_deadline(tmp_path, source, private_key, public_key_b64,
                                                            headers_too: bool) -> None:
    from agent.sync.client import SourceError

    source.publish(DEVICE, sign_manifest(base_manifest(1, items=[text_item()]), private_key))
    source.state.faults = Faults(drip_interval_s=0.2, drip_times=1, drip_headers=headers_too, apply_to="manifest")
    http, content, _ = http_board(tmp_path, source, [public_key_b64], manifest_deadline_s=2.0, read_timeout_s=5.0)
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"deadline|too slow"):
        http.sync_once()
    body_seconds = len(source.state.manifests[DEVICE]) * 0.2  # what the drip would have taken
    assert time.monotonic() - started < body_seconds / 4  # cut at the 2 s deadline, not at the end of the drip
    http.sync_once()  # the next round gets it whole
    assert content.current() is not None


# --- the file:// folder: regular files only -----------------------------------------------------


def test_a_fifo_or_a_device_link_in_the_folder_never_blocks_or_floods_the_board(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str) -> None:
    store = MediaStore(tmp_path / "state" / "media")
    store.open()
    problems = Problems()
    content = Content(tmp_path / "state", store, problems, keys=load_trusted_keys([public_key_b64]), device_id=DEVICE,
                      groups=("angiang",))
    source = FileSource(content_folder.root, content, store, problems, threading.Event(), lambda: None,
                        cache_limit_bytes=1 << 30)
    os.mkfifo(content_folder.root / "manifest.json")  # a reader of it would block for ever
    checker = threading.Thread(target=source.check, daemon=True)
    checker.start()
    checker.join(5)
    assert not checker.is_alive() and any("not a regular file" in e for e in problems.current())
    (content_folder.root / "manifest.json").unlink()
    (content_folder.root / "media" / "zero.png").symlink_to("/dev/zero")
    entry = {"id": "m1", "url": "media/zero.png", "sha256": "0" * 64, "size": 10**6, "type": "image/png"}
    content_folder.publish(base_manifest(1, media=[entry], items=[{"id": "i", "type": "image", "media": "m1",
                                                                    "duration_s": 5}]))
    source.check()
    assert any("media m1: cannot read media/zero.png: it is a link" in e for e in problems.current())
    assert store.bytes_used() == 0 and not any((store.root / "partial").iterdir())


# --- secrets and storage -------------------------------------------------------------------------


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_a_token_with_a_line_break_is_refused_and_never_echoed(tmp_path: Path) -> None:
    secret = "abc\ndef-secret"
    path = write_yaml(tmp_path / "a.yaml", {"device": {"id": "b1"}, "source": {"url": "https://s/api", "token": secret}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "source.token: expected printable characters without spaces or line breaks, found a value (hidden)" \
        in str(caught.value) and "def-secret" not in str(caught.value)
    token_file = tmp_path / "token"
    token_file.write_text("first-line\nsecond-secret\n")
    token_file.chmod(0o600)
    path = write_yaml(tmp_path / "b.yaml", {"device": {"id": "b1"},
                                            "source": {"url": "https://s/api", "token_file": str(token_file)}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "more than one printable word" in str(caught.value) and "second-secret" not in str(caught.value)


def test_check_config_refuses_a_token_file_others_can_read_and_warns_of_cleartext(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    token_file.chmod(0o644)
    config = write_yaml(tmp_path / "agent.yaml", {"device": {"id": "b1"}, "source": {
        "url": "http://tttn.example/api", "token_file": str(token_file)}, "mqtt": {"url": "mqtt://broker:1883"},
        "storage": {"dir": str(tmp_path / "state")}})
    run = subprocess.run([sys.executable, "-m", "agent", "check-config", "--config", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "mode 0644 lets other users read or change it (expected 0600 or 0640)" in run.stderr
    token_file.chmod(0o640)
    run = subprocess.run([sys.executable, "-m", "agent", "check-config", "--config", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "the device token would travel unencrypted over http://" in run.stdout
    assert "would travel unencrypted over mqtt://" in run.stdout and "s3cret" not in run.stdout + run.stderr


def test_files_the_board_writes_take_its_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "state.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o640  # not forced to 0644


def test_a_storage_dir_others_can_write_to_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    config = write_yaml(tmp_path / "agent.yaml", {"device": {"id": "b1"}, "source": {"url": "file:///srv/x"},
                                                  "storage": {"dir": str(state)}})
    with pytest.raises(ConfigError, match=r"storage.dir: expected a directory only its owner can write to, found .* "
                                          r"with mode 0777"):
        load_config(config)


def test_a_link_planted_in_partial_is_never_followed(tmp_path: Path, source, private_key, public_key_b64) -> None:
    data = os.urandom(20_000)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.png").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    source.publish(DEVICE, sign_manifest(base_manifest(1, media=[
        {"id": "m1", "url": "/api/media/a.png", "sha256": sha, "size": len(data), "type": "image/png"}],
        items=[{"id": "i1", "type": "image", "media": "m1", "duration_s": 5}]), private_key),
        {"/api/media/a.png": tmp_path / "site" / "a.png"})
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    partial = tmp_path / "state" / "media" / "partial"
    partial.mkdir(parents=True)
    (partial / f"{sha}.download").symlink_to(victim)
    (partial / f"{sha}.validator").symlink_to(victim)
    http, _content, _ = http_board(tmp_path, source, [public_key_b64])
    http.sync_once()
    assert victim.read_text() == "keep me"
    assert (tmp_path / "state" / "media" / sha).read_bytes() == data


def test_the_control_socket_path_is_replaced_only_when_it_is_a_stale_socket(tmp_path: Path) -> None:
    planted = tmp_path / "ctl.sock"
    planted.write_text("not ours")
    server = ControlServer(planted, lambda request: {"ok": True}, threading.Event())
    with pytest.raises(RuntimeError, match="exists and is not a socket"):
        server.open()
    assert planted.read_text() == "not ours"
    with pytest.raises(InputRejected, match="nesting deeper than 32"):
        parse_request(b"[" * 50_000)


def test_a_restart_in_place_never_imports_from_the_working_directory(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str) -> None:
    """The console script starts the agent; a cold config edit re-executes it, with `python -P`, so an
    `agent/` package planted in the working directory never runs."""
    planted = tmp_path / "cwd" / "agent"
    planted.mkdir(parents=True)
    marker = tmp_path / "planted-ran"
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(3)\n")
    png = write_png(content_folder.root / "media" / "a.png", (160, 90), (20, 200, 20))
    content_folder.publish(base_manifest(1, media=[media_entry(png, "m1", "image/png")],
                                         items=[{"id": "i1", "type": "image", "media": "m1", "duration_s": 60}]))
    config = write_config(tmp_path / "agent.yaml", content_folder.root, tmp_path / "state", [public_key_b64])
    script = Path(sys.executable).parent / "bangtin-agent"
    log = (tmp_path / "agent.log").open("wb")
    process = subprocess.Popen([str(script), "run", "--config", str(config)], cwd=planted.parent, stdout=log,
                               stderr=subprocess.STDOUT)
    agent = RunningAgent(config)
    agent.process = process
    try:
        wait_for(lambda: agent.status()["current_item"] == "i1", timeout=20, what="the agent playing")
        data = yaml.safe_load(config.read_text())
        data["display"]["width"] = 800  # a cold key: the agent re-executes itself in place
        config.write_text(yaml.safe_dump(data))
        wait_for(lambda: agent.status()["display"]["size"] == [800, 360], timeout=20, what="the re-executed agent")
        assert process.poll() is None and not marker.exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        log.close()


def test_a_manifest_stored_under_v1_keeps_playing_after_the_upgrade(tmp_path: Path, public_key_b64: str) -> None:
    """Upgrading must not strand a board: what it accepted under v1 (no audience) is restored, while the
    same bytes offered anew are refused."""
    (tmp_path / "manifest.accepted").write_bytes((VECTORS / "manifest.no-audience.signed.json").read_bytes())
    (tmp_path / "state.json").write_text('{"serial": 44, "etag": "\\"v1-etag\\""}')  # the v1 state file
    store = MediaStore(tmp_path / "media")
    store.open()
    content = Content(tmp_path, store, Problems(), keys=load_trusted_keys([public_key_b64]), device_id=DEVICE,
                      groups=("angiang",))
    restored = content.restore()
    assert restored is not None and restored.serial == 44 and content.etag == '"v1-etag"'
    with pytest.raises(ManifestRejected, match="manifest has no audience"):
        content.offer((VECTORS / "manifest.no-audience.signed.json").read_bytes(), "http://source")

"""Video items: real MP4s encoded here, frames checked on screen by pixels, proof of play, failures."""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pygame
import pytest

from agent.cache.store import MediaStore
from agent.display.pyav import PyAVBackend
from agent.display.renderer import DisplaySettings, Frame, Renderer
from agent.display.video import VideoStats, fit_size, slow_report
from agent.manifest import accept_manifest
from agent.models import Manifest, Scene
from tests.conftest import ContentFolder, RunningAgent, base_manifest, media_entry, near, wait_for, write_config, write_png
from tests.video_files import make_mp4

RED, BLUE, GREEN = (230, 20, 20), (20, 20, 230), (20, 200, 20)
T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)



def video_entry(path: Path, media_id: str = "v1") -> dict[str, Any]:
    return media_entry(path, media_id, "video/mp4")


def parse(**changes: Any) -> Manifest:
    import json

    return accept_manifest(json.dumps(base_manifest(1, **changes)).encode(), keys=(), device_id="b", groups=(),
                           last_serial=None)


def opened_renderer(tmp_path: Path, size: tuple[int, int], device: str) -> Iterator[tuple[Renderer, MediaStore]]:
    """A Renderer on the dummy driver over an empty verified store, closed after (a fixture's body)."""
    pygame.display.init()
    pygame.font.init()
    store = MediaStore(tmp_path / "store")
    store.open()
    r = Renderer(DisplaySettings(size[0], size[1], False, 30, 0, "BẢNG TIN", device), store, PyAVBackend())
    r.open()
    yield r, store
    r.close()


@pytest.fixture
def renderer(tmp_path: Path) -> Iterator[tuple[Renderer, MediaStore]]:
    yield from opened_renderer(tmp_path, (320, 180), "b")


def add(store: MediaStore, path: Path, media_id: str = "v1") -> dict[str, Any]:
    entry = video_entry(path, media_id)
    store.import_file(path, entry["sha256"], entry["size"], media_id)
    return entry


def shot(r: Renderer) -> pygame.Surface:
    return r.screenshot()


def drawn(r: Renderer, scene: Scene, now: dt.datetime, mono: Callable[[], float] = time.monotonic) -> Frame:
    """Render until the scene is on screen or has failed (the decoder opens the file on its own thread)."""
    frames: list[Frame] = []

    def ready() -> bool:
        frames.append(r.render(scene, now, mono()))
        return not frames[-1].waiting

    wait_for(ready, timeout=10, interval=0.005, what="the video to start or fail")
    return frames[-1]


def decoders() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "video-decode")


def test_frames_are_presented_at_their_time_scaled_to_the_zone(renderer, tmp_path) -> None:
    r, store = renderer
    clip = make_mp4(tmp_path / "rb.mp4", [RED, BLUE], seconds_each=0.6, fps=10, size=(320, 180))
    m = parse(media=[add(store, clip)], items=[{"id": "v", "type": "video", "media": "v1"}])
    scene = Scene("item", m, item=m.items[0], showing_id="s1")
    frame = drawn(r, scene, T0)
    started = r.scene_shown_mono
    assert frame.failed_showing is None and started is not None
    centre = (160, 110)
    assert near(shot(r).get_at(centre), RED, 40)  # the first frame is there at once: no black start
    seen_blue = None
    while time.monotonic() - started < 6:
        frame = r.render(scene, T0, time.monotonic())
        if seen_blue is None and near(shot(r).get_at(centre), BLUE, 40):
            seen_blue = time.monotonic() - started
        if frame.finished_showing:
            break
        time.sleep(max(0.0, frame.next_change - time.monotonic()))
    # Blue from 0.6 s: never early (the lower bound is the promise); the upper bounds only catch a
    # gross drift, loose enough for a loaded CI machine (timing figures are bench_video's business).
    assert seen_blue is not None and 0.5 <= seen_blue <= 1.5
    assert frame.finished_showing == "s1"  # no duration_s: the video's own length ends the showing
    assert 1.0 <= time.monotonic() - started <= 3.0  # its own length: 12 frames at 10 fps
    stats = r.video_stats()
    assert stats is not None and stats["presented"] >= 8  # of 12 frames at 10 fps; few dropped
    # FFmpeg scaled the frames to the zone keeping the aspect ratio (16:9 into 320x151 → 268x150)
    assert fit_size((320, 180), (320, 151)) == (268, 150)


def test_corrupt_and_truncated_files_are_reported_and_never_blank_the_screen(renderer, tmp_path) -> None:
    r, store = renderer
    png = write_png(tmp_path / "g.png", (64, 36), GREEN)
    image = media_entry(png, "img", "image/png")
    store.import_file(png, image["sha256"], image["size"], "img")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(random.Random(1).randbytes(20_000))
    good = make_mp4(tmp_path / "ok.mp4", [RED] * 2, fps=10)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    m = parse(media=[image, add(store, garbage, "bad"), add(store, truncated, "cut")],
              items=[{"id": "g", "type": "image", "media": "img", "duration_s": 5},
                     {"id": "bad", "type": "video", "media": "bad"}, {"id": "cut", "type": "video", "media": "cut"}])
    drawn(r, Scene("item", m, item=m.items[0], showing_id="s1"), T0)
    before = pygame.image.tobytes(shot(r), "RGB")
    for showing, item in (("s2", m.items[1]), ("s3", m.items[2])):
        frame = drawn(r, Scene("item", m, item=item, showing_id=showing), T0)
        assert frame.failed_showing == showing and ("cannot" in frame.failure or "no video frames" in frame.failure)
        assert pygame.image.tobytes(shot(r), "RGB") == before  # the green image stays, never black


def test_preemption_stops_the_decoder(renderer, tmp_path) -> None:
    r, store = renderer
    clip = make_mp4(tmp_path / "long.mp4", [RED] * 5, fps=10)
    m = parse(media=[add(store, clip)], items=[{"id": "v", "type": "video", "media": "v1"}])
    drawn(r, Scene("item", m, item=m.items[0], showing_id="s1"), T0)
    assert decoders() == 1 and r.video_stats() is not None
    from agent.models import Alert

    r.render(Scene("alert", m, alert=Alert("c", "KHẨN", "Lũ", T0 + dt.timedelta(hours=1)), showing_id="a"), T0,
             time.monotonic())
    assert r.video_stats() is None  # off the screen at once
    assert near(shot(r).get_at((3, 100)), (176, 0, 0), 12)
    wait_for(lambda: decoders() == 0, timeout=3, what="the decoder thread to end")


def opened(path: Path) -> Any:
    backend = PyAVBackend()
    playback = backend.open(str(path), (320, 180), None, lambda: None)
    wait_for(playback.ready, timeout=10, what="the decoder to open the file")
    backend.close()
    return playback


def test_unsupported_input_is_a_clear_error(tmp_path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("không phải video")
    assert "cannot read the video's size: not an MP4 file" in (opened(text).error() or "")


def test_a_video_over_the_size_limit_is_refused_before_decoding(tmp_path) -> None:
    big = make_mp4(tmp_path / "big.mp4", [RED], seconds_each=0.1, fps=10, size=(4096, 2160))
    playback = opened(big)
    assert playback.error() == "video is 4096x2160 pixels: over the limit of 3840x2160"
    assert playback.stats.decoded == 0  # refused from the stream's header, not after decoding frames


def agent_with_videos(tmp_path: Path, folder: ContentFolder, keys: list[str], items: list[dict[str, Any]],
                      media: list[dict[str, Any]]) -> Path:
    folder.publish(base_manifest(1, media=media, items=items))
    return write_config(tmp_path / "agent.yaml", folder.root, tmp_path / "state", keys)


def test_playlog_says_exactly_how_long_a_video_ran_and_duration_loops_it(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str,
        agent_factory: Callable[[Path], RunningAgent]) -> None:
    own = make_mp4(content_folder.root / "media" / "own.mp4", [RED, BLUE], seconds_each=0.75, fps=10)
    looped = make_mp4(content_folder.root / "media" / "loop.mp4", [GREEN], seconds_each=0.5, fps=10)
    config = agent_with_videos(tmp_path, content_folder, [public_key_b64], items=[
        {"id": "own", "type": "video", "media": "v1"},                    # its own length: 1.5 s
        {"id": "loop", "type": "video", "media": "v2", "duration_s": 2}],  # 0.5 s clip, looped to 2 s
        media=[video_entry(own, "v1"), video_entry(looped, "v2")])
    agent = agent_factory(config).start()
    wait_for(lambda: len([r for r in agent.records() if r["type"] == "video"]) >= 2, timeout=20,
             what="two video showings")
    records = {r["item"]: r for r in agent.records() if r["type"] == "video"}
    assert records["own"]["completed"] and 1350 <= records["own"]["duration_ms"] <= 1800
    assert records["loop"]["completed"] and 1950 <= records["loop"]["duration_ms"] <= 2150
    assert records["own"]["media_sha256"] == video_entry(own)["sha256"]
    assert agent.stop() == 0


def test_alert_preempts_a_video_and_the_record_says_so(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str,
        agent_factory: Callable[[Path], RunningAgent]) -> None:
    clip = make_mp4(content_folder.root / "media" / "long.mp4", [BLUE] * 20, fps=10)
    config = agent_with_videos(tmp_path, content_folder, [public_key_b64],
                               items=[{"id": "news", "type": "video", "media": "v1"}], media=[video_entry(clip)])
    agent = agent_factory(config).start()
    wait_for(lambda: agent.status()["current_item"] == "news", timeout=10, what="the video on screen")
    wait_for(lambda: near(agent.screenshot().get_at((320, 200)), BLUE, 40), timeout=5, what="video pixels")
    agent.ctl("alert", title="CẢNH BÁO", body="Lũ quét", minutes=1)
    assert near(agent.screenshot().get_at((3, 200)), (176, 0, 0), 12)
    agent.ctl("clear_alert")
    assert agent.stop() == 0
    news = [r for r in agent.records() if r["item"] == "news"]
    assert news[0]["reason"] == "preempted" and not news[0]["completed"]


def test_a_corrupt_video_is_skipped_and_reported_while_the_rest_plays(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str,
        agent_factory: Callable[[Path], RunningAgent]) -> None:
    bad = content_folder.root / "media" / "bad.mp4"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(os.urandom(50_000))
    png = write_png(content_folder.root / "media" / "ok.png", (160, 90), GREEN)
    config = agent_with_videos(tmp_path, content_folder, [public_key_b64], items=[
        {"id": "bad", "type": "video", "media": "v1"}, {"id": "ok", "type": "image", "media": "i1", "duration_s": 30}],
        media=[video_entry(bad), media_entry(png, "i1", "image/png")])
    agent = agent_factory(config).start()
    wait_for(lambda: agent.status()["current_item"] == "ok", timeout=10, what="the image after the skip")
    assert any("item bad failed to load: cannot read the video's size" in e for e in agent.status()["errors"])
    assert near(agent.screenshot().get_at((320, 200)), GREEN, 12)
    assert [r["reason"] for r in agent.records() if r["item"] == "bad"] == ["error"]


def test_a_board_that_cannot_keep_up_says_so_with_the_measured_rate() -> None:
    stats = VideoStats(presented=120, dropped=30, started_mono=100.0, stream_fps=30.0)  # 4 s at 30 fps
    assert slow_report(stats, (320, 180), 104.0) is None
    stats.presented, stats.dropped = 48, 72  # 12 fps out of 30
    report = slow_report(stats, (320, 180), 104.0)
    assert report is not None and "plays at 12.0 of its 30 frames/s" in report and "72 dropped" in report
    stats.presented = 10
    assert slow_report(stats, (320, 180), 101.0) is None  # too early to judge


def test_the_picture_size_is_read_from_the_mp4_boxes_not_from_an_audio_track(tmp_path) -> None:
    import av

    from agent.display.videoheader import mp4_picture_size

    path = tmp_path / "with-sound.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 640, 360, "yuv420p"
        sound = container.add_stream("aac", rate=44100)
        for n in range(3):
            frame = av.VideoFrame(640, 360, "yuv420p")
            frame.pts = n
            for packet in video.encode(frame):
                container.mux(packet)
        silence = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        for plane in silence.planes:
            plane.update(bytes(plane.buffer_size))
        silence.sample_rate, silence.pts = 44100, 0
        for packet in [*sound.encode(silence), *sound.encode(), *video.encode()]:
            container.mux(packet)
    assert mp4_picture_size(path) == (640, 360)  # not 44100 from the audio entry's sample rate

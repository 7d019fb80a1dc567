"""Download windows (`downloads.windows`, `downloads.small_mb`; docs/metered.md): large media wait for
a window and pause when it closes, small files and an emergency's media come at any time, a new
manifest does not wait for them; `ctl status` says what waits and until when; an edit of the
windows applies live. Against the reference source on loopback; the clock is passed in."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import yaml

from agent.cli import format_status
from agent.downloads import MIB, DownloadRules
from agent.models import TimeWindow
from refsource.server import Faults
from tests.conftest import base_manifest, sign_manifest, wait_for, write_config
from tests.test_sync_http import BASE, DEVICE, Board, media_file

HANOI = dt.timezone(dt.timedelta(hours=7))  # Asia/Ho_Chi_Minh, the manifests' zone: no summer time
NIGHT = DownloadRules.from_config((("01:00", "05:00"),), 0.05)  # 51 KiB and under come at any time


class Clock:
    """The board's wall clock, moved by the test."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


def publish(server: Any, key: Any, serial: int, files: dict[str, tuple[Path, str]]) -> None:
    """One image item per file; `files` maps media id → (file, the item's priority)."""
    media = [{"id": media_id, "url": f"{BASE}/media/{path.name}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
              "size": path.stat().st_size, "type": "image/png"} for media_id, (path, _) in files.items()]
    items = [{"id": f"i-{media_id}", "type": "image", "media": media_id, "duration_s": 10, "priority": priority}
             for media_id, (_, priority) in files.items()]
    server.publish(DEVICE, sign_manifest(base_manifest(serial, media=media, items=items), key),
                   {f"{BASE}/media/{path.name}": path for path, _ in files.values()})


def fetched(server: Any, name: str) -> list[Any]:
    return server.requests_to(f"/media/{name}")


def test_the_rules_read_local_windows_that_wrap_past_midnight() -> None:
    rules = DownloadRules.from_config((("23:00", "02:00"), ("12:00", "12:30")), 2)
    assert rules.windows == (TimeWindow(23 * 60, 2 * 60), TimeWindow(12 * 60, 12 * 60 + 30))
    assert rules.small_bytes == 2 * MIB

    def local(hour: int, minute: int = 0, day: int = 26) -> dt.datetime:
        return dt.datetime(2026, 11, day, hour, minute, tzinfo=HANOI)

    assert [rules.is_open(local(h, m), HANOI) for h, m in ((22, 59), (23, 0), (1, 59), (2, 0), (12, 15))] == [
        False, True, True, False, True]
    assert rules.next_open(local(9, 10), HANOI) == local(12, 0)
    assert rules.next_open(local(13, 0), HANOI) == local(23, 0)
    assert rules.next_open(local(23, 30), HANOI) is None
    assert rules.closes_at(local(23, 30), HANOI) == local(2, 0, day=27)
    assert rules.seconds_left(2 * MIB + 1, local(1, 59), HANOI) == 60.0
    assert rules.seconds_left(2 * MIB, local(1, 59), HANOI) is None  # small: never paused
    assert rules.holds(2 * MIB + 1, local(3, 0), HANOI).until == local(12, 0)  # type: ignore[union-attr]
    assert rules.holds(2 * MIB, local(3, 0), HANOI) is None
    # A UTC instant is read in the zone given: 16:30 UTC is 23:30 in Hà Nội.
    assert rules.is_open(dt.datetime(2026, 11, 26, 16, 30, tzinfo=dt.UTC), HANOI)
    assert DownloadRules().is_open(local(9), HANOI) and DownloadRules().holds(10**9, local(9), HANOI) is None


def test_large_media_wait_for_the_window_small_and_emergency_ones_do_not(
        tmp_path, server, private_key, keys) -> None:
    clock = Clock(dt.datetime(2026, 11, 26, 10, 0, tzinfo=HANOI))
    old = media_file(tmp_path, "old.png", 1000)
    publish(server, private_key, 1, {"old": (old, "normal")})
    board = Board(tmp_path, server, keys, downloads=NIGHT, now=clock)
    board.source.sync_once()
    assert board.serial() == 1
    files = {"small": (media_file(tmp_path, "small.png", 40_000, seed=2), "normal"),
             "video": (media_file(tmp_path, "video.png", 300_000, seed=3), "normal"),
             "warning": (media_file(tmp_path, "warning.png", 300_000, seed=4), "emergency")}
    publish(server, private_key, 2, files)
    outcome = board.source.sync_once()

    assert fetched(server, "small.png") and fetched(server, "warning.png")  # at 10:00, outside the window
    assert not fetched(server, "video.png")
    assert outcome.held_media == ("video",) and outcome.waiting_media == ()
    # The new manifest is in force at once: its emergency and its small item must not wait for the night.
    assert board.serial() == 2
    assert outcome.retry_media_in_s is not None and abs(outcome.retry_media_in_s - 15 * 3600) < 5
    status = board.source.status()
    assert status["held"] == [{"media": "video", "bytes": 300_000, "until": "2026-11-27T01:00+07:00",
                               "because": "downloads.windows"}]
    assert "media:video" not in board.errors()  # waiting for a window is not a fault
    line = format_status({"sync": status})
    assert "1 large file (300.0 kB) until 2026-11-27T01:00+07:00, the next downloads.windows: video" in line

    clock.at = dt.datetime(2026, 11, 27, 1, 0, 30, tzinfo=HANOI)
    outcome = board.source.sync_once()
    assert len(fetched(server, "video.png")) == 1 and outcome.held_media == ()
    assert board.store.path_for(hashlib.sha256(files["video"][0].read_bytes()).hexdigest()) is not None
    assert board.source.status()["held"] == []


def test_a_held_file_that_once_failed_does_not_bring_a_round_every_second(
        tmp_path, server, private_key, keys) -> None:
    """A large file fails inside its window (the CDN lies about it), the window closes: its retry falls
    due while it is held. The next round must be the next window's or the poll's, not at once: a
    round a second is ~70,000 manifest polls a day on a SIM."""
    clock = Clock(dt.datetime(2026, 11, 26, 4, 0, tzinfo=HANOI))  # in the window
    video = media_file(tmp_path, "video.png", 300_000, seed=8)
    publish(server, private_key, 1, {"video": (video, "normal")})
    server.state.faults = Faults(wrong_media_bytes=True)
    board = Board(tmp_path, server, keys, downloads=NIGHT, now=clock)
    board.source.sync_once()
    assert "SHA-256" in board.errors()  # failed, with its own retry back-off
    server.state.faults = Faults()
    clock.at = dt.datetime(2026, 11, 26, 9, 0, tzinfo=HANOI)  # the window has closed
    board.later(2 * 3600)  # the failed file's retry is long due
    outcome = board.source.sync_once()
    assert outcome.held_media == ("video",)
    assert outcome.retry_media_in_s is not None and outcome.retry_media_in_s > 15 * 3600  # 01:00 tomorrow


def test_media_retries_between_polls_do_not_poll_the_manifest(tmp_path, server, private_key, keys) -> None:
    """The source thread: a media retry due before the next poll fetches only (a poll costs bytes)."""
    files = {"m1": media_file(tmp_path, "big.png", 200_000, seed=9)}
    from tests.test_sync_http import publish as publish_plain

    publish_plain(server, private_key, 1, files)
    server.state.faults = Faults(cut_media_after_bytes=100_000, cut_times=3)  # three rounds cut short
    board = Board(tmp_path, server, keys)
    board.settings = board.source.settings = dataclasses.replace(board.source.settings, poll_interval_s=3600)
    board.source.start()
    try:
        sha = hashlib.sha256(files["m1"].read_bytes()).hexdigest()
        wait_for(lambda: board.store.path_for(sha) is not None, timeout=60, what="the file after its retries")
    finally:
        board.stop.set()
        board.source.join(5)
    assert len(server.requests_to("big.png")) >= 2  # it was retried
    assert len(server.requests_to("/manifest")) == 1  # by media-only rounds: one poll in all


def test_a_large_download_pauses_when_its_window_closes_and_resumes_in_the_next(
        tmp_path, server, private_key, keys) -> None:
    clock = Clock(dt.datetime(2026, 11, 26, 4, 59, 59, 800_000, tzinfo=HANOI))  # 0.2 s of the window left
    size = 1_000_000
    publish(server, private_key, 1, {"video": (media_file(tmp_path, "video.png", size, seed=5), "normal")})
    server.state.faults = Faults(stall_s=0.5, stall_times=1)  # the first bytes come after the window has closed
    board = Board(tmp_path, server, keys, downloads=NIGHT, now=clock)
    outcome = board.source.sync_once()
    sha = hashlib.sha256((tmp_path / "site" / "video.png").read_bytes()).hexdigest()

    # (The server may not log the cut request: its write meets the closed connection.)
    assert outcome.held_media == ("video",)
    kept = board.store.partial_size(sha)
    assert 0 < kept < size  # paused, what came is kept
    assert board.source.status()["held"][0]["until"] == "2026-11-27T01:00+07:00"
    assert board.errors() == ""  # no fault, no back-off of the media host

    clock.at = dt.datetime(2026, 11, 27, 1, 5, tzinfo=HANOI)
    board.source.sync_once()
    resumed = fetched(server, "video.png")[-1]
    assert resumed.headers["Range"] == f"bytes={kept}-" and resumed.status == 206
    assert board.store.path_for(sha) is not None


def test_the_agent_says_why_a_download_waits_and_an_edit_of_the_windows_applies_live(
        tmp_path, server, private_key, public_key_b64, agent_factory) -> None:
    # A window that is closed now (local time in Hà Nội), whenever the test runs.
    start = dt.datetime.now(HANOI) + dt.timedelta(hours=2)
    window = [start.strftime("%H:%M"), (start + dt.timedelta(hours=1)).strftime("%H:%M")]
    files = {"text-poster": (media_file(tmp_path, "poster.png", 20_000, seed=6), "normal"),
             "video": (media_file(tmp_path, "video.png", 400_000, seed=7), "normal")}
    publish(server, private_key, 1, files)
    path = write_config(tmp_path / "agent.yaml", tmp_path, tmp_path / "state", [public_key_b64])
    config = yaml.safe_load(path.read_text())
    config["source"] = {"url": server.base_url, "token": "tok-123", "poll_interval_s": 30}
    config["downloads"] = {"windows": [window], "small_mb": 0.1}
    path.write_text(yaml.safe_dump(config))
    agent = agent_factory(path).start()

    held = wait_for(lambda: agent.status()["sync"]["held"], timeout=30, what="the video to wait for its window")
    assert held[0]["media"] == "video" and held[0]["until"].startswith(start.strftime("%Y-%m-%dT%H:%M"))
    assert fetched(server, "poster.png") and not fetched(server, "video.png")
    assert "waiting" in format_status(agent.status())
    started_at = agent.status()["uptime_s"]

    config["downloads"] = {"windows": [], "small_mb": 0.1}  # any time, from now
    path.write_text(yaml.safe_dump(config))
    wait_for(lambda: fetched(server, "video.png") and not agent.status()["sync"]["held"], timeout=30,
             what="the video to come once the windows are gone")
    status = agent.status()
    assert status["uptime_s"] >= started_at and "restarting in place" not in agent.log()  # applied live
    assert status["cache"]["media_missing"] == 0
    assert agent.stop() == 0


def test_a_release_wheel_waits_for_the_window_like_media(tmp_path) -> None:
    """The updater asks the same rules through `Windows` (no manifest at hand)."""
    from agent.downloads import Windows

    clock = Clock(dt.datetime(2026, 11, 26, 10, 0, tzinfo=HANOI))
    windows = Windows(lambda: NIGHT, clock, lambda: HANOI)
    assert windows.hold(30 * MIB).until == dt.datetime(2026, 11, 27, 1, 0, tzinfo=HANOI)  # type: ignore[union-attr]
    assert windows.hold(200_000 // 10) is None  # an agent-only wheel is small: any time
    clock.at = dt.datetime(2026, 11, 27, 4, 30, tzinfo=HANOI)
    assert windows.hold(30 * MIB) is None and windows.seconds_left(30 * MIB) == 1800.0


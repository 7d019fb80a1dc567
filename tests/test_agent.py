"""The whole agent as a technician meets it: `bangtin-agent run`, a watched folder, `ctl`, signals."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pygame
import pytest

from tests.conftest import (
    ROOT,
    VECTORS,
    ContentFolder,
    RunningAgent,
    base_manifest,
    media_entry,
    near,
    wait_for,
    write_config,
    write_png,
)

RED, GREEN = (220, 20, 20), (20, 200, 20)
CENTRE = (320, 200)  # inside the main zone of a 640x360 screen



def image_manifest(folder: ContentFolder, serial: int, colour: tuple[int, int, int], item_id: str,
                   **extra: Any) -> dict[str, Any]:
    png = write_png(folder.root / "media" / f"{item_id}.png", (160, 90), colour)
    return base_manifest(serial, media=[media_entry(png, f"m-{item_id}", "image/png")],
                         items=[{"id": item_id, "type": "image", "media": f"m-{item_id}", "duration_s": 30,
                                 "title": f"Ảnh {item_id}"}], **extra)


@pytest.fixture
def board(tmp_path: Path, content_folder: ContentFolder, public_key_b64: str,
          agent_factory: Callable[[Path], RunningAgent]) -> RunningAgent:
    content_folder.publish(image_manifest(content_folder, 1, RED, "red"))
    config = write_config(tmp_path / "agent.yaml", content_folder.root, tmp_path / "state", [public_key_b64])
    return agent_factory(config).start()


def centre_is(agent: RunningAgent, colour: tuple[int, int, int]) -> bool:
    return near(agent.screenshot().get_at(CENTRE), colour)


def test_plays_signed_content_switches_on_change_and_refuses_tampering(
        board: RunningAgent, content_folder: ContentFolder) -> None:
    wait_for(lambda: board.status()["current_item"] == "red", what="the red item on screen")
    status = board.status()
    assert status["manifest_serial"] == 1 and status["screen_on"] and not status["alert_active"]
    assert status["agent_version"] and status["uptime_s"] >= 0 and status["errors"] == []
    shot = board.screenshot()
    assert near(shot.get_at(CENTRE), RED)
    assert near(shot.get_at((2, 2)), (0x0B, 0x3D, 0x91))  # header band in the theme colour

    content_folder.publish(image_manifest(content_folder, 2, GREEN, "green"))
    # The red item is withdrawn, so it leaves at once; the folder change applies within 2 s.
    wait_for(lambda: board.status()["current_item"] == "green", timeout=2.5, what="green within 2 s")
    wait_for(lambda: centre_is(board, GREEN), timeout=2, what="green pixels")

    content_folder.write_raw((VECTORS / "manifest.tampered.json").read_bytes())
    wait_for(lambda: any("signature not valid" in e for e in board.status()["errors"]), timeout=3,
             what="the tampered manifest reported")
    assert board.status()["manifest_serial"] == 2
    assert centre_is(board, GREEN)


def test_alert_screen_and_screenshot_commands(board: RunningAgent, tmp_path: Path) -> None:
    wait_for(lambda: board.status()["current_item"] == "red", what="red on screen")
    result = board.ctl("alert", title="CẢNH BÁO KHẨN CẤP", body="Bão số 3", minutes=5)
    assert result["alert"].startswith("local-")
    status = board.status()
    assert status["alert_active"] and status["current_item"] == result["alert"]
    assert near(board.screenshot().get_at((320, 250)), (176, 0, 0))
    assert board.ctl("clear_alert")["cleared"] == 1
    wait_for(lambda: centre_is(board, RED), what="back to the item after clear")

    board.ctl("screen", mode="off")
    shot = board.screenshot()
    assert all(shot.get_at((x, y))[:3] == (0, 0, 0) for x in range(0, 640, 40) for y in range(0, 360, 40))
    assert board.status()["screen_on"] is False
    board.ctl("alert", title="KHẨN", body="Lũ quét", minutes=1)  # alerts show over a forced off
    assert near(board.screenshot().get_at((320, 250)), (176, 0, 0))
    board.ctl("clear_alert")
    board.ctl("screen", mode="auto")
    wait_for(lambda: centre_is(board, RED), what="screen back on")

    bad = json.loads(json.dumps(board.ctl("status")))  # status is plain JSON
    assert "outbox_pending" in bad
    from agent.ctlsocket import request

    assert request(board.socket, "screen", {"mode": "dim"}) == {
        "ok": False, "error": "screen: args.mode: expected on, off or auto, found 'dim'"}
    assert request(board.socket, "alert", {"title": "x", "minutes": -1})["error"].startswith("alert: args.minutes")
    assert "unknown command 'reboot'" in request(board.socket, "reboot")["error"]


def test_ctl_command_line(board: RunningAgent, tmp_path: Path) -> None:
    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", "ctl", "--config", str(board.config_path), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    wait_for(lambda: board.status()["current_item"] == "red", what="red on screen")
    status = json.loads(ctl("status", "--json").stdout)
    for field in ("manifest_serial", "current_item", "screen_on", "alert_active", "errors", "outbox_pending",
                  "uptime_s", "agent_version", "clock_offset_s"):
        assert field in status
    human = ctl("status")
    assert human.returncode == 0 and "serial 1" in human.stdout and "red" in human.stdout
    out = tmp_path / "shot.png"
    assert ctl("screenshot", str(out)).returncode == 0
    assert near(pygame.image.load(str(out)).get_at(CENTRE), RED)
    assert ctl("alert", "--title", "CẢNH BÁO", "--body", "Bão", "--minutes", "2").returncode == 0
    assert json.loads(ctl("status", "--json").stdout)["alert_active"] is True
    assert ctl("clear-alert").returncode == 0
    assert ctl("screen", "off").returncode == 0 and ctl("screen", "auto").returncode == 0
    assert ctl("sync").returncode == 0
    board.stop()
    gone = ctl("status")
    assert gone.returncode == 1 and "no agent answers" in gone.stderr


def test_sigterm_closes_the_showing_and_restart_plays_from_cache_offline(
        board: RunningAgent, content_folder: ContentFolder, agent_factory: Callable[[Path], RunningAgent]) -> None:
    wait_for(lambda: board.status()["current_item"] == "red", what="red on screen")
    board.ctl("alert", title="KHẨN", body="Lũ", minutes=5)
    board.ctl("clear_alert")
    wait_for(lambda: board.status()["current_item"] == "red", what="red again")
    assert board.stop(signal.SIGTERM) == 0
    assert "stopped cleanly" in board.log()
    records = board.records()
    assert [(r["item"], r["reason"]) for r in records][-1] == ("red", "shutdown")
    assert [r["type"] for r in records].count("alert") == 1
    assert records[0]["item"] == "red" and records[0]["reason"] == "preempted"
    assert all(r["manifest_serial"] == 1 and r["media_sha256"] for r in records if r["type"] == "image")

    # Power comes back, the USB stick is gone and there is no network: the stored content plays.
    shutil.rmtree(content_folder.root)
    again = agent_factory(board.config_path).start()
    wait_for(lambda: again.status()["current_item"] == "red", timeout=5, what="red from the cache")
    status = again.status()
    assert status["manifest_serial"] == 1 and status["display"]["first_frame_s"] is not None
    assert any("has no manifest.json" in e for e in status["errors"])
    assert centre_is(again, RED)
    assert again.stop(signal.SIGINT) == 0


def test_a_second_agent_on_the_same_socket_is_refused(board: RunningAgent,
                                                      agent_factory: Callable[[Path], RunningAgent]) -> None:
    second = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(board.config_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "another agent is already answering" in second.stderr
    assert board.status()["current_item"] == "red"


def test_demo_says_clearly_when_there_is_no_display(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    result = subprocess.run([sys.executable, "-m", "agent", "demo", "--dir", str(tmp_path / "d")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no display found" in result.stderr and "SDL_VIDEODRIVER=dummy" in result.stderr


def test_demo_plays_its_signed_sample_under_the_dummy_driver(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    log = (tmp_path / "demo.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "agent", "demo", "--dir", str(demo_dir)], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (demo_dir / "agent.yaml").exists(), timeout=30, what="the demo config written")
        demo = RunningAgent(demo_dir / "agent.yaml")
        demo.process = process
        wait_for(lambda: (demo_dir / "control.sock").exists() and demo.status()["current_item"], timeout=30,
                 what="the demo's first item on screen")
        status = demo.status()
        assert status["errors"] == [] and status["current_item"] in {"i1", "i2", "i3", "i4", "i5"}
        assert status["cache"]["media_missing"] == 0
        envelope = json.loads((demo_dir / "content" / "manifest.json").read_text())
        items = json.loads(base64.b64decode(envelope["payload"]))["items"]
        assert {item["type"] for item in items} == {"image", "text", "video"}  # every content type
        assert any(item["priority"] == "high" and item["when"]["times"] for item in items if "priority" in item)
        import av

        with av.open(str(demo_dir / "content" / "media" / "phong-chong-thien-tai.mp4")) as video:  # a real H.264 file
            stream = video.streams.video[0]
            assert stream.codec_context.name == "h264" and next(video.decode(stream)).width == 640
        shot = demo.screenshot()
        assert shot.get_size() == (1280, 720)
        assert near(shot.get_at((2, 716)), (0xFF, 0xD2, 0x00))  # ticker band, below its glyphs
        assert near(shot.get_at((2, 2)), (0x0B, 0x3D, 0x91))  # header
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_emergency_item_interrupts_a_long_item_without_waiting_for_its_end(
        board: RunningAgent, content_folder: ContentFolder) -> None:
    wait_for(lambda: board.status()["current_item"] == "red", what="red on screen")
    manifest = image_manifest(content_folder, 2, RED, "red")  # red unchanged: it would play on for 30 s
    manifest["items"].append({"id": "bao", "type": "text", "title": "KHẨN CẤP", "body": "Lũ quét", "duration_s": 60,
                              "priority": "emergency"})
    content_folder.publish(manifest)
    wait_for(lambda: board.status()["current_item"] == "bao", timeout=3, what="the emergency item within 1 s of the change")
    assert board.status()["manifest_serial"] == 2
    board.stop()
    assert [(r["item"], r["reason"]) for r in board.records()][:2] == [("red", "preempted"), ("bao", "shutdown")]

"""Display benchmark: run on demand (`python bench/bench_display.py`), prints figures, asserts nothing.

Measures the real agent process (`bangtin-agent run` with a `file://` folder):
  1. CPU % over N s showing a still image (header clock ticking once a second);
  2. CPU %, frame-cost percentiles and frames/s with the ticker scrolling at 1920x1080;
  3. start-up to the first frame and to the first content item, from a warm cache;
  4. resident memory.
Under Xvfb (x11 driver) when `Xvfb` is installed, with SDL_FRAMEBUFFER_ACCELERATION=0 so the figure
is the agent's own cost and not software OpenGL's (see GUIDE.md); otherwise the dummy driver.
Pi figures come only from a Pi: run this script there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.ctlsocket import ControlUnavailable, request  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_content(folder: Path, ticker: bool) -> None:
    import pygame

    (folder / "media").mkdir(parents=True, exist_ok=True)
    poster = pygame.Surface((1920, 1080))
    for y in range(0, 1080, 4):
        pygame.draw.rect(poster, (y % 256, 80, 255 - y % 256), (0, y, 1920, 4))
    pygame.image.save(poster, str(folder / "media" / "poster.jpg"))
    data = (folder / "media" / "poster.jpg").read_bytes()
    manifest: dict[str, Any] = {
        "schema": "bangtin.manifest/1", "serial": 1, "issued_at": "2026-11-26T08:00:00+07:00",
        "layout": {"header": {"title": "ỦY BAN NHÂN DÂN XÃ VĨNH THUẬN", "clock": True}, "ticker": {"speed_px_s": 120}},
        "media": [{"id": "m1", "url": "media/poster.jpg", "sha256": hashlib.sha256(data).hexdigest(),
                   "size": len(data), "type": "image/jpeg"}],
        "items": [{"id": "i1", "type": "image", "media": "m1", "duration_s": 3600}],
    }
    if ticker:
        manifest["ticker"] = [{"id": "t1", "text": "Người dân chủ động theo dõi thông tin thời tiết, phòng chống thiên tai. "
                                                    "Đêm nay có mưa rào và dông rải rác."}]
    (folder / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))


def write_config(work: Path, folder: Path, width: int, height: int) -> Path:
    import yaml

    config = {
        "device": {"id": "bench-board"},
        "source": {"url": folder.resolve().as_uri()},
        "storage": {"dir": str(work / "state")},
        "display": {"width": width, "height": height, "fullscreen": False, "fps": 30},
        "control": {"socket": str(work / "ctl.sock")},
    }
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def start_agent(config: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float, float]:
    """Start the agent; returns (process, seconds to answering, seconds to a content item on screen)."""
    socket_path = config.parent / "ctl.sock"
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "agent", "--log-level", "WARNING", "run", "--config", str(config)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answered = None
    while time.monotonic() - started < 60:
        if process.poll() is not None:
            raise SystemExit(f"agent exited with {process.returncode}")
        try:
            status = request(socket_path, "status", timeout=2)["result"]
        except (ControlUnavailable, KeyError, OSError):
            time.sleep(0.005)
            continue
        answered = answered or time.monotonic() - started
        if status.get("current_item"):
            return process, answered, time.monotonic() - started
        time.sleep(0.005)
    raise SystemExit("the agent did not show its content within 60 s")


def memory_breakdown(pid: int, top: int = 8) -> dict[str, float]:
    """Resident MB by mapping (/proc/PID/smaps): where the memory goes — surfaces and Python objects
    live in [heap] and anonymous maps, the libraries in their files."""
    totals: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header line
            name = Path(fields[5]).name if len(fields) > 5 else "[anon]"
        elif fields and fields[0] == "Rss:":
            totals[name] = totals.get(name, 0) + int(fields[1])
    ordered = sorted(totals.items(), key=lambda entry: -entry[1])
    breakdown = {key: round(kb / 1024, 1) for key, kb in ordered[:top]}
    breakdown["(everything else)"] = round(sum(kb for _, kb in ordered[top:]) / 1024, 1)
    return breakdown


def measure(process: subprocess.Popen[bytes], seconds: float, socket_path: Path) -> dict[str, Any]:
    frames_before = request(socket_path, "status")["result"]["display"]["frames"]
    cpu_before, wall_before = cpu_seconds(process.pid), time.monotonic()
    time.sleep(seconds)
    cpu_after, wall_after = cpu_seconds(process.pid), time.monotonic()
    status = request(socket_path, "status")["result"]
    elapsed = wall_after - wall_before
    return {
        "cpu_percent": round(100 * (cpu_after - cpu_before) / elapsed, 2),
        "frames_per_s": round((status["display"]["frames"] - frames_before) / elapsed, 1),
        "frame_ms": status["display"]["frame_ms"],
        "rss_mb": round(rss_mb(process.pid), 1),
        "rss_by_mapping_mb": memory_breakdown(process.pid),
        "driver": status["display"]["driver"],
    }


def alert_latency(socket_path: Path, samples: int) -> dict[str, float]:
    """Milliseconds from sending `alert` on the control socket to the first frame showing it."""
    latencies = []
    for n in range(samples):
        sent = time.monotonic()
        request(socket_path, "alert", {"title": "CẢNH BÁO KHẨN CẤP", "body": f"Bão số {n}", "minutes": 5})
        while True:  # the ack comes when the alert is queued; the frame follows in the same loop turn
            status = request(socket_path, "status")["result"]
            shown = status["display"]["scene_shown_mono"]
            if status["alert_active"] and shown is not None and shown >= sent:
                latencies.append((shown - sent) * 1000)
                break
        request(socket_path, "clear_alert")
        time.sleep(0.2)
    latencies.sort()
    return {"median_ms": round(latencies[len(latencies) // 2], 2),
            "p95_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
            "max_ms": round(latencies[-1], 2), "samples": len(latencies)}


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def display_env() -> tuple[dict[str, str], subprocess.Popen[bytes] | None, str]:
    env = dict(os.environ, SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
    xvfb = shutil.which("Xvfb")
    if xvfb:
        display = ":97"
        server = subprocess.Popen([xvfb, display, "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # Xvfb has no readiness signal; only the benchmark waits like this
        env.update(DISPLAY=display, SDL_VIDEODRIVER="x11", SDL_FRAMEBUFFER_ACCELERATION="0")
        return env, server, "x11 under Xvfb, SDL_FRAMEBUFFER_ACCELERATION=0"
    env.update(SDL_VIDEODRIVER="dummy")
    return env, None, "dummy (Xvfb not installed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window per scenario (default 30)")
    args = parser.parse_args()
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import pygame

    pygame.display.init()
    env, server, how = display_env()
    results: dict[str, Any] = {"display": how, "seconds": args.seconds}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for name, ticker in (("still_image", False), ("ticker_1080p", True)):
                scenario = work / name
                make_content(scenario / "content", ticker)
                config = write_config(scenario, scenario / "content", 1920, 1080)
                process, _, _ = start_agent(config, env)
                try:
                    time.sleep(1.0)  # let the first item's decode settle before measuring
                    results[name] = measure(process, args.seconds, scenario / "ctl.sock")
                    if not ticker:
                        results["alert_latency_local_ctl_1080p"] = alert_latency(scenario / "ctl.sock", 20)
                finally:
                    stop(process)
            # Warm start: the still-image board again, cache and manifest already on disk.
            config = work / "still_image" / "agent.yaml"
            process, answered, content = start_agent(config, env)
            first_frame = request(work / "still_image" / "ctl.sock", "status")["result"]["display"]["first_frame_s"]
            results["warm_start"] = {"to_control_socket_s": round(answered, 3), "to_content_on_screen_s": round(content, 3),
                                     "agent_init_to_first_frame_s": first_frame}
            stop(process)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

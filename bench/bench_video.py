"""Video benchmark: frames presented per second, dropped frames and CPU for 720p30 and 1080p30.

    python bench/bench_video.py [--seconds 20]

Encodes 10-second H.264 clips with moving content (PyAV/libx264), plays each looped in the real
agent at a 1920x1080 screen, and reads the agent's own counters plus its CPU time. Runs under the
SDL dummy driver and, when Xvfb is installed, under x11 with SDL_FRAMEBUFFER_ACCELERATION=0.
Pi figures come only from a Pi; a Pi 4 will want a hardware decoding backend for 1080p.
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

import av  # noqa: E402
import yaml  # noqa: E402

from agent.ctlsocket import ControlUnavailable, request  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def encode(path: Path, size: tuple[int, int], fps: int = 30, seconds: int = 10) -> Path:
    """A gradient that shifts and a box that moves: real work for the decoder every frame."""
    width, height = size
    row = bytes(range(256)) * (width * 3 // 256 + 4)  # long enough for any shift below
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for n in range(fps * seconds):
            frame = av.VideoFrame(width, height, "rgb24")
            shift = (n * 9) % 256
            lines = [row[shift * 3: shift * 3 + width * 3]] * height
            box_x = (n * 12) % (width - 100)
            for y in range(height // 3, height // 3 + 100):
                line = bytearray(lines[y])
                line[box_x * 3:(box_x + 100) * 3] = b"\xff\xd2\x00" * 100
                lines[y] = bytes(line)
            frame.planes[0].update(b"".join(lines))
            frame.pts = n
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_clip(work: Path, clip: Path, env: dict[str, str], seconds: float) -> dict[str, Any]:
    content = work / "content"
    (content / "media").mkdir(parents=True, exist_ok=True)
    target = content / "media" / clip.name
    shutil.copyfile(clip, target)
    data = target.read_bytes()
    manifest = {"schema": "bangtin.manifest/1", "serial": 1, "issued_at": "2026-11-26T08:00:00+07:00",
                "layout": {"header": {"title": "ỦY BAN NHÂN DÂN XÃ VĨNH THUẬN"}},
                "media": [{"id": "v", "url": f"media/{clip.name}", "sha256": hashlib.sha256(data).hexdigest(),
                           "size": len(data), "type": "video/mp4"}],
                "items": [{"id": "clip", "type": "video", "media": "v", "duration_s": 3600}]}
    (content / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))
    config = {"device": {"id": "bench"}, "source": {"url": content.as_uri()}, "storage": {"dir": str(work / "state")},
              "display": {"width": 1920, "height": 1080, "fullscreen": False, "fps": 30},
              "control": {"socket": str(work / "ctl.sock")}}
    (work / "agent.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    process = subprocess.Popen([sys.executable, "-m", "agent", "--log-level", "WARNING", "run", "--config",
                                str(work / "agent.yaml")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    sock = work / "ctl.sock"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                video = request(sock, "status")["result"]["display"]["video"]
                if video and video["presented"] > 10:
                    break
            except (ControlUnavailable, KeyError, TypeError, OSError):
                pass
            time.sleep(0.05)
        before = request(sock, "status")["result"]["display"]["video"]
        cpu0, t0 = cpu_seconds(process.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(process.pid), time.monotonic()
        after = request(sock, "status")["result"]["display"]["video"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    elapsed = t1 - t0
    return {"zone_size": after["size"], "frames_presented_per_s": round((after["presented"] - before["presented"]) / elapsed, 1),
            "dropped_per_s": round((after["dropped"] - before["dropped"]) / elapsed, 2),
            "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / elapsed, 1)}


def rss_over_plays(work: Path, plays: int = 300) -> dict[str, float]:
    """Resident memory of this process across hundreds of short plays through the PyAV backend:
    a leak per play would show as growth (a board plays a clip thousands of times a week)."""
    from agent.display.pyav import PyAVBackend

    clip = encode(work / "short.mp4", (320, 180), fps=20, seconds=1)
    backend = PyAVBackend()

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def play() -> None:
        playback = backend.open(str(clip), (320, 180), None, lambda: None)
        fake_now = 0.0
        while not playback.finished() and not playback.error():
            fake_now += 1.0  # a second per call: every frame is due, so the clip drains as fast as it decodes
            if playback.frame(fake_now) is None:
                time.sleep(0.001)
        playback.close()

    for _ in range(30):
        play()
    baseline = rss_mb()
    for _ in range(plays):
        play()
    backend.close()
    return {"plays": plays, "rss_before_mb": round(baseline, 1), "rss_after_mb": round(rss_mb(), 1),
            "growth_mb": round(rss_mb() - baseline, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description="video playback benchmark")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    results: dict[str, Any] = {"seconds": args.seconds, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["memory_over_plays"] = rss_over_plays(work)
        clips = {"720p30": encode(work / "720p30.mp4", (1280, 720)), "1080p30": encode(work / "1080p30.mp4", (1920, 1080))}
        drivers: list[tuple[str, dict[str, str], subprocess.Popen[bytes] | None]] = []
        base = dict(os.environ, SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
        drivers.append(("dummy", dict(base, SDL_VIDEODRIVER="dummy"), None))
        if shutil.which("Xvfb"):
            server = subprocess.Popen(["Xvfb", ":98", "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # Xvfb has no readiness signal; only the benchmark waits like this
            drivers.append(("x11 (Xvfb, SDL_FRAMEBUFFER_ACCELERATION=0)",
                            dict(base, SDL_VIDEODRIVER="x11", DISPLAY=":98", SDL_FRAMEBUFFER_ACCELERATION="0"), server))
        try:
            for driver, env, _ in drivers:
                for name, clip in clips.items():
                    run = work / f"{name}-{len(results)}"
                    run.mkdir()
                    results[f"{name} / {driver}"] = run_clip(run, clip, env, args.seconds)
        finally:
            for _, _, server in drivers:
                if server is not None:
                    server.terminate()
                    server.wait()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

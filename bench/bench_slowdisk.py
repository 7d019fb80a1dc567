"""Frame timing on a slow SD card: every fsync of the agent takes 200 ms (an LD_PRELOAD shim).

    python bench/bench_slowdisk.py [--seconds 30] [--fsync-ms 200] [--agent-root DIR]

Runs the real agent process (SDL dummy driver, 1920x1080) on a bulletin of short items with a
ticker, so it presents a frame every 1/30 s while items change every 1.5 s (each change writes a
proof-of-play record) and alerts come and go (each writes alerts.json). It prints the gaps between
presented frames (from a trace of pygame's flip/update loaded into the agent, whatever its
version) and the time from `ctl alert` to the alert's first frame. `--agent-root` runs another
checkout of the agent (e.g. an older commit, for before/after figures) with this bench.

Targets (issue 11): no frame later than two frame periods (66.7 ms at 30 fps) and an alert on
screen within 300 ms, with every fsync slowed to 200 ms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from agent.ctlsocket import request  # noqa: E402
from bench.benchkit import wait  # noqa: E402

FPS = 30


def build_shim(work: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("bench_slowdisk needs a C compiler (apt-get install gcc) for its fsync shim")
    library = work / "slowfsync.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(ROOT / "bench" / "slowfsync.c"),
                    "-ldl"], check=True)
    return library


def content(folder: Path) -> None:
    (folder / "media").mkdir(parents=True, exist_ok=True)
    items = [{"id": f"i{n}", "type": "text", "title": f"THÔNG BÁO SỐ {n}",
              "body": "Ủy ban nhân dân xã thông báo lịch tiếp công dân và phòng chống thiên tai. " * 4,
              "duration_s": 1.5} for n in range(4)]
    manifest = {"schema": "bangtin.manifest/1", "serial": 1, "issued_at": "2026-11-26T08:00:00+07:00",
                "layout": {"header": {"title": "ỦY BAN NHÂN DÂN XÃ VĨNH THUẬN"}}, "items": items,
                "ticker": [{"id": "t1", "text": "Người dân chủ động theo dõi thông tin thời tiết, phòng chống bão."}]}
    (folder / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else 0.0


def run(agent_root: Path, seconds: float, fsync_ms: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shim = build_shim(work)
        content(work / "content")
        config = {"device": {"id": "bench-board"}, "source": {"url": (work / "content").as_uri()},
                  "storage": {"dir": str(work / "state")}, "control": {"socket": str(work / "ctl.sock")},
                  "display": {"width": 1920, "height": 1080, "fullscreen": False, "fps": FPS}}
        (work / "agent.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
        trace, count = work / "presents.txt", work / "fsyncs.txt"
        env = dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1",
                   LD_PRELOAD=str(shim), SLOWFSYNC_MS=str(fsync_ms), SLOWFSYNC_COUNT=str(count),
                   BANGTIN_FRAME_TRACE=str(trace), PYTHONPATH=str(ROOT / "bench" / "frametrace"))
        process = subprocess.Popen([sys.executable, "-m", "agent", "--log-level", "WARNING", "run", "--config",
                                    str(work / "agent.yaml")], cwd=agent_root, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        sock = work / "ctl.sock"
        latencies = []
        still: list[tuple[float, float]] = []  # while an alert is up the screen is still: no frame is due
        try:
            wait(lambda: request(sock, "status")["result"]["current_item"], 60, "an item on screen", interval=0.005)
            measured_from = time.monotonic()
            while time.monotonic() - measured_from < seconds:
                time.sleep(2.0)  # items change on their own meanwhile; then an alert comes
                sent = time.monotonic()
                request(sock, "alert", {"title": "CẢNH BÁO KHẨN CẤP", "body": "Bão số 3", "minutes": 5})
                shown = wait(lambda sent=sent: _alert_frame(sock, sent), 10, "the alert on screen", interval=0.005)
                latencies.append((shown - sent) * 1000)
                time.sleep(0.5)
                request(sock, "clear_alert")
                still.append((sent, time.monotonic() + 0.1))
            measured_to = time.monotonic()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        presents = [float(line) for line in trace.read_text().split()] if trace.exists() else []
        window = [t for t in presents if measured_from <= t <= measured_to]
        # Gaps between frames while the ticker moves (a frame is due every 1/30 s); alert periods are
        # left out: a still alert screen presents once a second, for its clock.
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(window)
                if not any(start - 0.05 <= b and a <= end for start, end in still)]
        period = 1000 / FPS
        return {"agent": str(agent_root), "fsync_ms": fsync_ms, "seconds": round(measured_to - measured_from, 1),
                "fsyncs": len(count.read_text()) if count.exists() else 0, "frames": len(window),
                "frame_gap_ms": {"p50": percentile(gaps, 0.5), "p99": percentile(gaps, 0.99),
                                 "max": round(max(gaps), 1) if gaps else 0.0},
                "frames_later_than_two_periods": sum(1 for gap in gaps if gap > 2 * period),
                "alert_to_screen_ms": {"n": len(latencies), "median": round(statistics.median(latencies), 1),
                                       "max": round(max(latencies), 1)} if latencies else None}


def _alert_frame(sock: Path, sent: float) -> float | None:
    status = request(sock, "status")["result"]
    shown = status["display"]["scene_shown_mono"]
    return shown if status["alert_active"] and shown is not None and shown >= sent else None


def main() -> None:
    parser = argparse.ArgumentParser(description="frame timing with every fsync slowed")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fsync-ms", type=int, default=200)
    parser.add_argument("--agent-root", type=Path, default=ROOT, help="a checkout of the agent to run (default: this one)")
    args = parser.parse_args()
    print(json.dumps(run(args.agent_root.resolve(), args.seconds, args.fsync_ms), indent=2))


if __name__ == "__main__":
    main()

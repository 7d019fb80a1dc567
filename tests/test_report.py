"""Reporting: heartbeats and proof-of-play uploads to the reference source; the journal and `report`."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.health import Problems
from agent.models import PlayRecord
from agent.outbox import Outbox
from agent.report import build_report, format_report
from agent.sync.client import ClientSettings, HttpClient
from agent.sync.reporter import Reporter
from refsource.server import Faults, ReferenceServer, SourceState
from tests.conftest import ROOT, wait_for

DEVICE = "vinhthuan-ubnd-01"
BASE = "/api/bangtin/v1"
HEARTBEAT_FIELDS = {"device", "sent_at", "agent_version", "uptime_s", "manifest_serial", "current_item", "screen_on",
                    "alert_active", "cache", "disk_free_bytes", "outbox_pending", "last_sync_ok_at", "clock_offset_s",
                    "errors"}


def record(n: int, item: str = "i1", day: str = "2026-11-26", seconds: float = 10, completed: bool = True) -> PlayRecord:
    start = f"{day}T08:{n // 60 % 60:02d}:{n % 60:02d}.000+07:00"
    return PlayRecord(f"r{n:06d}", item, "text", f"Tiêu đề {item}", None, 1, "normal", start, start,
                      int(seconds * 1000), completed, None if completed else "preempted")


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    srv = ReferenceServer(("127.0.0.1", 0), SourceState(base_path=BASE, token="tok")).start()
    yield srv
    srv.stop()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    box.open()
    yield box
    box.close()


def make_reporter(server: ReferenceServer, outbox: Outbox, *, heartbeat_s: float = 3600, upload_s: float = 3600,
                  batch: int = 50, heartbeat: Any = None, seed: int = 4) -> tuple[Reporter, Problems, threading.Event]:
    problems, stop = Problems(), threading.Event()
    client = HttpClient(ClientSettings(server.base_url, "tok", None, "bangtin-agent/test", read_timeout_s=5))
    reporter = Reporter(client, device_url=f"{server.base_url}/devices/{DEVICE}", device_id=DEVICE, outbox=outbox,
                        heartbeat=heartbeat or (lambda: {"device": DEVICE, "errors": []}), problems=problems, stop=stop,
                        heartbeat_interval_s=heartbeat_s, upload_interval_s=upload_s, batch_size=batch,
                        today=lambda: "2026-11-26", rng=random.Random(seed))
    return reporter, problems, stop


def test_uploads_oldest_first_in_batches_and_deletes_only_after_2xx(server, outbox) -> None:
    outbox.add([record(n) for n in range(120)])
    reporter, problems, _ = make_reporter(server, outbox, batch=50)
    server.state.faults = Faults(unavailable_times=1, retry_after_s=30, apply_to="all")
    delay = reporter.upload_pending()
    assert delay >= 30  # Retry-After honoured
    assert outbox.pending() == 120 and not server.state.playlogs  # a 503 deletes nothing
    assert any("50 record(s) not uploaded" in e and "HTTP 503" in e for e in problems.current())  # one batch tried
    reporter.upload_pending()
    assert outbox.pending() == 0 and len(server.state.playlogs) == 120
    assert server.state.playlog_batches == 3  # 50 + 50 + 20
    posted = [r for r in server.state.requests if r.path.endswith("/playlogs") and r.status == 204]
    assert [r.headers.get("Content-Encoding") for r in posted] == ["gzip"] * 3  # bodies gzipped on a metered SIM
    assert list(server.state.playlogs)[:3] == ["r000000", "r000001", "r000002"]
    assert server.state.playlogs["r000007"]["title"] == "Tiêu đề i1"


def test_a_503_storm_loses_nothing_and_the_records_survive_a_restart(tmp_path, server) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.open()
    box.add([record(n) for n in range(30)])
    reporter, _, _ = make_reporter(server, box)
    server.state.faults = Faults(unavailable_times=5, retry_after_s=1, apply_to="all")
    for _ in range(5):
        reporter.upload_pending()
    assert box.pending() == 30
    box.close()  # the board restarts (or loses power) with records pending
    again = Outbox(tmp_path / "o.sqlite")
    again.open()
    assert again.pending() == 30
    make_reporter(server, again)[0].upload_pending()
    assert again.pending() == 0 and len(server.state.playlogs) == 30
    again.close()


def test_duplicate_delivery_is_harmless(server, outbox) -> None:
    outbox.add([record(n) for n in range(5)])
    reporter, _, _ = make_reporter(server, outbox)
    reporter.upload_pending()
    with sqlite3.connect(outbox.path) as db:  # as if the 2xx was lost after the source stored them
        db.execute("UPDATE records SET uploaded = 0")
    reporter.upload_pending()
    assert server.state.playlog_batches == 2 and len(server.state.playlogs) == 5


def test_heartbeats_go_periodically_and_a_missed_one_is_not_queued(server, outbox) -> None:
    beats = []

    def heartbeat() -> dict[str, Any]:
        beats.append(time.monotonic())
        return {"device": DEVICE, "n": len(beats)}

    reporter, problems, stop = make_reporter(server, outbox, heartbeat_s=0.5, heartbeat=heartbeat, seed=1)
    server.state.faults = Faults(unavailable_times=2, apply_to="all")
    reporter.start()
    try:
        wait_for(lambda: len(server.state.heartbeats) >= 3, timeout=15, what="three heartbeats")
    finally:
        stop.set()
        reporter.join(5)
    assert not any("heartbeat" in e for e in problems.current())  # reported while refused, resolved after
    numbers = [beat["n"] for beat in server.state.heartbeats]
    assert numbers[0] == 3  # the two refused ones were not re-sent later: each beat is built fresh
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


def test_cap_folds_the_oldest_records_into_daily_summaries(tmp_path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_records=1000, journal_days=400)
    box.open()
    box.add([record(n, item="i1" if n % 2 else "i2", day="2026-11-20", completed=n % 5 != 0) for n in range(1000)])
    box.add([record(1000 + n, day="2026-11-21") for n in range(300)])
    box.enforce_limits("2026-11-26")
    with sqlite3.connect(box.path) as db:
        assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 1000
    assert box.summarised() == 300
    report = build_report(tmp_path / "o.sqlite", "2026-11-20", "2026-11-21")
    by_item = {entry["item"]: entry for entry in report["items"]}
    assert by_item["i1"]["count"] == 500 + 300 and by_item["i2"]["count"] == 500  # nothing lost from the totals
    assert by_item["i2"]["interrupted"] == 100 and by_item["i1"]["interrupted"] == 100
    box.close()


def test_journal_keeps_uploaded_records_for_the_report_then_prunes_by_age(tmp_path) -> None:
    box = Outbox(tmp_path / "o.sqlite", journal_days=30)
    box.open()
    box.add([record(1, day="2026-10-01"), record(2, day="2026-11-25"), record(3, day="2026-10-02")])
    box.mark_uploaded([seq for seq, record in box.pending_batch(10) if record["id"] in ("r000001", "r000002")])
    assert box.pending() == 1
    assert [e["count"] for e in build_report(tmp_path / "o.sqlite", None, None)["items"]] == [3]
    box.enforce_limits("2026-11-26")
    with sqlite3.connect(box.path) as db:
        remaining = [r[0] for r in db.execute("SELECT id FROM records ORDER BY seq")]
    assert remaining == ["r000002", "r000003"]  # old *and* uploaded goes; never one still pending
    box.close()


def test_report_command_formats(tmp_path) -> None:
    box = Outbox(tmp_path / "state" / "outbox.sqlite")
    box.open()
    box.add([record(n, item="lich", seconds=10) for n in range(6)] + [record(10, item="bao", seconds=15, completed=False)]
            + [record(20, item="lich", day="2026-12-25")])
    box.close()
    config = tmp_path / "agent.yaml"
    config.write_text(f"device: {{id: b1}}\nsource: {{url: 'file:///c'}}\nstorage: {{dir: {tmp_path / 'state'}}}\n")

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "agent", "report", "--config", str(config), *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    document = json.loads(run("--from", "2026-11-01", "--to", "2026-11-30", "--format", "json"))
    assert document["from"] == "2026-11-01" and document["to"] == "2026-11-30"
    assert document["items"] == [
        {"item": "lich", "title": "Tiêu đề lich", "type": "text", "count": 6, "completed": 6, "interrupted": 0,
         "total_s": 60.0, "first_shown": "2026-11-26T08:00:00.000+07:00", "last_shown": "2026-11-26T08:00:05.000+07:00"},
        {"item": "bao", "title": "Tiêu đề bao", "type": "text", "count": 1, "completed": 0, "interrupted": 1,
         "total_s": 15.0, "first_shown": "2026-11-26T08:00:10.000+07:00", "last_shown": "2026-11-26T08:00:10.000+07:00"}]
    csv_lines = run("--format", "csv").splitlines()
    # The JSON's keys, in AGENT.md's order, then the priority class (added at the end: readers by position still work).
    assert csv_lines[0] == "item,title,type,count,completed,interrupted,total_s,first_shown,last_shown,priority"
    assert csv_lines[1].endswith(",normal")
    assert csv_lines[1].startswith("lich,Tiêu đề lich,text,7,7,0,70.0,")
    table = run()
    assert "Tiêu đề lich" in table and "shown" in table
    bad = subprocess.run([sys.executable, "-m", "agent", "report", "--config", str(config), "--from", "26/11/2026"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected a date YYYY-MM-DD" in bad.stderr
    assert "no showings recorded" in format_report(build_report(tmp_path / "none.sqlite", None, None), "table")


def test_gzip_is_used_only_when_it_pays(server) -> None:
    client = HttpClient(ClientSettings(server.base_url, "tok", None, "ua"))
    client.post(f"{server.base_url}/devices/{DEVICE}/heartbeat", json.dumps({"device": DEVICE}).encode(),
                "application/json", 10)
    client.post(f"{server.base_url}/devices/{DEVICE}/heartbeat",
                json.dumps({"device": DEVICE, "errors": ["e" * 50] * 20}).encode(), "application/json", 10)
    posts = [r for r in server.state.requests if r.method == "POST"]
    assert "Content-Encoding" not in posts[0].headers and posts[1].headers["Content-Encoding"] == "gzip"
    assert "Accept" not in posts[0].headers and "Connection" not in posts[0].headers
    assert server.state.heartbeats[1]["errors"] == ["e" * 50] * 20  # the source read the gzipped body


def test_an_outage_keeps_records_until_the_source_is_back(server, outbox) -> None:
    outbox.add([record(n) for n in range(10)])
    problems, stop = Problems(), threading.Event()
    down = HttpClient(ClientSettings("http://127.0.0.1:9/api", "tok", None, "ua", connect_timeout_s=2))
    reporter = Reporter(down, device_url="http://127.0.0.1:9/api/devices/x", device_id=DEVICE, outbox=outbox,
                        heartbeat=lambda: {}, problems=problems, stop=stop, heartbeat_interval_s=60,
                        upload_interval_s=30, batch_size=50, today=lambda: "2026-11-26", rng=random.Random(1))
    delays = [reporter.upload_pending() for _ in range(3)]
    assert outbox.pending() == 10 and delays[2] > delays[0]  # backing off, nothing lost
    assert any("connection refused" in e for e in problems.current())
    make_reporter(server, outbox)[0].upload_pending()  # the link is back
    assert outbox.pending() == 0 and len(server.state.playlogs) == 10

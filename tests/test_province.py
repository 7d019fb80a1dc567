"""The province's report (`python -m refsource report`) over boards that uploaded to the reference source."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from refsource import uploads
from refsource.cli import load_site
from refsource.report import build
from refsource.server import ReferenceServer, SourceState
from tests.browser import assert_a4_and_inside_margins, print_to_pdf, read_pdf
from tests.conftest import ROOT, RunningAgent, base_manifest, sign_manifest, wait_for, write_config

BOARDS = ("vinhthuan-ubnd-01", "vinhthuan-ubnd-02")


def refsource(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "refsource", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_two_boards_upload_and_the_province_report_adds_them_up(
        tmp_path: Path, private_key: Ed25519PrivateKey, public_key_b64: str,
        agent_factory: Callable[[Path], RunningAgent]) -> None:
    site = tmp_path / "site"
    (site / "devices" / "vinhthuan-ubnd-03").mkdir(parents=True)  # published to, never heard from
    state = SourceState(base_path="/api", token="tok")
    load_site(site, state)
    server = ReferenceServer(("127.0.0.1", 0), state).start()
    try:
        items = [{"id": f"t{n}", "type": "text", "title": f"Tin số {n}: Ủy ban xã thông báo", "body": "Nội dung",
                  "duration_s": 0.5} for n in range(2)]
        body = sign_manifest(base_manifest(1, items=items), private_key)  # audience group:angiang: both boards
        agents = []
        for n, board in enumerate(BOARDS):
            server.publish(board, body)
            (tmp_path / f"b{n}").mkdir()
            config_path = write_config(tmp_path / f"b{n}" / "agent.yaml", tmp_path / "unused", tmp_path / f"b{n}" / "state",
                                       [public_key_b64])
            config = yaml.safe_load(config_path.read_text())
            config["device"]["id"] = board
            config["source"] = {"url": server.base_url, "token": "tok", "poll_interval_s": 10}
            config["report"] = {"upload_interval_s": 1, "heartbeat_interval_s": 10}
            config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
            agents.append(agent_factory(config_path).start())
        for n, board in enumerate(BOARDS):
            wait_for(lambda b=board, want=2 + 2 * n: sum(  # type: ignore[misc]
                1 for r in uploads.read_records(site / "devices" / b) if r["type"] != "event") >= want,
                timeout=40, what=f"showings from {board} at the source")
        for agent in agents:
            assert agent.stop() == 0
    finally:
        server.stop()

    province = json.loads(refsource("report", "--site", str(site), "--format", "json"))
    rows = {row["board"]: row for row in province["boards"]}
    assert sorted(rows) == [*BOARDS, "vinhthuan-ubnd-03"]
    for board in BOARDS:
        received = [r for r in uploads.read_records(site / "devices" / board)]
        showings = [r for r in received if r["type"] != "event"]
        assert rows[board]["showings"] == len(showings) > 0
        assert rows[board]["on_screen_s"] == round(sum(r["duration_ms"] for r in showings) / 1000, 1)
        assert rows[board]["days_in_operation"] == 1 and not rows[board]["silent"]
        assert any(r["item"] == "agent_start" for r in received)  # events travel with the showings
        assert province["reports"][board]["items"]  # the board's own detail
    assert rows["vinhthuan-ubnd-03"]["silent"] and rows["vinhthuan-ubnd-03"]["last_heard"] is None
    assert province["silent"] == ["vinhthuan-ubnd-03"]
    totals = province["totals"]
    assert totals["boards"] == 3 and totals["silent"] == 1
    assert totals["showings"] == sum(rows[b]["showings"] for b in BOARDS)

    table = list(csv.DictReader(io.StringIO(refsource("report", "--site", str(site), "--format", "csv"))))
    assert [row["board"] for row in table] == [*BOARDS, "vinhthuan-ubnd-03", "total"]
    assert int(table[-1]["showings"]) == totals["showings"]

    html = tmp_path / "tinh.html"
    refsource("report", "--site", str(site), "--format", "html", "--out", str(html))
    pdf = read_pdf(print_to_pdf(html, tmp_path / "tinh.pdf", tmp_path / "profile"))
    assert_a4_and_inside_margins(pdf)
    assert pdf.pages >= 1 + 3  # the table, then each board's appendix on its own page(s)
    flat = pdf.flat
    assert "BÁO CÁO TỔNG HỢP HOẠT ĐỘNG BẢNG TIN ĐIỆN TỬ CÔNG CỘNG" in flat
    assert "vinhthuan-ubnd-03 Chưa từng gửi số liệu" in flat
    for board in BOARDS:
        assert f"Phụ lục {BOARDS.index(board) + 1}. Bảng tin {board}" in flat


def test_a_board_last_heard_long_before_the_end_of_the_period_went_silent(tmp_path: Path) -> None:
    def heard(board: str, when: str) -> None:
        uploads.append_records(tmp_path, board, [{"id": f"{board}-1", "item": "a", "type": "text", "title": "A",
                                                  "priority": "normal", "started_at": when, "ended_at": when,
                                                  "duration_ms": 1000, "completed": True, "reason": None}])

    heard("early", "2026-11-20T09:00:00+07:00")
    heard("late", "2026-11-30T20:00:00+07:00")
    province = build(tmp_path, "2026-11-01", "2026-11-30", now=dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
    assert province["silent"] == ["early"]  # the period ended 30/11 24:00; 48 h before that is the line
    assert [b["days_in_operation"] for b in province["boards"]] == [1, 1]


def test_the_source_keeps_uploads_across_its_restarts_each_record_once(tmp_path: Path) -> None:
    import requests

    record = {"id": "r1", "item": "a", "type": "text", "title": "Tin", "priority": "normal",
              "started_at": "2026-11-26T08:00:00.000+07:00", "ended_at": "2026-11-26T08:00:10.000+07:00",
              "duration_ms": 10000, "completed": True, "reason": None}
    for _ in range(2):  # the same batch again after a restart (its 2xx was lost): harmless
        state = SourceState(base_path="/api")
        load_site(tmp_path, state)
        server = ReferenceServer(("127.0.0.1", 0), state).start()
        try:
            for path, body in (("playlogs", {"device": "b1", "records": [record]}), ("heartbeat", {"device": "b1"})):
                reply = requests.post(f"{server.base_url}/devices/b1/{path}", json=body, timeout=10)
                assert reply.status_code == 204
            assert requests.post(f"{server.base_url}/devices/..%2F..%2Fetc/playlogs", json={"records": [record]},
                                 timeout=10).status_code == 204  # taken, but no folder is named by it
        finally:
            server.stop()
    assert [r["id"] for r in uploads.read_records(tmp_path / "devices" / "b1")] == ["r1"]
    assert (tmp_path / "devices" / "b1" / "playlogs.jsonl").read_text().count("\n") == 1
    assert uploads.read_heartbeat(tmp_path / "devices" / "b1")["received_at"]  # type: ignore[index]
    assert sorted(p.name for p in (tmp_path / "devices").iterdir()) == ["b1"]


def test_a_cloned_board_shows_up_in_the_province_report(tmp_path: Path) -> None:
    """The source refuses a body signed by another key for a known board and keeps the conflict in
    the site; the province's report lists it (json and html)."""
    from agent.identity import load_or_create
    from agent.sync.client import ClientSettings, HttpClient

    site = tmp_path / "site"
    site.mkdir()
    state = SourceState(base_path="/api")
    load_site(site, state)
    server = ReferenceServer(("127.0.0.1", 0), state).start()
    try:
        for storage in ("board", "clone"):
            identity = load_or_create(tmp_path / storage)
            client = HttpClient(ClientSettings(server.base_url, None, None, "bangtin-agent/test"),
                                signer=identity.signature_header)
            body = json.dumps({"device": "b1", "board_key": identity.public_b64}).encode()
            status = client.post(f"{server.base_url}/devices/b1/heartbeat", body, "application/json", 10).status_code
            assert status == (204 if storage == "board" else 409)
            client.close()
    finally:
        server.stop()
    province = build(site, None, None, now=dt.datetime.now(dt.UTC))
    clone = load_or_create(tmp_path / "clone")
    assert [(c["device"], c["keyid"]) for c in province["conflicts"]] == [("b1", clone.fingerprint)]
    html = refsource("report", "--site", str(site), "--format", "html")
    assert "Nghi sao chép thẻ nhớ" in html and clone.fingerprint in html

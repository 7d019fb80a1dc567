"""The real agent plays, is stopped and started again; `report --format html` prints on A4 in Chromium
with the journal's figures and Vietnamese intact."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.reporthtml import PRIORITY_NAMES, TYPE_NAMES, hms, moment
from tests.browser import assert_a4_and_inside_margins, print_to_pdf, read_pdf, screenshot
from tests.conftest import ROOT, ContentFolder, RunningAgent, base_manifest, wait_for, write_config


def journal(storage: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(storage / "outbox.sqlite")
    try:
        return [json.loads(body) for (body,) in db.execute("SELECT body FROM records ORDER BY seq")]
    finally:
        db.close()


def test_a_played_board_prints_its_report(tmp_path: Path, content_folder: ContentFolder, public_key_b64: str,
                                          agent_factory: Callable[[Path], RunningAgent]) -> None:
    items = [{"id": "lich", "type": "text", "title": "Lịch tiêm chủng tháng 12", "body": "Trạm y tế xã", "duration_s": 0.6},
             # Typed with "Unicode tổ hợp" (decomposed): the board keeps and prints it precomposed.
             {"id": "dien", "type": "text", "title": unicodedata.normalize("NFD", "Thông báo cắt điện"), "body": "Điện lực",
              "duration_s": 0.5}]
    content_folder.publish(base_manifest(1, items=items))
    config = write_config(tmp_path / "agent.yaml", content_folder.root, tmp_path / "state", [public_key_b64])
    agent = agent_factory(config).start()
    wait_for(lambda: len(agent.records()) >= 3, timeout=30, what="three showings")
    agent.ctl("alert", title="CẢNH BÁO BÃO SỐ 3", body="Người dân không ra khơi", minutes=5)
    wait_for(lambda: agent.status()["alert_active"], what="the alert on screen")
    agent.ctl("clear_alert")
    wait_for(lambda: any(r["type"] == "alert" for r in agent.records()), what="the alert's record")
    agent.ctl("screen", mode="off")
    wait_for(lambda: agent.events("screen_dark"), what="the forced dark in the journal")
    agent.ctl("screen", mode="auto")
    wait_for(lambda: len(agent.events("screen_lit")) >= 2, what="lit again")
    assert agent.stop() == 0
    first_run = len(agent.records())
    again = agent_factory(config).start()  # the gap between the runs is an outage (a clean stop)
    wait_for(lambda: len(again.records()) >= first_run + 2, timeout=30, what="showings of the second run")
    assert again.stop() == 0

    rows = journal(tmp_path / "state")
    events = [(r["item"], r["details"]) for r in rows if r["type"] == "event"]
    assert events[0] == ("agent_start", {"version": events[0][1]["version"], "previous_stop": "first"})
    assert ("screen_dark", {"cause": "forced", "mode": "off"}) in events
    assert [d["previous_stop"] for name, d in events if name == "agent_start"] == ["first", "clean"]
    assert [d for name, d in events if name == "agent_stop"] == [{"clean": True, "reason": "stop"}] * 2
    assert [d for name, d in events if name == "manifest_changed"] == [{"serial": 1, "previous_serial": None, "items": 2}]

    html = tmp_path / "bao-cao.html"
    made = subprocess.run([sys.executable, "-m", "agent", "report", "--config", str(config), "--format", "html",
                           "--out", str(html)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    pdf = read_pdf(print_to_pdf(html, tmp_path / "bao-cao.pdf", tmp_path / "profile"))
    screenshot(html, tmp_path / "bao-cao.png", tmp_path / "profile")  # what a person sees on screen, kept for a look
    assert pdf.pages == 2, pdf.pages  # the summary and chart, then the tables: a short period fits two A4 pages
    assert_a4_and_inside_margins(pdf)
    assert unicodedata.is_normalized("NFC", pdf.text)
    flat = pdf.flat

    # The figures, computed here from the journal itself.
    showings = [r for r in rows if r["type"] != "event"]
    per_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in showings:
        per_item[record["item"]].append(record)
    for item, records in per_item.items():
        first = records[0]
        done = sum(1 for r in records if r["completed"])
        seconds = sum(r["duration_ms"] for r in records) / 1000
        row = (f"{item} {first['title']} {TYPE_NAMES[first['type']]} {PRIORITY_NAMES[first['priority']]} "
               f"{len(records)} {done} {len(records) - done} {hms(seconds)}")
        # Compared without spaces: a long id wraps inside its narrow cell.
        assert "".join(row.split()) in "".join(flat.split()), f"{row!r} not in the printed report"
    completed = sum(1 for r in showings if r["completed"])
    assert f"Số lượt phát tin (hoàn thành) {len(showings)} ({completed})" in flat
    assert f"Tổng thời lượng hiển thị nội dung (giờ:phút:giây) {hms(sum(r['duration_ms'] for r in showings) / 1000)}" \
        in flat
    alert = next(r for r in showings if r["type"] == "alert")
    assert f"Lệnh cảnh báo CẢNH BÁO BÃO SỐ 3 {moment(alert['started_at'])} {moment(alert['ended_at'])} 1" in flat
    assert "Số cảnh báo khẩn cấp / số lượt phát tin khẩn cấp 1 / 1" in flat
    # Off between the runs, and since the second stopped (the report is made with the agent stopped).
    assert "Số lần ngừng hoạt động / số giờ ngừng hoạt động 2 / 0,00" in flat and "Tắt có chủ đích" in flat
    assert "Số ngày bảng tin hoạt động 1" in flat and "Số lần cập nhật nội dung 1" in flat
    assert "BÁO CÁO KẾT QUẢ HOẠT ĐỘNG BẢNG TIN ĐIỆN TỬ CÔNG CỘNG" in flat and "Lịch tiêm chủng tháng 12" in flat
    assert "Thông báo cắt điện" in flat and unicodedata.normalize("NFD", "Thông báo cắt điện") not in flat

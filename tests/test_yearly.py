"""The yearly report's figures from a journal whose answers are known, and the year printed by Chromium."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

from agent.events import event
from agent.models import PlayRecord
from agent.outbox import Outbox
from agent.report import build_report, format_report
from tests.browser import assert_a4_and_inside_margins, print_to_pdf, read_pdf, vietnamese_letters
from tests.conftest import ROOT

TZ = dt.timezone(dt.timedelta(hours=7))
ZONE = "Asia/Ho_Chi_Minh"


def at(day: int, hour: int, minute: int = 0, month: int = 11) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=TZ)


def showing(n: int, item: str, start: dt.datetime, seconds: float, *, priority: str = "normal", kind: str = "text",
            title: str | None = None, completed: bool = True) -> PlayRecord:
    end = start + dt.timedelta(seconds=seconds)
    return PlayRecord(f"s{n:06d}", item, kind, title or f"Bản tin {item}", None, 1, priority,
                      start.isoformat(timespec="milliseconds"), end.isoformat(timespec="milliseconds"),
                      round(seconds * 1000), completed, None if completed else "preempted")


def three_days(path: Path) -> Path:
    """24/11 a run cut by power at 23:10 (last sign of life 23:00); 25/11 a forced hour dark, an alert,
    a clean stop at 20:00; 26/11 a start at 06:30 that runs past midnight."""
    box = Outbox(path)
    box.open()
    rows: list[PlayRecord] = [event("agent_start", at(24, 6), ZONE, 1, version="t", previous_stop="first"),
                              event("screen_lit", at(24, 6), ZONE, 1, cause="start", mode="auto")]
    rows += [showing(n, "lich", at(24, 6) + dt.timedelta(minutes=10 * n), 60) for n in range(6)]
    rows += [showing(10, "bao", at(24, 9), 30, priority="high", completed=False),
             event("screen_dark", at(24, 22), ZONE, 1, cause="schedule", mode="auto"),
             event("running", at(24, 22, 15), ZONE, 1), event("running", at(24, 23), ZONE, 1),
             event("agent_start", at(25, 7), ZONE, 1, version="t", previous_stop="power_cut"),
             event("screen_lit", at(25, 7), ZONE, 1, cause="start", mode="auto"),
             showing(20, "local-01ALERT", at(25, 8), 300, priority="emergency", kind="alert", title="CẢNH BÁO BÃO SỐ 3"),
             showing(21, "lich", at(25, 9), 60),
             event("screen_dark", at(25, 12), ZONE, 1, cause="forced", mode="off"),
             event("screen_lit", at(25, 13), ZONE, 1, cause="forced", mode="on"),
             event("manifest_changed", at(25, 14), ZONE, 2, serial=2, previous_serial=1, items=3),
             event("agent_stop", at(25, 20), ZONE, 2, clean=True, reason="stop"),
             event("agent_start", at(26, 6, 30), ZONE, 2, version="t", previous_stop="clean"),
             event("screen_lit", at(26, 6, 30), ZONE, 2, cause="start", mode="auto"),
             showing(30, "lu", at(26, 10), 120, priority="emergency", title="Lũ khẩn cấp"),
             showing(31, "lich", at(27, 0, 25, month=11), 300)]  # ends 00:30 on the 27th: the last sign of life
    box.add(rows)
    box.close()
    return path


def test_figures_follow_what_the_journal_proves(tmp_path: Path) -> None:
    report = build_report(three_days(tmp_path / "o.sqlite"), "2026-11-24", "2026-11-26", board="b1",
                          now=at(27, 8))
    summary = report["summary"]
    assert summary["days_in_period"] == 3 and summary["days_in_operation"] == 3
    assert summary["running_h"] == 17 + 13 + 17.5
    assert summary["lit_h"] == 16 + 12 + 17.5  # 24/11 06-22; 25/11 07-12 and 13-20; 26/11 06:30-24
    assert summary["dark_schedule_h"] == 1 and summary["dark_forced_h"] == 1 and summary["unknown_h"] == 0
    assert summary["outage_h"] == 8 + 10.5 and summary["outages"] == 2  # nothing before the first start
    assert report["outages"] == [
        {"from": "2026-11-24T23:00:00+07:00", "to": "2026-11-25T07:00:00+07:00", "cause": "power_cut", "hours": 8.0},
        {"from": "2026-11-25T20:00:00+07:00", "to": "2026-11-26T06:30:00+07:00", "cause": "stopped", "hours": 10.5}]
    days = {d["day"]: d for d in report["days"]}
    assert [days[d]["running_h"] + days[d]["outage_h"] for d in ("2026-11-25", "2026-11-26")] == [24, 24]
    assert days["2026-11-24"]["outage_h"] == 1 and days["2026-11-26"]["lit_h"] == 17.5
    assert summary["showings"] == 10 and summary["completed"] == 9  # the 27th's showing is outside the period
    assert summary["alerts"] == 1 and summary["emergency_showings"] == 2 and summary["manifest_changes"] == 1
    assert [(e["kind"], e["item"], e["first_started"], e["last_ended"]) for e in report["emergencies"]] == [
        ("alert", "local-01ALERT", "2026-11-25T08:00:00.000+07:00", "2026-11-25T08:05:00.000+07:00"),
        ("item", "lu", "2026-11-26T10:00:00.000+07:00", "2026-11-26T10:02:00.000+07:00")]
    by_priority = {p["priority"]: (p["count"], p["total_s"], p["items"]) for p in report["priorities"]}
    assert by_priority == {"normal": (7, 420.0, ["lich"]), "high": (1, 30.0, ["bao"]),
                           "emergency": (2, 420.0, ["local-01ALERT", "lu"])}
    assert report["months"] == [{"month": "2026-11", "days_in_operation": 3, "running_h": 47.5, "lit_h": 45.5,
                                 "outage_h": 18.5, "showings": 10, "on_screen_s": 870.0, "emergencies": 2}]
    lich = next(i for i in report["items"] if i["item"] == "lich")
    assert set(lich) == {"item", "title", "type", "count", "completed", "interrupted", "total_s", "first_shown",
                         "last_shown"}  # AGENT.md's keys exactly
    assert (lich["count"], lich["total_s"]) == (7, 420.0)


def test_a_journal_without_events_counts_stretches_of_showings(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.open()  # as an agent from before events wrote it: showings only
    box.add([showing(n, "lich", at(24, 8) + dt.timedelta(minutes=n), 60) for n in range(60)]
            + [showing(100 + n, "lich", at(24, 14) + dt.timedelta(minutes=n), 60) for n in range(30)])
    box.close()
    summary = build_report(tmp_path / "o.sqlite", None, None, board="b1")["summary"]
    assert summary["running_h"] == 1.5 and summary["unknown_h"] == 1.5 and summary["lit_h"] == 0
    assert summary["outage_h"] == 5 and summary["days_in_operation"] == 1 and summary["showings"] == 90


def test_csv_sections_and_json_carry_the_same_figures(tmp_path: Path) -> None:
    storage = tmp_path / "state"
    three_days(storage / "outbox.sqlite")
    config = tmp_path / "agent.yaml"
    config.write_text(f"device: {{id: b1}}\nsource: {{url: 'file:///c'}}\nstorage: {{dir: {storage}}}\n")

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "agent", "report", "--config", str(config), "--from",
                                 "2026-11-24", "--to", "2026-11-26", *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=60, env={"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        return result.stdout

    document = json.loads(run("--format", "json"))
    months = run("--format", "csv", "--section", "months").splitlines()
    assert months == ["month,days_in_operation,running_h,lit_h,outage_h,showings,on_screen_s,emergencies",
                      "2026-11,3,47.5,45.5,18.5,10,870.0,2"]
    outages = run("--format", "csv", "--section", "outages").splitlines()
    assert outages[1] == "2026-11-24T23:00:00+07:00,2026-11-25T07:00:00+07:00,power_cut,8.0"
    summary = dict(line.split(",", 1) for line in run("--format", "csv", "--section", "summary").splitlines()[1:])
    assert summary["lit_h"] == str(document["summary"]["lit_h"]) == "45.5" and summary["board"] == "b1"
    assert len(run("--format", "csv", "--section", "days").splitlines()) == 1 + 3
    table = run()
    assert "days in operation: 3 of 3" in table and "1 emergency alert" in table


def test_a_year_prints_on_a4_with_every_day_and_every_letter(tmp_path: Path) -> None:
    """365 days through Chromium: many pages, no row lost at a page break, nothing past the margins."""
    box = Outbox(tmp_path / "o.sqlite")
    box.open()
    letters = vietnamese_letters()
    rows: list[PlayRecord] = []
    n = 0
    first = dt.date(2026, 1, 1)
    for offset in range(365):
        date = first + dt.timedelta(days=offset)
        morning = dt.datetime.combine(date, dt.time(6), TZ)
        rows += [event("agent_start", morning, ZONE, 1, version="t", previous_stop="clean"),
                 event("screen_lit", morning, ZONE, 1, cause="start", mode="auto")]
        for k, (item, title) in enumerate([("lich", "Lịch tiêm chủng mở rộng"), ("chu", letters),
                                           ("dai", "Thông báo " + "rất-dài-không-có-khoảng-trắng" * 6)]):
            rows.append(showing(n, item, morning + dt.timedelta(hours=2 + k), 600 + k, title=title))
            n += 1
        rows += [event("screen_dark", morning + dt.timedelta(hours=16), ZONE, 1, cause="schedule", mode="auto"),
                 event("agent_stop", morning + dt.timedelta(hours=17), ZONE, 1, clean=True, reason="stop")]
    box.add(rows)
    box.close()
    report = build_report(tmp_path / "o.sqlite", "2026-01-01", "2026-12-31", board="vinhthuan-ubnd-01",
                          now=dt.datetime(2027, 1, 2, tzinfo=TZ))
    html = tmp_path / "nam.html"
    html.write_text(format_report(report, "html"), encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)|url\((?!data:)|@import""", html.read_text()), \
        "the report must fetch nothing"
    pdf = read_pdf(print_to_pdf(html, tmp_path / "nam.pdf", tmp_path / "profile"))
    assert_a4_and_inside_margins(pdf)
    assert 8 <= pdf.pages <= 30, pdf.pages  # the daily annex alone is ~8 pages of 365 rows
    flat = pdf.flat
    assert unicodedata.is_normalized("NFC", pdf.text)
    assert letters in flat  # all 134 letters came through the font, the PDF and back, precomposed
    missing = [d for d in (first + dt.timedelta(days=k) for k in range(365)) if d.strftime("%d/%m/%Y") not in flat]
    assert not missing, f"days missing from the printed report: {missing[:5]}"
    assert flat.rstrip().endswith("— Hết —")  # the last page is the end of the document, nothing cut off
    assert "Số ngày bảng tin hoạt động 365" in flat and "Số giờ màn hình sáng 5.840,00" in flat  # 365 × 16 h
    assert "lich Lịch tiêm chủng mở rộng Văn bản Thông thường 365 365 0 60:50:00" in flat  # 365 × 600 s


def test_an_empty_journal_still_makes_a_report(tmp_path: Path) -> None:
    report = build_report(tmp_path / "none.sqlite", "2026-01-01", "2026-12-31", board="b1")
    assert report["summary"]["days_in_period"] == 365 and report["summary"]["days_in_operation"] == 0
    assert report["summary"]["outage_h"] == 0  # no run at all: nothing the board could have been off from
    html = format_report(report, "html")
    assert "Không có lượt phát nào trong kỳ báo cáo." in html and "31/12/2026" in html
    assert json.loads(format_report(build_report(tmp_path / "none.sqlite", None, None), "json"))["items"] == []

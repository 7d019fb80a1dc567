"""`python -m refsource report`: the province's table over every board that uploaded.

  python -m refsource report --site ./site --from 2026-01-01 --to 2026-12-19 --format html|csv|json [--out FILE]

One row per board (days in operation, hours running, lit and off, showings, on-screen time,
emergency alerts, when it was last heard from) and the totals; the boards that went silent (nothing
heard for `--silent-hours` before the end of the period, or never); then each board's own report,
the same figures `bangtin-agent report` gives on the board (agent/yearly.py), from what it uploaded.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

from agent import yearly
from refsource import uploads

SILENT_HOURS = 48.0
ROW_COLUMNS = ["board", "days_in_operation", "running_h", "lit_h", "dark_schedule_h", "dark_forced_h", "outage_h",
               "outages", "showings", "on_screen_s", "alerts", "emergency_showings", "last_heard", "silent"]
SUMMED = ["days_in_operation", "running_h", "lit_h", "dark_schedule_h", "dark_forced_h", "outage_h", "outages",
          "showings", "on_screen_s", "alerts", "emergency_showings"]


def _last_heard(records: list[dict[str, Any]], heartbeat: dict[str, Any] | None) -> dt.datetime | None:
    moments = []
    for record in records:
        try:
            moments.append(dt.datetime.fromisoformat(record.get("ended_at") or record.get("started_at") or ""))
        except ValueError:
            continue
    if heartbeat is not None:
        try:
            moments.append(dt.datetime.fromisoformat(str(heartbeat.get("received_at"))))
        except ValueError:
            pass
    return max((m for m in moments if m.tzinfo is not None), default=None)


def build(site: Path, date_from: str | None, date_to: str | None, *, now: dt.datetime,
          silent_hours: float = SILENT_HOURS) -> dict[str, Any]:
    received = {folder.name: (folder, list(uploads.read_records(folder))) for folder in uploads.devices(site)}
    if date_from is None or date_to is None:
        # One period for every board (an open end: from the first day any board has to the last).
        periods = [yearly.build(records, [], date_from, date_to, board=name)["period"]
                   for name, (_, records) in received.items()]
        date_from = date_from or min((p["from"] for p in periods if p["from"]), default=None)
        date_to = date_to or max((p["to"] for p in periods if p["to"]), default=None)
    boards = []
    for name, (folder, records) in received.items():
        report = yearly.public(yearly.build(records, [], date_from, date_to, board=name, now=None))
        heard = _last_heard(records, uploads.read_heartbeat(folder))
        end = now
        if date_to is not None:
            period_end = dt.datetime.combine(dt.date.fromisoformat(date_to) + dt.timedelta(days=1), dt.time(),
                                             heard.tzinfo if heard is not None else dt.UTC)
            end = min(now, period_end)
        silent = heard is None or (end - heard).total_seconds() > silent_hours * 3600
        row = {"board": folder.name, **{k: report["summary"][k] for k in SUMMED},
               "last_heard": heard.isoformat(timespec="seconds") if heard is not None else None, "silent": silent}
        boards.append({"row": row, "report": report})
    totals: dict[str, Any] = {"board": "total", "boards": len(boards),
                              "silent": sum(1 for b in boards if b["row"]["silent"])}
    for key in SUMMED:
        value = sum(b["row"][key] for b in boards)
        totals[key] = round(value, 2) if isinstance(value, float) else value
    return {"from": date_from, "to": date_to, "generated_at": now.isoformat(timespec="seconds"),
            "silent_hours": silent_hours, "boards": [b["row"] for b in boards], "totals": totals,
            "silent": [b["row"]["board"] for b in boards if b["row"]["silent"]],
            "conflicts": [_conflict_row(c) for c in uploads.read_conflicts(site) if _in_period(c, date_from, date_to)],
            "reports": {b["row"]["board"]: b["report"] for b in boards}}


VIETNAM = dt.timezone(dt.timedelta(hours=7))


def _conflict_at(conflict: dict[str, Any]) -> dt.datetime | None:
    at = conflict.get("at")
    return dt.datetime.fromtimestamp(at, VIETNAM) if isinstance(at, (int, float)) else None


def _in_period(conflict: dict[str, Any], date_from: str | None, date_to: str | None) -> bool:
    at = _conflict_at(conflict)
    day = at.date().isoformat() if at is not None else None
    return day is None or ((date_from is None or day >= date_from) and (date_to is None or day <= date_to))


def _conflict_row(conflict: dict[str, Any]) -> dict[str, Any]:
    at = _conflict_at(conflict)
    return {"device": str(conflict.get("device", "")), "keyid": str(conflict.get("keyid", "")),
            "why": str(conflict.get("why", "")), "at": at.isoformat(timespec="seconds") if at is not None else None}


def format_province(province: dict[str, Any], kind: str) -> str:
    if kind == "json":
        return json.dumps(province, ensure_ascii=False, indent=2)
    if kind == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=ROW_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(province["boards"])
        writer.writerow({**province["totals"], "last_heard": "", "silent": province["totals"]["silent"]})
        return buffer.getvalue()
    from agent.reporthtml import render_html

    return render_html(province, title="BÁO CÁO TỔNG HỢP HOẠT ĐỘNG BẢNG TIN ĐIỆN TỬ CÔNG CỘNG",
                       boards=[{"row": row, "report": province["reports"][row["board"]]} for row in province["boards"]])

"""`bangtin-agent report`: what was shown, how often and how long, and whether the board worked.

For the commune's yearly report on grassroots information. Reads the records database read-only
(safe while the agent runs: WAL) — every event, the showings of the period, and the daily
summaries the outbox cap folded old showings into — and hands them to `agent.yearly`, which makes
every figure. Formats: a table for a person (translated under vi_VN), CSV (one section at a time,
English snake_case headers like the JSON's keys), JSON, and the printable HTML (agent/reporthtml.py).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

from agent import yearly
from agent.events import EVENT_NAMES
from agent.i18n import _, ngettext

ITEM_COLUMNS = ["item", "title", "type", "count", "completed", "interrupted", "total_s", "first_shown", "last_shown"]
CSV_SECTIONS = ("items", "summary", "days", "months", "priorities", "emergencies", "outages")


def _day_before(day: str | None, days: int) -> str | None:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat() if day else None


def read_journal(database: Path, date_from: str | None, date_to: str | None
                 ) -> tuple[list[dict[str, Any]], list[yearly.Summary]]:
    """Every event (runs may begin before the period) and the showings of the period (a day either
    side: a zone other than the records' could move them), and the period's summaries."""
    if not database.exists():
        return [], []
    low, high = _day_before(date_from, -1) or "0000-00-00", _day_before(date_to, 1) or "9999-99-99"
    names = sorted(EVENT_NAMES)
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        records = [json.loads(body) for (body,) in db.execute(
            f"SELECT body FROM records WHERE item IN ({','.join('?' * len(names))}) OR day BETWEEN ? AND ? ORDER BY seq",
            (*names, low, high))]
        summaries: list[yearly.Summary] = []
        if db.execute("SELECT name FROM sqlite_master WHERE name = 'summaries'").fetchone():
            columns = {row[1] for row in db.execute("PRAGMA table_info(summaries)")}
            priority = "priority" if "priority" in columns else "''"  # schema 1 (an older agent wrote it)
            summaries = [yearly.Summary(*row) for row in db.execute(
                f"SELECT day, item, title, type, {priority}, count, completed, total_ms, first_shown, last_shown "
                "FROM summaries WHERE day BETWEEN ? AND ?", (low, high))]
    finally:
        db.close()
    return records, summaries


def build_report(database: Path, date_from: str | None, date_to: str | None, *, board: str = "",
                 now: dt.datetime | None = None) -> dict[str, Any]:
    """Every figure for days in [date_from, date_to] (YYYY-MM-DD, local dates; None = open)."""
    records, summaries = read_journal(database, date_from, date_to)
    return yearly.build(records, summaries, date_from, date_to, board=board, now=now)


def format_report(report: dict[str, Any], kind: str, section: str = "items") -> str:
    public = yearly.public(report)
    if kind == "json":
        return json.dumps(public, ensure_ascii=False, indent=2)
    if kind == "csv":
        return _csv(public, section)
    if kind == "html":
        from agent.reporthtml import render_html

        return render_html(public)
    return _table(public)


def _csv(report: dict[str, Any], section: str) -> str:
    """One section as a table; the headers are the JSON's keys (machine-readable, never translated)."""
    buffer = io.StringIO()
    if section == "summary":
        rows: list[dict[str, Any]] = [{"key": key, "value": value} for key, value in
                                      {"board": report["board"], "from": report["period"]["from"],
                                       "to": report["period"]["to"], **report["summary"]}.items()]
        columns = ["key", "value"]
    elif section == "items":
        rows = [{**entry, "priority": report["item_priorities"].get(entry["item"], "")} for entry in report["items"]]
        columns = [*ITEM_COLUMNS, "priority"]
    else:
        rows = [{k: ("|".join(v) if isinstance(v, list) else v) for k, v in row.items()} for row in report[section]]
        columns = list(rows[0]) if rows else _EMPTY_COLUMNS[section]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


_EMPTY_COLUMNS = {
    "days": ["day", "in_operation", "running_h", "lit_h", "dark_schedule_h", "dark_forced_h", "unknown_h", "outage_h",
             "showings", "on_screen_s", "emergencies"],
    "months": ["month", "days_in_operation", "running_h", "lit_h", "outage_h", "showings", "on_screen_s", "emergencies"],
    "priorities": ["priority", "count", "completed", "total_s", "items"],
    "emergencies": ["kind", "item", "title", "showings", "total_s", "first_started", "last_ended", "completed"],
    "outages": ["from", "to", "cause", "hours"],
}


def _table(report: dict[str, Any]) -> str:
    summary = report["summary"]
    period = report["period"]
    lines = [_("board {board}, from {start} to {end}").format(
        board=report["board"] or "-", start=period["from"] or _("the start"), end=period["to"] or _("now")),
        _("days in operation: {days} of {period}").format(days=summary["days_in_operation"],
                                                          period=summary["days_in_period"]),
        _("hours lit: {lit}, dark by schedule: {schedule}, forced dark: {forced}, off (outages): {outage}").format(
            lit=summary["lit_h"], schedule=summary["dark_schedule_h"], forced=summary["dark_forced_h"],
            outage=summary["outage_h"]),
        ngettext("{n} emergency alert", "{n} emergency alerts", summary["alerts"]).format(n=summary["alerts"]),
        ""]
    headers = [_("item"), _("title"), _("type"), _("shown"), _("completed"), _("interrupted"), _("seconds"),
               _("first shown"), _("last shown")]
    rows = [[str(entry[c] if entry[c] is not None else "") for c in ITEM_COLUMNS] for entry in report["items"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    if not rows:
        lines.append(_("(no showings recorded in this period)"))
    return "\n".join(lines)

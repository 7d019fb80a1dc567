"""`bangtin-agent report`: what was shown, how often and how long, from the local journal.

For the commune's yearly report on grassroots information. Reads the records database read-only
(safe while the agent runs: WAL), adding the daily summaries the outbox cap folded old records into.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ItemTotals:
    item: str
    title: str = ""
    type: str = ""
    count: int = 0
    completed: int = 0
    total_ms: int = 0
    first_shown: str | None = None
    last_shown: str | None = None

    def add(self, *, title: str, kind: str, count: int, completed: int, total_ms: int, first: str, last: str) -> None:
        self.title = title or self.title
        self.type = kind or self.type
        self.count += count
        self.completed += completed
        self.total_ms += total_ms
        self.first_shown = min(filter(None, (self.first_shown, first)), default=None)
        self.last_shown = max(filter(None, (self.last_shown, last)), default=None)

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "title": self.title, "type": self.type, "count": self.count,
                "completed": self.completed, "interrupted": self.count - self.completed,
                "total_s": round(self.total_ms / 1000, 1), "first_shown": self.first_shown, "last_shown": self.last_shown}


def build_report(database: Path, date_from: str | None, date_to: str | None) -> dict[str, Any]:
    """Totals per item for days in [date_from, date_to] (YYYY-MM-DD, local dates; None = open)."""
    low, high = date_from or "0000-00-00", date_to or "9999-99-99"
    totals: dict[str, ItemTotals] = {}
    if database.exists():
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            for (body,) in db.execute("SELECT body FROM records WHERE day BETWEEN ? AND ? ORDER BY seq", (low, high)):
                record = json.loads(body)
                entry = totals.setdefault(record["item"], ItemTotals(record["item"]))
                entry.add(title=record.get("title") or "", kind=record.get("type") or "", count=1,
                          completed=int(bool(record.get("completed"))), total_ms=int(record.get("duration_ms") or 0),
                          first=record.get("started_at") or "", last=record.get("started_at") or "")
            if db.execute("SELECT name FROM sqlite_master WHERE name = 'summaries'").fetchone():
                for item, title, kind, count, completed, total_ms, first, last in db.execute(
                        "SELECT item, title, type, count, completed, total_ms, first_shown, last_shown FROM summaries "
                        "WHERE day BETWEEN ? AND ?", (low, high)):
                    totals.setdefault(item, ItemTotals(item)).add(title=title, kind=kind, count=count, completed=completed,
                                                                  total_ms=total_ms, first=first, last=last)
        finally:
            db.close()
    items = sorted((t.as_dict() for t in totals.values()), key=lambda t: (-t["total_s"], t["item"]))
    return {"from": date_from, "to": date_to, "items": items}


def format_report(report: dict[str, Any], kind: str) -> str:
    if kind == "json":
        return json.dumps(report, ensure_ascii=False, indent=2)
    columns = ["item", "title", "type", "count", "completed", "interrupted", "total_s", "first_shown", "last_shown"]
    if kind == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(report["items"])
        return buffer.getvalue()
    rows = [[str(entry[c] if entry[c] is not None else "") for c in columns] for entry in report["items"]]
    headers = ["item", "title", "type", "shown", "completed", "interrupted", "seconds", "first shown", "last shown"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [f"from {report['from'] or 'the start'} to {report['to'] or 'now'}",
             "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    if not rows:
        lines.append("(no showings recorded in this period)")
    return "\n".join(lines)

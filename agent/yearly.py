"""The yearly report's figures for one board, from its journal rows: showings and events.

The commune's culture office files a yearly report on grassroots information (before 20 December),
and the province asks: was the board working, how long was it lit, what was shown, were
emergencies shown, and when. Pure: records (PROTOCOL.md §5 objects, events included:
agent/events.py) and the outbox's daily summaries go in, one plain mapping comes out — the same
figures for `--format table/csv/json/html`. `bangtin-agent report` feeds it the board's own journal,
`python -m refsource report` what each board uploaded.

What the journal can prove, and so what is counted (docs/reporting.md):
- a *run* is an `agent_start` to its `agent_stop`; a run without a stop ended at its last row (the
  last showing or event: while the screen is dark a `running` event comes every 15 minutes);
- inside a run the screen is lit or dark from one `screen_lit`/`screen_dark` event to the next;
  dark is split by cause: the schedule (`screen.on` windows) or forced (`ctl screen off`);
- an *outage* is the gap between two runs, named by how the first ended: stopped (clean),
  crash, power_cut (inferred at the next start), failure; time before the first run is not one;
- days are local dates at the UTC offset the records carry (the manifest's zone), split at
  local midnight; a showing counts on the day it started.
A journal written before events existed has showings only: its runs are stretches of showings
without a gap over `IMPLICIT_GAP_S`, with the screen's state unknown.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.events import AGENT_START, AGENT_STOP, MANIFEST_CHANGED, SCREEN_DARK, SCREEN_LIT, is_event
from agent.models import PRIORITIES

IMPLICIT_GAP_S = 35 * 60  # two missed signs of life and some slack
DEFAULT_OFFSET = dt.timedelta(hours=7)  # Asia/Ho_Chi_Minh, when the journal is empty
STATES = ("lit", "dark_schedule", "dark_forced", "unknown")


@dataclass(frozen=True)
class Summary:
    """A row of the outbox's `summaries` table: showings of one item on one day, folded by the cap."""

    day: str
    item: str
    title: str
    type: str
    priority: str
    count: int
    completed: int
    total_ms: int
    first_shown: str
    last_shown: str


@dataclass
class _Row:
    start: dt.datetime
    end: dt.datetime
    record: dict[str, Any]
    event: str | None  # the event's name, None for a showing


@dataclass
class _Run:
    start: dt.datetime
    last: dt.datetime
    implicit: bool = False
    end: dt.datetime | None = None
    ended: str = "running"  # stopped | failure | crash | power_cut | unknown | running (no end seen yet)


@dataclass
class _Item:
    item: str
    title: str = ""
    type: str = ""
    priority: str = ""
    count: int = 0
    completed: int = 0
    total_ms: int = 0
    first_shown: str | None = None
    last_shown: str | None = None

    def add(self, *, title: str, kind: str, priority: str, count: int, completed: int, total_ms: int, first: str,
            last: str) -> None:
        self.title = title or self.title
        self.type = kind or self.type
        self.priority = priority or self.priority
        self.count += count
        self.completed += completed
        self.total_ms += total_ms
        self.first_shown = min(filter(None, (self.first_shown, first)), default=None)
        self.last_shown = max(filter(None, (self.last_shown, last)), default=None)

    def as_dict(self) -> dict[str, Any]:
        """AGENT.md's `items` entry, exactly these keys."""
        return {"item": self.item, "title": self.title, "type": self.type, "count": self.count,
                "completed": self.completed, "interrupted": self.count - self.completed,
                "total_s": round(self.total_ms / 1000, 1), "first_shown": self.first_shown, "last_shown": self.last_shown}


@dataclass
class _Day:
    running_s: float = 0.0
    outage_s: float = 0.0
    states: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STATES, 0.0))
    showings: int = 0
    on_screen_ms: int = 0
    emergencies: int = 0


def _parse(text: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else None


def _rows(records: Iterable[dict[str, Any]]) -> list[_Row]:
    rows = []
    for record in records:
        start = _parse(record.get("started_at") or "")
        if start is None:
            continue  # a record without a usable time proves nothing about when
        end = _parse(record.get("ended_at") or "") or start
        rows.append(_Row(start, max(start, end), record, record["item"] if is_event(record) else None))
    # A start sorts before anything at the same instant, a stop after: the run holds its own rows.
    rows.sort(key=lambda r: (r.start, 0 if r.event == AGENT_START else 2 if r.event == AGENT_STOP else 1))
    return rows


def _runs_and_states(rows: list[_Row]) -> tuple[list[_Run], list[tuple[dt.datetime, dt.datetime, str]]]:
    """Runs, and the screen's state over each stretch of them."""
    runs: list[_Run] = []
    states: list[tuple[dt.datetime, dt.datetime, str]] = []
    run: _Run | None = None
    state, since = "unknown", dt.datetime.min.replace(tzinfo=dt.UTC)

    def close_state(at: dt.datetime) -> None:
        nonlocal since
        if at > since:
            states.append((since, at, state))
        since = max(since, at)

    def close_run(at: dt.datetime, ended: str) -> None:
        nonlocal run
        assert run is not None
        close_state(at)
        run.end, run.ended = at, ended
        runs.append(run)
        run = None

    def open_run(at: dt.datetime, implicit: bool) -> None:
        nonlocal run, state, since
        run, state, since = _Run(at, at, implicit=implicit), "unknown", at

    for row in rows:
        details = row.record.get("details") or {}
        if row.event == AGENT_START:
            if run is not None:
                previous = details.get("previous_stop")
                close_run(run.last, previous if previous in ("crash", "power_cut") else "unknown")
            open_run(row.start, implicit=False)
            continue
        if row.event == AGENT_STOP:
            if run is not None:
                run.last = max(run.last, row.start)
                close_run(row.start, "stopped" if details.get("clean") else "failure")
            continue
        if run is not None and run.implicit and (row.start - run.last).total_seconds() > IMPLICIT_GAP_S:
            close_run(run.last, "unknown")
        if run is None:
            open_run(row.start, implicit=True)
        assert run is not None
        if row.event in (SCREEN_LIT, SCREEN_DARK):
            close_state(row.start)
            forced = details.get("cause") == "forced" or details.get("mode") == "off"
            state = "lit" if row.event == SCREEN_LIT else "dark_forced" if forced else "dark_schedule"
        run.last = max(run.last, row.end)
    if run is not None:
        close_run(run.last, "running")
    return runs, states


def _split_days(start: dt.datetime, end: dt.datetime, tz: dt.tzinfo) -> Iterator[tuple[str, float]]:
    """(local date, seconds) for each day the interval touches."""
    start, end = start.astimezone(tz), end.astimezone(tz)
    while start < end:
        midnight = dt.datetime.combine(start.date() + dt.timedelta(days=1), dt.time(), tz)
        cut = min(end, midnight)
        yield start.date().isoformat(), (cut - start).total_seconds()
        start = cut


def _clip(start: dt.datetime, end: dt.datetime, low: dt.datetime, high: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    return max(start, low), min(end, high)


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 2)


def build(records: Iterable[dict[str, Any]], summaries: Iterable[Summary], date_from: str | None, date_to: str | None,
          *, board: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """Every figure of the report for days in [date_from, date_to] (YYYY-MM-DD local dates; None = open).

    `records` should hold every event the journal has (runs can start before the period) and the
    showings of the period; more is harmless."""
    rows = _rows(records)
    summary_rows = list(summaries)
    offset = next((r.start.utcoffset() for r in rows), None) or DEFAULT_OFFSET
    tz = dt.timezone(offset)
    days_seen = sorted({r.start.astimezone(tz).date().isoformat() for r in rows} | {s.day for s in summary_rows})
    low = date_from or (days_seen[0] if days_seen else None)
    high = date_to or (days_seen[-1] if days_seen else None)
    report: dict[str, Any] = {"from": date_from, "to": date_to, "items": [], "board": board,
                              "period": {"from": low, "to": high, "days": 0}, "utc_offset": _offset_text(offset)}
    if low is None or high is None or low > high:
        report.update(_empty_sections())
        return report
    period_start = dt.datetime.combine(dt.date.fromisoformat(low), dt.time(), tz)
    period_end = dt.datetime.combine(dt.date.fromisoformat(high) + dt.timedelta(days=1), dt.time(), tz)
    calendar = [(period_start + dt.timedelta(days=n)).date().isoformat()
                for n in range((period_end - period_start).days)]
    report["period"]["days"] = len(calendar)
    days = {day: _Day() for day in calendar}

    runs, states = _runs_and_states(rows)
    for start, end, state in states:
        for day, seconds in _split_days(*_clip(start, end, period_start, period_end), tz):
            days[day].states[state] += seconds
    for run in runs:
        assert run.end is not None
        for day, seconds in _split_days(*_clip(run.start, run.end, period_start, period_end), tz):
            days[day].running_s += seconds
    outages = _outages(runs, period_start, period_end, now)
    for outage in outages:
        for day, seconds in _split_days(outage["_start"], outage["_end"], tz):
            days[day].outage_s += seconds

    items: dict[str, _Item] = {}
    emergencies: dict[tuple[str, str], dict[str, Any]] = {}
    manifests = []
    for row in rows:
        day = row.start.astimezone(tz).date().isoformat()
        if day not in days:
            continue
        record = row.record
        if row.event is not None:
            if row.event == MANIFEST_CHANGED:
                manifests.append({"at": record.get("started_at"), "serial": record.get("manifest_serial"),
                                  "items": (record.get("details") or {}).get("items")})
            continue
        duration = int(record.get("duration_ms") or 0)
        kind = record.get("type") or ""
        priority = record.get("priority") or ("emergency" if kind == "alert" else "normal")
        items.setdefault(record["item"], _Item(record["item"])).add(
            title=record.get("title") or "", kind=kind, priority=priority, count=1,
            completed=int(bool(record.get("completed"))), total_ms=duration, first=record.get("started_at") or "",
            last=record.get("started_at") or "")
        days[day].showings += 1
        days[day].on_screen_ms += duration
        if kind == "alert" or priority == "emergency":
            days[day].emergencies += 1
            _add_emergency(emergencies, record, duration)
    for s in summary_rows:
        if s.day not in days:
            continue
        priority = s.priority or ("emergency" if s.type == "alert" else "")
        items.setdefault(s.item, _Item(s.item)).add(title=s.title, kind=s.type, priority=priority, count=s.count,
                                                     completed=s.completed, total_ms=s.total_ms, first=s.first_shown,
                                                     last=s.last_shown)
        days[s.day].showings += s.count
        days[s.day].on_screen_ms += s.total_ms
    for entry in items.values():
        entry.priority = entry.priority or "normal"  # folded by schema 1, never shown unfolded: the default class

    ordered = sorted(items.values(), key=lambda t: (-t.total_ms, t.item))
    report["items"] = [t.as_dict() for t in ordered]
    report["item_priorities"] = {t.item: t.priority for t in ordered}
    report["priorities"] = _priorities(ordered)
    report["days"] = [_day_row(day, days[day]) for day in calendar]
    report["months"] = _months(report["days"])
    report["emergencies"] = sorted(emergencies.values(), key=lambda e: (e["first_started"] or "", e["item"]))
    report["outages"] = [{k: v for k, v in o.items() if not k.startswith("_")} for o in outages]
    report["manifests"] = manifests
    report["summary"] = _summary(report, ordered)
    return report


def _offset_text(offset: dt.timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _empty_sections() -> dict[str, Any]:
    return {"item_priorities": {}, "priorities": _priorities([]), "days": [], "months": [], "emergencies": [],
            "outages": [], "manifests": [], "summary": _summary({"days": [], "period": {"days": 0}}, [])}


def _add_emergency(found: dict[tuple[str, str], dict[str, Any]], record: dict[str, Any], duration: int) -> None:
    kind = "alert" if record.get("type") == "alert" else "item"
    entry = found.setdefault((kind, record["item"]), {
        "kind": kind, "item": record["item"], "title": record.get("title") or "", "showings": 0, "total_s": 0.0,
        "first_started": None, "last_ended": None, "completed": 0})
    entry["showings"] += 1
    entry["completed"] += int(bool(record.get("completed")))
    entry["total_s"] = round(entry["total_s"] + duration / 1000, 1)
    entry["first_started"] = min(filter(None, (entry["first_started"], record.get("started_at"))), default=None)
    entry["last_ended"] = max(filter(None, (entry["last_ended"], record.get("ended_at"))), default=None)


def _outages(runs: list[_Run], low: dt.datetime, high: dt.datetime, now: dt.datetime | None) -> list[dict[str, Any]]:
    """Gaps between runs (and after a run that stopped, until now), clipped to the period."""
    gaps = []
    for before, after in itertools.pairwise(runs):
        assert before.end is not None
        gaps.append((before.end, after.start, before.ended))
    if runs and runs[-1].ended != "running" and now is not None:
        assert runs[-1].end is not None
        gaps.append((runs[-1].end, now, runs[-1].ended))
    outages = []
    for start, end, cause in gaps:
        clipped_start, clipped_end = _clip(start, end, low, high)
        if clipped_end <= clipped_start:
            continue
        tz = low.tzinfo
        outages.append({"from": start.astimezone(tz).isoformat(timespec="seconds"),
                        "to": end.astimezone(tz).isoformat(timespec="seconds"),
                        "cause": cause, "hours": _hours((clipped_end - clipped_start).total_seconds()),
                        "_start": clipped_start, "_end": clipped_end})
    return outages


def _priorities(items: list[_Item]) -> list[dict[str, Any]]:
    rows = []
    for priority in PRIORITIES:
        members = [t for t in items if t.priority == priority]
        total_ms = sum(t.total_ms for t in members)
        rows.append({"priority": priority, "count": sum(t.count for t in members),
                     "completed": sum(t.completed for t in members), "total_s": round(total_ms / 1000, 1),
                     "items": [t.item for t in members]})
    return rows


def _day_row(day: str, figures: _Day) -> dict[str, Any]:
    return {"day": day, "in_operation": figures.running_s > 0 or figures.showings > 0,
            "running_h": _hours(figures.running_s), "lit_h": _hours(figures.states["lit"]),
            "dark_schedule_h": _hours(figures.states["dark_schedule"]),
            "dark_forced_h": _hours(figures.states["dark_forced"]), "unknown_h": _hours(figures.states["unknown"]),
            "outage_h": _hours(figures.outage_s), "showings": figures.showings,
            "on_screen_s": round(figures.on_screen_ms / 1000, 1), "emergencies": figures.emergencies,
            "_lit_s": figures.states["lit"], "_running_s": figures.running_s, "_outage_s": figures.outage_s,
            "_states": dict(figures.states)}


def _months(days: list[dict[str, Any]]) -> list[dict[str, Any]]:
    months: dict[str, dict[str, Any]] = defaultdict(lambda: {"days_in_operation": 0, "lit_s": 0.0, "outage_s": 0.0,
                                                            "running_s": 0.0, "showings": 0, "on_screen_s": 0.0,
                                                            "emergencies": 0})
    for day in days:
        month = months[day["day"][:7]]
        month["days_in_operation"] += int(day["in_operation"])
        month["lit_s"] += day["_lit_s"]
        month["outage_s"] += day["_outage_s"]
        month["running_s"] += day["_running_s"]
        month["showings"] += day["showings"]
        month["on_screen_s"] += day["on_screen_s"]
        month["emergencies"] += day["emergencies"]
    return [{"month": key, "days_in_operation": m["days_in_operation"], "running_h": _hours(m["running_s"]),
             "lit_h": _hours(m["lit_s"]), "outage_h": _hours(m["outage_s"]), "showings": m["showings"],
             "on_screen_s": round(m["on_screen_s"], 1), "emergencies": m["emergencies"]}
            for key, m in sorted(months.items())]


def _summary(report: dict[str, Any], items: list[_Item]) -> dict[str, Any]:
    days = report["days"]

    def total(key: str) -> float:
        return sum(day["_states"][key] for day in days)

    return {
        "days_in_period": report["period"]["days"],
        "days_in_operation": sum(1 for day in days if day["in_operation"]),
        "running_h": _hours(sum(day["_running_s"] for day in days)),
        "lit_h": _hours(total("lit")),
        "dark_schedule_h": _hours(total("dark_schedule")),
        "dark_forced_h": _hours(total("dark_forced")),
        "unknown_h": _hours(total("unknown")),
        "outage_h": _hours(sum(day["_outage_s"] for day in days)),
        "outages": len(report.get("outages", [])),
        "showings": sum(t.count for t in items),
        "completed": sum(t.completed for t in items),
        "on_screen_s": round(sum(t.total_ms for t in items) / 1000, 1),
        "items": len(items),
        "alerts": sum(1 for e in report.get("emergencies", []) if e["kind"] == "alert"),
        "emergency_showings": sum(day["emergencies"] for day in days),
        "manifest_changes": len(report.get("manifests", [])),
    }


def public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the private working fields (`_…`): what JSON, CSV and templates see."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(report)

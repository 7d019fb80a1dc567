"""Events in the journal (agent/events.py): screen transitions, signs of life, how runs ended."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.events import RUNNING_EVERY_S, RunEvents
from agent.health import Problems
from agent.models import PlayRecord
from agent.outbox import Outbox
from agent.player import Player
from tests.test_player import T0, FakeContent, manifest, text


class ListSink:
    """What the disk writer offers the player and run_board: add (memory only) and call."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.calls: list[Callable[[], None]] = []

    def add(self, records: Iterable[PlayRecord]) -> None:
        self.records.extend(r.to_json_dict() for r in records)

    def call(self, work: Callable[[], None]) -> None:
        self.calls.append(work)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        return [(r["item"], r["details"]) for r in self.records if r["type"] == "event"]


def step(player: Player, start: float, seconds: float, every: float = 1.0) -> None:
    t = start
    while t <= start + seconds:
        player.update(T0 + dt.timedelta(seconds=t), t)
        t += every


def test_lit_and_dark_transitions_say_why() -> None:
    sink = ListSink()
    # 09:00 local at T0: lit until 09:01 by the schedule, then dark until the next window.
    content = FakeContent(manifest(items=[text("a", 5)], screen={"on": [["08:00", "09:01"]]}))
    player = Player(content, sink, Problems())
    step(player, 0, 70)
    player.set_screen_mode("on")
    step(player, 71, 3)
    player.set_screen_mode("off")
    step(player, 75, 3)
    player.set_screen_mode("auto")
    step(player, 79, 3)
    assert sink.events() == [
        ("screen_lit", {"cause": "start", "mode": "auto"}),
        ("screen_dark", {"cause": "schedule", "mode": "auto"}),
        ("screen_lit", {"cause": "forced", "mode": "on"}),
        ("screen_dark", {"cause": "forced", "mode": "off"}),
    ]  # forced off → auto stays dark (outside the window): no transition, no event
    dark = next(r for r in sink.records if r["item"] == "screen_dark")
    assert dark["started_at"] == "2026-11-26T09:01:00.000+07:00" and dark["ended_at"] == dark["started_at"]
    assert dark["duration_ms"] == 0 and dark["completed"] is True and dark["reason"] is None  # every §5 field


def test_a_dark_screen_writes_a_sign_of_life_every_quarter_hour_and_a_lit_one_does_not() -> None:
    sink = ListSink()
    player = Player(FakeContent(manifest(items=[text("a", 5)], screen={"on": [["23:00", "23:30"]]})), sink, Problems())
    step(player, 0, 2 * RUNNING_EVERY_S + 10, every=5)
    assert [name for name, _ in sink.events()] == ["screen_dark", "running", "running"]
    lit = ListSink()
    player = Player(FakeContent(manifest(items=[text("a", 5)])), lit, Problems())
    step(player, 0, 2 * RUNNING_EVERY_S + 10, every=5)
    assert [name for name, _ in lit.events()] == ["screen_lit"]  # the showings prove it was alive
    assert len(lit.records) > 300


def test_a_start_tells_how_the_previous_run_ended(tmp_path: Path) -> None:
    boot = ["boot-1"]
    sink = ListSink()
    runs = RunEvents(tmp_path, sink, "9.9", boot_id=lambda: boot[0])
    at = dt.datetime(2026, 11, 26, 1, 0, tzinfo=dt.UTC)

    def start() -> str:
        previous = runs.started(at, "Asia/Ho_Chi_Minh", 3)
        runs.mark_running()
        return previous

    assert start() == "first"
    runs.stopped(at, None, clean=True, reason="stop")
    for work in sink.calls:  # the disk writer runs these
        work()
    sink.calls.clear()
    assert start() == "clean"
    assert start() == "crash"  # started again in the same boot without a stop: the agent died
    boot[0] = "boot-2"
    assert start() == "power_cut"  # the machine went down under a running agent
    runs.stopped(at, None, clean=False, reason="failure")
    assert not sink.calls  # a failed run leaves the marker "running"
    boot[0] = "boot-2"
    assert start() == "crash"
    starts = [d for name, d in sink.events() if name == "agent_start"]
    assert [d["previous_stop"] for d in starts] == ["first", "clean", "crash", "power_cut", "crash"]
    assert all(d["version"] == "9.9" for d in starts)
    assert [d for name, d in sink.events() if name == "agent_stop"] == [
        {"clean": True, "reason": "stop"}, {"clean": False, "reason": "failure"}]
    first = sink.records[0]
    assert first["started_at"] == "2026-11-26T08:00:00.000+07:00" and first["manifest_serial"] == 3


def test_the_cap_folds_showings_but_never_events_and_keeps_priority(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_records=1000)
    box.open()
    player = Player(FakeContent(manifest(items=[text("a", 1, priority="high")], screen={"on": [["09:00", "09:10"]]})),
                    box, Problems())
    step(player, 0, 1300, every=0.5)  # ~600 showings, then dark
    box.add([PlayRecord(f"x{n}", "b", "text", "B", None, 1, "normal", "2026-11-26T09:30:00.000+07:00",
                        "2026-11-26T09:30:01.000+07:00", 1000, True, None) for n in range(800)])
    box.enforce_limits("2026-11-26")
    with sqlite3.connect(box.path) as db:
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM records ORDER BY seq")]
        summaries = {item: (count, priority) for item, count, priority in
                     db.execute("SELECT item, count, priority FROM summaries")}
    assert len(bodies) == 1000
    assert [r["item"] for r in bodies if r["type"] == "event"][:2] == ["screen_lit", "screen_dark"]
    assert summaries["a"][1] == "high" and summaries["a"][0] > 300
    box.close()


def test_a_schema_1_database_gains_the_priority_column(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("""CREATE TABLE records (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, day TEXT NOT NULL,
                              item TEXT NOT NULL, uploaded INTEGER NOT NULL DEFAULT 0, body TEXT NOT NULL);
                            CREATE TABLE summaries (day TEXT NOT NULL, item TEXT NOT NULL, title TEXT NOT NULL,
                              type TEXT NOT NULL, count INTEGER NOT NULL, completed INTEGER NOT NULL,
                              total_ms INTEGER NOT NULL, first_shown TEXT NOT NULL, last_shown TEXT NOT NULL,
                              not_uploaded INTEGER NOT NULL, PRIMARY KEY (day, item));
                            INSERT INTO summaries VALUES ('2026-01-02', 'i', 'T', 'text', 3, 3, 30000, 'a', 'b', 0);
                            PRAGMA user_version = 1;""")
    box = Outbox(path)
    box.open()
    box.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("SELECT count, priority FROM summaries").fetchall() == [(3, "")]

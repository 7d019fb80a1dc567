"""The playback state machine and its proof of play, driven with explicit instants (no display)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.content import Snapshot
from agent.health import Problems
from agent.manifest import accept_manifest
from agent.models import Alert, Manifest
from agent.outbox import Outbox
from agent.player import Player
from tests.conftest import ROOT, base_manifest

T0 = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)  # 09:00 in Vietnam, a Thursday


class FakeContent:
    """Implements Content.snapshot(): the player's only view of content."""

    def __init__(self, manifest: Manifest | None, verified: set[str] | None = None) -> None:
        self.manifest = manifest
        self.verified = frozenset(verified or ())
        self.version = 0

    def snapshot(self) -> Snapshot:
        return Snapshot(self.manifest, self.verified, self.version)


def manifest(serial: int = 1, **changes: Any) -> Manifest:
    raw = json.dumps(base_manifest(serial, **changes)).encode()
    return accept_manifest(raw, keys=(), device_id="b1", groups=(), last_serial=None)


def text(item_id: str, seconds: float = 10, **extra: Any) -> dict[str, Any]:
    return {"id": item_id, "type": "text", "title": f"Tiêu đề {item_id}", "body": "Nội dung", "duration_s": seconds,
            **extra}


@pytest.fixture
def outbox(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.sqlite")
    box.open()
    yield box
    box.close()


def showings(box: Outbox, limit: int) -> list[dict[str, Any]]:
    """The oldest pending showings (the journal's events left out)."""
    return [r for r in box.oldest(limit * 10) if r["type"] != "event"][:limit]


def run(player: Player, seconds: float, step: float = 0.5, start: float = 0.0) -> list[str | None]:
    """Advance the player through `seconds`, returning the item shown at each step."""
    shown = []
    t = start
    while t <= start + seconds + 1e-9:
        scene = player.update(T0 + dt.timedelta(seconds=t), t)
        shown.append(scene.item.id if scene.item else (scene.alert.id if scene.alert else None))
        t += step
    return shown


def test_items_play_for_their_duration_in_rotation_with_one_record_each(outbox: Outbox) -> None:
    player = Player(FakeContent(manifest(items=[text("a", 10), text("b", 5)])), outbox, Problems())
    shown = run(player, 29.5)
    assert shown == ["a"] * 20 + ["b"] * 10 + ["a"] * 20 + ["b"] * 10  # 0 s to 29.5 s in half seconds
    records = showings(outbox, 10)
    assert [(r["item"], r["duration_ms"], r["completed"], r["reason"]) for r in records] == [
        ("a", 10000, True, None), ("b", 5000, True, None), ("a", 10000, True, None)]
    first = records[0]
    assert set(first) == {"id", "item", "type", "title", "media_sha256", "manifest_serial", "priority", "started_at",
                          "ended_at", "duration_ms", "completed", "reason"}
    assert first["type"] == "text" and first["title"] == "Tiêu đề a" and first["manifest_serial"] == 1
    assert first["started_at"] == "2026-11-26T09:00:00.000+07:00"
    assert first["ended_at"] == "2026-11-26T09:00:10.000+07:00"
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", first["id"])
    assert records[0]["id"] != records[1]["id"]


def test_alert_preempts_at_once_and_is_logged(outbox: Outbox) -> None:
    player = Player(FakeContent(manifest(items=[text("a", 10)])), outbox, Problems())
    run(player, 3)
    player.add_alert(Alert("c-1", "CẢNH BÁO", "Bão số 3", until=T0 + dt.timedelta(seconds=8)))
    assert run(player, 4.5, start=3.5) == ["c-1"] * 9 + ["a"]  # 3.5 s … 8 s: the alert ends at 8 s
    records = showings(outbox, 10)
    assert [(r["item"], r["type"], r["completed"], r["reason"]) for r in records] == [
        ("a", "text", False, "preempted"), ("c-1", "alert", True, None)]
    assert records[1]["priority"] == "emergency" and records[1]["title"] == "CẢNH BÁO"


def test_clear_alert_ends_it(outbox: Outbox) -> None:
    player = Player(FakeContent(None), outbox, Problems())
    player.add_alert(Alert("c-2", "A", "B", until=T0 + dt.timedelta(hours=1)))
    assert run(player, 1) == ["c-2"] * 3
    assert player.clear_alerts(None, T0 + dt.timedelta(seconds=2), 2.0) == 1
    assert player.update(T0 + dt.timedelta(seconds=2), 2.0).mode == "splash"
    assert showings(outbox, 5)[0]["duration_ms"] == 2000


def test_emergency_item_interrupts_within_the_update_that_sees_it(outbox: Outbox) -> None:
    content = FakeContent(manifest(items=[text("a", 10)]))
    player = Player(content, outbox, Problems())
    run(player, 2)
    content.manifest = manifest(2, items=[text("a", 10), text("e", 10, priority="emergency")])
    assert player.update(T0 + dt.timedelta(seconds=2.5), 2.5).item.id == "e"
    # "a" is unchanged in serial 2, so it is cut for the emergency, not for the manifest change.
    assert [(r["item"], r["reason"]) for r in showings(outbox, 5)] == [("a", "preempted")]


def test_high_item_waits_for_the_boundary_and_changed_item_leaves_at_once(outbox: Outbox) -> None:
    content = FakeContent(manifest(items=[text("a", 10), text("b", 10)]))
    player = Player(content, outbox, Problems())
    run(player, 2)
    # Same item "a" unchanged, a new high item: "a" finishes its turn, then only "h" plays.
    content.manifest = manifest(2, items=[text("a", 10), text("b", 10), text("h", 10, priority="high")])
    assert run(player, 7, start=2.5)[-1] == "a"
    assert player.update(T0 + dt.timedelta(seconds=10), 10).item.id == "h"
    # "h" changes its text in serial 3: withdrawn content leaves the screen at once.
    content.manifest = manifest(3, items=[text("a", 10), text("h", 10, priority="high", body="Đã sửa")])
    scene = player.update(T0 + dt.timedelta(seconds=11), 11)
    assert scene.item.id == "h" and scene.item.body == "Đã sửa"
    reasons = [(r["item"], r["reason"]) for r in showings(outbox, 10)]
    assert reasons == [("a", None), ("h", "manifest_changed")]


def test_screen_off_window_ends_the_showing(outbox: Outbox) -> None:
    # screen on 09:00-09:01 local: at 60 s the screen goes dark and the showing is closed.
    player = Player(FakeContent(manifest(items=[text("a", 100)], screen={"on": [["09:00", "09:01"]]})), outbox, Problems())
    shown = run(player, 61, step=1)
    assert shown[59] == "a" and shown[60] is None
    assert player.update(T0 + dt.timedelta(seconds=62), 62).mode == "off"
    assert showings(outbox, 5)[0]["reason"] == "screen_off"
    assert player.status()["screen_on"] is False


def test_failed_item_is_skipped_reported_and_retried_later(outbox: Outbox) -> None:
    problems = Problems()
    player = Player(FakeContent(manifest(items=[text("a", 10), text("b", 10)])), outbox, problems)
    scene = player.update(T0, 0.0)
    assert scene.item.id == "a"
    player.item_failed(scene.showing_id, "cannot decode image", T0, 0.0)
    assert player.update(T0, 0.0).item.id == "b"
    assert "item a failed to load: cannot decode image" in problems.current()
    # a does not come back in its turn while it waits out the retry delay
    assert set(run(player, 60, step=1, start=0.5)) == {"b"}
    assert showings(outbox, 1)[0]["reason"] == "error"


def test_shutdown_closes_the_current_showing(outbox: Outbox) -> None:
    player = Player(FakeContent(manifest(items=[text("a", 10)])), outbox, Problems())
    run(player, 4)
    player.shutdown(T0 + dt.timedelta(seconds=4.2), 4.2)
    record = showings(outbox, 1)[0]
    assert (record["reason"], record["completed"], record["duration_ms"]) == ("shutdown", False, 4200)


def test_records_survive_kill_9_right_after_add(tmp_path: Path) -> None:
    """A showing that ended is on disk when `add` returns, even if the process dies at once."""
    script = (
        "import sys; from pathlib import Path; from agent.outbox import Outbox; from agent.models import PlayRecord\n"
        "box = Outbox(Path(sys.argv[1])); box.open()\n"
        "for n in range(50):\n"
        "    box.add([PlayRecord(f'r{n}', 'i1', 'text', 'T', None, 1, 'normal', 's', 'e', 10, True, None)])\n"
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "o.sqlite")], cwd=ROOT, timeout=60)
    assert result.returncode == -signal.SIGKILL
    box = Outbox(tmp_path / "o.sqlite")
    box.open()
    assert box.pending() == 50
    assert [r["id"] for r in showings(box, 3)] == ["r0", "r1", "r2"]
    box.mark_uploaded([seq for seq, _ in box.pending_batch(2)])
    assert box.pending() == 48
    box.close()
    assert os.path.getsize(tmp_path / "o.sqlite") > 0


def test_a_full_disk_keeps_records_in_memory_and_playback_going(tmp_path: Path) -> None:
    problems = Problems()
    box = Outbox(tmp_path / "o.sqlite", on_error=lambda m: problems.report("outbox", m) if m else problems.resolve("outbox"))
    box.open()
    # SQLite's own "disk full": a page limit on the outbox's connection (per connection, so it is set there).
    db = box._conn()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")
    player = Player(FakeContent(manifest(items=[text("a", 1), text("b", 1)])), box, problems)
    shown = run(player, 60, step=0.5)  # ~60 showings whose records cannot be written
    assert shown[-1] in {"a", "b"}
    assert any("cannot write" in e and "keeping them in memory" in e for e in problems.current())
    assert box.pending() >= 55
    db.execute("PRAGMA max_page_count=1073741823")  # space again
    run(player, 1.5, step=0.5, start=60.5)
    with sqlite3.connect(tmp_path / "o.sqlite") as db:  # every record on disk now, none left in memory
        assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == box.pending() >= 56
    assert not any("cannot write" in e for e in problems.current())
    ids = [r["id"] for r in box.oldest(1000)]  # showings and events alike
    assert len(ids) == len(set(ids)) == box.pending()
    box.close()


def test_a_showing_counts_from_its_first_frame_and_status_says_what_is_on_screen(outbox: Outbox) -> None:
    player = Player(FakeContent(manifest(items=[text("a", 10), text("b", 10)])), outbox, Problems())
    scene = player.update(T0, 0.0)
    player.presented(scene.showing_id, T0, 0.0)
    assert player.status()["current_item"] == "a"
    scene = player.update(T0 + dt.timedelta(seconds=10), 10.0)  # "a" ends; "b" is chosen, its slide decoding
    assert scene.item is not None and scene.item.id == "b"
    assert player.status()["current_item"] == "a"  # "a"'s picture is still what the screen shows
    player.presented(scene.showing_id, T0 + dt.timedelta(seconds=11.5), 11.5)  # drawn 1.5 s later
    assert player.status()["current_item"] == "b"
    assert player.update(T0 + dt.timedelta(seconds=20), 20.0).item.id == "b"  # its 10 s began at 11.5
    assert player.update(T0 + dt.timedelta(seconds=21.5), 21.5).item.id == "a"
    b = next(r for r in showings(outbox, 10) if r["item"] == "b")
    assert b["started_at"] == "2026-11-26T09:00:11.500+07:00" and b["duration_ms"] == 10000 and b["completed"]

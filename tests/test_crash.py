"""Crash safety: SIGKILL at random moments while playing and uploading loses no ended showing.

Every third run ends with SIGTERM instead: three kills in a row before 60 s of content would make
the board set its manifest aside (PROTOCOL.md §10, tested in test_hostile.py), which is not what
this test is about.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from refsource.server import ReferenceServer, SourceState
from tests.conftest import RunningAgent, base_manifest, sign_manifest, wait_for, write_config

DEVICE = "vinhthuan-ubnd-01"
HEARTBEAT_FIELDS = {"device", "sent_at", "agent_version", "uptime_s", "manifest_serial", "current_item", "screen_on",
                    "alert_active", "cache", "disk_free_bytes", "outbox_pending", "last_sync_ok_at", "clock_offset_s",
                    "errors"}
ITEM_S = 0.4


def test_sigkill_loop_loses_no_record(tmp_path: Path, private_key: Ed25519PrivateKey, public_key_b64: str,
                                      agent_factory: Callable[[Path], RunningAgent]) -> None:
    server = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/api", token="tok")).start()
    try:
        manifest = base_manifest(1, items=[{"id": f"t{n}", "type": "text", "title": f"Tin {n}", "body": "Nội dung",
                                            "duration_s": ITEM_S} for n in range(3)])
        server.publish(DEVICE, sign_manifest(manifest, private_key))
        config_path = write_config(tmp_path / "agent.yaml", tmp_path / "unused", tmp_path / "state", [public_key_b64])
        config = yaml.safe_load(config_path.read_text())
        config["source"] = {"url": server.base_url, "token": "tok", "poll_interval_s": 10}
        config["report"] = {"upload_interval_s": 1, "batch_size": 5}
        config_path.write_text(yaml.safe_dump(config))
        rng = random.Random(2026)
        runs = 8
        ends = []
        for run in range(runs):
            agent = agent_factory(config_path).start()
            wait_for(lambda: agent.status()["current_item"], timeout=20, what="an item on screen")  # noqa: B023
            time.sleep(rng.uniform(0.3, 2.5))  # the random moment of the power cut, not a synchronisation
            ends.append("clean" if run % 3 == 2 else "crash")
            if run % 3 == 2:
                assert agent.stop(signal.SIGTERM) == 0
            else:
                assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        final_started = dt.datetime.now(dt.UTC)
        final = agent_factory(config_path).start()
        wait_for(lambda: final.status()["current_item"], timeout=20, what="an item on screen")
        wait_for(lambda: final.status()["outbox_pending"] <= 1, timeout=30, what="the backlog uploaded")
        wait_for(lambda: server.state.heartbeats, timeout=15, what="a heartbeat")
        beat = server.state.heartbeats[-1]
        assert set(beat) >= HEARTBEAT_FIELDS and beat["device"] == DEVICE and beat["manifest_serial"] == 1
        assert beat["cache"].keys() == {"bytes_used", "bytes_limit", "media_missing"}
        assert "load_1m" in beat and "mem_available_bytes" in beat  # what this Linux machine can tell
        assert final.stop() == 0

        db = sqlite3.connect(tmp_path / "state" / "outbox.sqlite")
        journal = {row[0]: (row[1], row[2]) for row in db.execute("SELECT id, uploaded, body FROM records")}
        db.close()
        received = server.state.playlogs
        assert set(received) <= set(journal)  # nothing invented
        for record_id, (uploaded, _) in journal.items():
            assert record_id in received or not uploaded  # nothing marked uploaded that the source lacks
        pending = [json.loads(body) for uploaded, body in journal.values() if not uploaded]
        # Only the final run's last showings may still wait (those after its last upload): the backlog of
        # every killed run went up.
        assert all(dt.datetime.fromisoformat(r["started_at"]) >= final_started - dt.timedelta(seconds=1)
                   for r in pending), pending

        rows = sorted((json.loads(body) for _, body in journal.values()), key=lambda r: r["started_at"])
        # Each start says how the run before it ended: SIGKILL in the same boot reads as a crash.
        starts = [r["details"]["previous_stop"] for r in rows if r["type"] == "event" and r["item"] == "agent_start"]
        assert starts == ["first", *ends], starts
        stops = [r["details"]["clean"] for r in rows if r["type"] == "event" and r["item"] == "agent_stop"]
        assert stops == [True] * (ends.count("clean") + 1)  # only SIGTERMs (and the final stop) wrote one
        records = [r for r in rows if r["type"] != "event"]
        assert len(records) >= runs  # every run showed at least one item to its end or was cut by the kill
        # Showings within one run follow each other without gaps; a lost record would open one.
        # So the number of gaps can be at most the number of process boundaries.
        times = [(dt.datetime.fromisoformat(r["started_at"]), dt.datetime.fromisoformat(r["ended_at"])) for r in records]
        gaps = sum(1 for (_, end), (start, _) in itertools.pairwise(times) if (start - end).total_seconds() > 0.15)
        assert gaps <= runs, f"{gaps} gaps between showings over {runs + 1} runs: a record was lost"
        for record in records:
            assert record["duration_ms"] <= ITEM_S * 1000 + 300 or record["reason"] == "shutdown"
        assert records[-1]["reason"] == "shutdown", [(r["item"], r["ended_at"][11:], r["reason"]) for r in records[-6:]]
    finally:
        server.stop()

"""Reporting benchmark: card writes per record and bytes per day on a metered SIM. Prints figures.

    python bench/bench_report.py

1. Bytes written per proof-of-play record: a child process commits records one showing at a time,
   as the player does (WAL, synchronous=FULL), and reads its own /proc/self/io.
2. Overhead per day at default settings for a board showing 10-second items around the clock:
   manifest polls (every 300 s), heartbeats (every 60 s) and record uploads (every 30 s: three
   records a batch), each measured as HTTP bytes against the reference source over the agent's
   real client; plus an estimate of TCP/IP and TLS framing on a kept-alive connection, and MQTT
   keep-alives (on paper until the MQTT client lands).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.health import Problems  # noqa: E402
from agent.models import PlayRecord  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from agent.sync.client import ClientSettings, HttpClient  # noqa: E402
from agent.sync.reporter import Reporter  # noqa: E402
from refsource.server import ReferenceServer, SourceState  # noqa: E402

DEVICE = "vinhthuan-ubnd-01"
SECONDS_PER_DAY = 86_400
# Per HTTP exchange on a kept-alive TLS connection: ~4 TCP segments of 52 bytes of TCP/IP headers
# (request, response, two ACKs) and 2 TLS records of ~29 bytes.
FRAMING_PER_EXCHANGE = 4 * 52 + 2 * 29
# MQTT keep-alive: PINGREQ + PINGRESP (2 bytes each) in TLS records, plus TCP/IP headers and ACKs.
MQTT_PING_BYTES = 2 * (2 + 29) + 4 * 52

WRITER = """
import os, sys
from pathlib import Path
from agent.outbox import Outbox
from agent.models import PlayRecord

def io():
    values = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(values["wchar"]), int(values["write_bytes"])

box = Outbox(Path(sys.argv[1])); box.open()
n = int(sys.argv[2])
before = io()
for i in range(n):
    box.add([PlayRecord(f"01JDX7Z3M1Q9W6V5K2T8R{i:05d}", "i2", "text", "THÔNG BÁO", None, 42, "high",
                        "2026-11-26T08:00:00.120+07:00", "2026-11-26T08:00:10.124+07:00", 10004, True, None)])
after = io()
print((after[0] - before[0]) / n, (after[1] - before[1]) / n)
"""


def record(n: int) -> PlayRecord:
    return PlayRecord(f"01JDX7Z3M1Q9W6V5K2T8R{n:05d}", f"i{n % 5}", "image", "Lịch tiêm chủng tháng 12",
                      "9060fbfb0f1b73fe215046ca3dbca33cbe94c19541687f05a55a8c179c066540", 42, "normal",
                      "2026-11-26T08:00:00.120+07:00", "2026-11-26T08:00:10.124+07:00", 10004, True, None)


def heartbeat() -> dict[str, Any]:
    return {"device": DEVICE, "sent_at": "2026-11-26T08:00:00+07:00", "agent_version": "0.1.0", "uptime_s": 3600,
            "manifest_serial": 42, "current_item": "i2", "screen_on": True, "alert_active": False,
            "cache": {"bytes_used": 183422000, "bytes_limit": 2147483648, "media_missing": 0},
            "disk_free_bytes": 12000000000, "outbox_pending": 3, "last_sync_ok_at": "2026-11-26T07:58:00+07:00",
            "clock_offset_s": 0.4, "errors": [], "cpu_temp_c": 51.5, "load_1m": 0.12,
            "mem_available_bytes": 612000000, "network": {"interface": "wwan0", "type": "cellular"}}


def writes_per_record(tmp: Path, count: int = 2000) -> dict[str, float]:
    output = subprocess.run([sys.executable, "-c", WRITER, str(tmp / "w.sqlite"), str(count)], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return {"records": count, "bytes_passed_to_write_per_record": round(float(output[0])),
            "bytes_reaching_the_block_layer_per_record": round(float(output[1]))}


def http_bytes(tmp: Path) -> dict[str, int]:
    server = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/api/bangtin/v1", token="t" * 40)).start()
    try:
        client = HttpClient(ClientSettings(server.base_url, "t" * 40, None, "bangtin-agent/0.1.0"))
        box = Outbox(tmp / "o.sqlite")
        box.open()
        reporter = Reporter(client, device_url=f"{server.base_url}/devices/{DEVICE}", device_id=DEVICE, outbox=box,
                            heartbeat=heartbeat, problems=Problems(), stop=threading.Event(), heartbeat_interval_s=60,
                            upload_interval_s=30, batch_size=200, today=lambda: "2026-11-26", rng=random.Random(1))
        wire = server.state.wire
        reporter._send_heartbeat()  # warm the connection: the steady state is a kept-alive one
        wire.reset()
        reporter._send_heartbeat()
        per_heartbeat = wire.sent + wire.received
        box.add([record(n) for n in range(3)])
        wire.reset()
        reporter.upload_pending()
        per_upload_3 = wire.sent + wire.received
        box.add([record(100 + n) for n in range(30)])
        wire.reset()
        reporter.upload_pending()
        per_upload_30 = wire.sent + wire.received
        server.publish(DEVICE, json.dumps({"payloadType": "x"}).encode())
        etag = '"' + hashlib.sha256(json.dumps({"payloadType": "x"}).encode()).hexdigest()[:32] + '"'
        wire.reset()
        with client.get(f"{server.base_url}/devices/{DEVICE}/manifest", {"If-None-Match": etag}, 30) as response:
            assert response.status_code == 304
        per_poll = wire.sent + wire.received
        box.close()
        client.close()
    finally:
        server.stop()
    return {"heartbeat": per_heartbeat, "upload_3_records": per_upload_3, "upload_30_records": per_upload_30,
            "unchanged_poll": per_poll}


def per_day(sizes: dict[str, int], *, heartbeat_s: float, upload_s: float, poll_s: float, mqtt: bool) -> dict[str, Any]:
    upload_key = "upload_3_records" if upload_s <= 30 else "upload_30_records"
    uploads = SECONDS_PER_DAY / max(upload_s, 30)  # records arrive every 10 s: one batch per interval
    counts = {"polls": SECONDS_PER_DAY / poll_s, "heartbeats": 0 if mqtt else SECONDS_PER_DAY / heartbeat_s,
              "uploads": uploads}
    http = (counts["polls"] * sizes["unchanged_poll"] + counts["heartbeats"] * sizes["heartbeat"]
            + counts["uploads"] * sizes[upload_key])
    exchanges = sum(counts.values())
    framing = exchanges * FRAMING_PER_EXCHANGE
    mqtt_bytes = 0.0
    if mqtt:  # heartbeat as a retained MQTT publish (~JSON + topic + 5 bytes) + keep-alive pings every 60 s
        mqtt_bytes = SECONDS_PER_DAY / heartbeat_s * (len(json.dumps(heartbeat())) + 40 + 29 + 2 * 52) \
            + SECONDS_PER_DAY / 60 * MQTT_PING_BYTES
    total = http + framing + mqtt_bytes
    return {"http_bytes": round(http), "tcp_tls_framing_estimate": round(framing), "mqtt_estimate": round(mqtt_bytes),
            "total_per_day_mb": round(total / 1e6, 2), "total_per_30_days_mb": round(total * 30 / 1e6, 1)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results: dict[str, Any] = {"writes": writes_per_record(work)}
        sizes = http_bytes(work)
        results["http_bytes_per_exchange"] = sizes
        results["per_day_defaults_http_only"] = per_day(sizes, heartbeat_s=60, upload_s=30, poll_s=300, mqtt=False)
        results["per_day_defaults_heartbeat_over_mqtt"] = per_day(sizes, heartbeat_s=60, upload_s=30, poll_s=300, mqtt=True)
        results["per_day_upload_every_300_s_heartbeat_over_mqtt"] = per_day(sizes, heartbeat_s=60, upload_s=300,
                                                                            poll_s=300, mqtt=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

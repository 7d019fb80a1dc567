"""The data meter (docs/metered.md): bytes on the wire by kind, per day and month, measured from the
kernel's TCP counters and checked against a counting TCP proxy over TLS; kept across restarts; a
damaged file reported and replaced; the program's own counts where the kernel cannot tell."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.meter import KEEP_DAYS, KEEP_MONTHS, METER_FILE, DataMeter
from agent.sync.client import ClientSettings, HttpClient
from agent.wire import KINDS, Reading, TrafficKind
from refsource.proxy import CountingProxy
from refsource.server import ReferenceServer, SourceState
from tests.conftest import base_manifest, sign_manifest, wait_for, write_config
from tests.test_mqtt import Broker
from tests.test_sync_http import make_tls

DEVICE = "vinhthuan-ubnd-01"
BASE = "/api/bangtin/v1"
TOKEN = "tok-123"
# The kernel counts payload bytes as the proxy does; what may differ is the one sequence number of
# a FIN and a TLS close_notify still in flight when a side is read: a few dozen bytes at most.
TOLERANCE_BYTES = 64


class Tally:
    """What the client hands the meter, by kind, as (sent, received)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[int]] = {}
        self.kernel: set[bool] = set()

    def __call__(self, kind: TrafficKind, reading: Reading) -> None:
        pair = self.by_kind.setdefault(kind, [0, 0])
        pair[0] += reading.sent
        pair[1] += reading.received
        self.kernel.add(reading.kernel)

    def total(self, kind: str) -> int:
        return sum(self.by_kind.get(kind, [0, 0]))


@pytest.fixture
def tls_source(tmp_path: Path) -> Iterator[tuple[ReferenceServer, CountingProxy, Path]]:
    context, ca_file = make_tls(tmp_path)
    server = ReferenceServer(("127.0.0.1", 0), SourceState(base_path=BASE, token=TOKEN), tls=context).start()
    proxy = CountingProxy(server.server_address[:2]).start()
    yield server, proxy, ca_file
    proxy.stop()
    server.stop()


def proxy_total(proxy: CountingProxy) -> int:
    return sum(proxy.totals())


def test_each_request_is_counted_as_the_proxy_sees_it_under_its_kind(tls_source, tmp_path) -> None:
    server, proxy, ca_file = tls_source
    media = tmp_path / "poster.jpg"
    media.write_bytes(random.Random(1).randbytes(300_000))
    server.publish(DEVICE, json.dumps({"serial": 1, "pad": "x" * 5000}).encode(), {f"{BASE}/media/poster.jpg": media})
    base = f"https://127.0.0.1:{proxy.port}{BASE}"
    tally = Tally()
    client = HttpClient(ClientSettings(base, TOKEN, str(ca_file), "bangtin-agent/test"), count=tally)
    def fetch(url: str, kind: TrafficKind) -> bytes:
        with client.get(url, {}, 30, kind=kind) as reply:
            return client.read_limited(reply, 1 << 20, time.monotonic() + 30)

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("manifest", lambda: fetch(f"{base}/devices/{DEVICE}/manifest", "manifest")),
        ("media", lambda: fetch(f"{base}/media/poster.jpg", "media")),
        ("reports", lambda: client.post(f"{base}/devices/{DEVICE}/heartbeat", b'{"device":"%s"}' % DEVICE.encode(),
                                        "application/json", 10)),
        ("update", lambda: fetch(f"{base}/devices/{DEVICE}/manifest", "update")),
    ]
    for kind, step in steps:
        before = proxy_total(proxy)
        step()
        seen_by_proxy = proxy_total(proxy) - before
        assert abs(tally.total(kind) - seen_by_proxy) <= TOLERANCE_BYTES, (kind, tally.by_kind, seen_by_proxy)
    # The first request paid the TLS handshake (the certificate alone is hundreds of bytes); the
    # media's bytes are all under media, not spread over the kinds that came after.
    assert tally.total("manifest") > 5000 + 500
    assert 300_000 < tally.total("media") < 300_000 * 1.01
    assert tally.kernel == {True}
    client.close()
    wait_for(lambda: all(flow.closed_at for flow in proxy.snapshot()), what="the proxy to see the close")
    assert abs(sum(map(sum, tally.by_kind.values())) - proxy_total(proxy)) <= TOLERANCE_BYTES


def test_without_tcp_info_the_program_counts_what_it_passes_and_says_so(tls_source, tmp_path) -> None:
    server, proxy, ca_file = tls_source
    server.publish(DEVICE, b'{"serial": 1}' * 200)
    base = f"https://127.0.0.1:{proxy.port}{BASE}"
    tally = Tally()
    client = HttpClient(ClientSettings(base, TOKEN, str(ca_file), "bangtin-agent/test"), count=tally,
                        tcp_read=lambda sock: None)  # a kernel without TCP_INFO
    for _ in range(3):
        with client.get(f"{base}/devices/{DEVICE}/manifest", {}, 10, kind="manifest") as reply:
            body = client.read_limited(reply, 1 << 20, time.monotonic() + 10)
    counted = tally.total("manifest")
    assert tally.kernel == {False}
    # HTTP's own bytes: at least the three bodies and the request lines; less than the wire, which
    # also carries the TLS handshake and records the program never sees.
    assert 3 * len(body) + 3 * 60 < counted < proxy_total(proxy)
    meter = DataMeter(tmp_path / METER_FILE, lambda: "2026-11-26", lambda path, data: None)
    meter.add("manifest", Reading(counted, 0, kernel=False))
    assert "program" in meter.status()["counted_by"] and meter.heartbeat()["counted"] == "program"
    client.close()


def test_days_and_months_roll_over_keep_their_limits_and_survive_a_restart(tmp_path) -> None:
    day = ["2026-01-01"]
    written: list[bytes] = []
    meter = DataMeter(tmp_path / METER_FILE, lambda: day[0], lambda path, data: written.append(data),
                      save_every_s=3600)
    start = time.mktime((2026, 1, 1, 12, 0, 0, 0, 0, -1))
    for n in range(400):  # 400 days, a reading of each kind on each
        day[0] = time.strftime("%Y-%m-%d", time.localtime(start + n * 86400))
        for index, kind in enumerate(KINDS):
            meter.add(kind, Reading(10 * (index + 1), 1, kernel=True))
    status = meter.status()
    assert status["today"]["date"] == day[0] and status["today"]["by_kind"]["media"] == {"sent": 20, "received": 1}
    assert status["today"]["total"] == sum(10 * (i + 1) + 1 for i in range(len(KINDS)))
    assert status["month"]["by_kind"]["mqtt"]["sent"] == 40 * int(day[0][8:])  # every day so far this month
    assert meter.heartbeat() == {"day": {k: 10 * (i + 1) + 1 for i, k in enumerate(KINDS)},
                                 "month": {k: (10 * (i + 1) + 1) * int(day[0][8:]) for i, k in enumerate(KINDS)}}
    assert written == []  # not due yet: at most every `save_every_s`
    meter.save_now()
    saved = json.loads((tmp_path / METER_FILE).read_text())
    assert len(saved["days"]) == KEEP_DAYS and len(saved["months"]) == KEEP_MONTHS
    assert max(saved["days"]) == day[0]
    again = DataMeter(tmp_path / METER_FILE, lambda: day[0], lambda path, data: None)
    assert again.load() is None
    assert again.status()["today"] == status["today"] and again.status()["month"] == status["month"]


def test_a_save_is_handed_to_the_writer_at_most_every_few_minutes(tmp_path) -> None:
    now = [0.0]
    written: list[bytes] = []
    meter = DataMeter(tmp_path / METER_FILE, lambda: "2026-11-26", lambda path, data: written.append(data),
                      mono=lambda: now[0], save_every_s=300)
    for second in range(0, 901, 10):
        now[0] = float(second)
        meter.add("manifest", Reading(100, 100, kernel=True))
    assert len(written) == 3  # at 300, 600 and 900 s
    assert json.loads(written[-1])["days"]["2026-11-26"]["manifest"] == [9100, 9100]


@pytest.mark.parametrize("damage", [b"{not json", b'{"schema": "other"}', b'{"schema": "bangtin.data-meter/1", '
                                    b'"days": {"2026-11-26": {"media": [-5, 1]}}, "months": {}}', b"\xff\xfe"])
def test_a_damaged_file_is_reported_and_counting_starts_from_zero(tmp_path, damage) -> None:
    (tmp_path / METER_FILE).write_bytes(damage)
    meter = DataMeter(tmp_path / METER_FILE, lambda: "2026-11-26", lambda path, data: None)
    problem = meter.load()
    assert problem is not None and METER_FILE in problem and "counts from zero" in problem
    meter.add("media", Reading(7, 3, kernel=True))
    assert meter.status()["today"]["total"] == 10 and meter.status()["note"] in problem
    meter.save_now()
    assert json.loads((tmp_path / METER_FILE).read_text())["days"] == {"2026-11-26": {"media": [7, 3]}}


# --- the real agent -----------------------------------------------------------------------------


def https_board_config(tmp_path: Path, source_url: str, ca_file: Path, keys: list[str], mqtt_url: str | None,
                       **sections: Any) -> Path:
    path = write_config(tmp_path / "agent.yaml", tmp_path, tmp_path / "state", keys)
    config = yaml.safe_load(path.read_text())
    config["source"] = {"url": source_url, "token": TOKEN, "ca_file": str(ca_file), "poll_interval_s": 10}
    config["report"] = {"heartbeat_interval_s": 10, "upload_interval_s": 5}
    if mqtt_url:
        config["mqtt"] = {"url": mqtt_url, "keepalive_s": 5, "ca_file": str(ca_file)}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def publish_poster(server: ReferenceServer, tmp_path: Path, key: Ed25519PrivateKey, size: int = 200_000) -> int:
    poster = tmp_path / "site" / "poster.jpg"
    poster.parent.mkdir(parents=True, exist_ok=True)
    poster.write_bytes(random.Random(2).randbytes(size))
    manifest = base_manifest(1, media=[{"id": "m1", "url": f"{BASE}/media/poster.jpg", "size": size,
                                        "sha256": hashlib.sha256(poster.read_bytes()).hexdigest(), "type": "image/jpeg"}],
                             items=[{"id": "text", "type": "text", "title": "THÔNG BÁO", "body": "Họp dân", "duration_s": 2}])
    body = sign_manifest(manifest, key)
    server.publish(DEVICE, body, {f"{BASE}/media/poster.jpg": poster})
    return len(body)


def saved_days(storage: Path) -> dict[str, list[int]]:
    days = json.loads((storage / METER_FILE).read_text())["days"]
    assert len(days) == 1, days
    return next(iter(days.values()))  # type: ignore[no-any-return]


def test_the_agents_meter_agrees_with_counting_proxies_for_http_and_mqtt_over_tls(
        tmp_path, tls_source, private_key, public_key_b64, agent_factory) -> None:
    server, http_proxy, ca_file = tls_source
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", tls=(ca_file, tmp_path / "key.pem")).start()
    mqtt_proxy = CountingProxy(("127.0.0.1", broker.port)).start()
    try:
        manifest_bytes = publish_poster(server, tmp_path, private_key)
        config = https_board_config(tmp_path, f"https://127.0.0.1:{http_proxy.port}{BASE}", ca_file, [public_key_b64],
                                    f"mqtts://127.0.0.1:{mqtt_proxy.port}")
        agent = agent_factory(config).start()
        wait_for(lambda: agent.status()["mqtt"]["connected"], timeout=20, what="MQTT over TLS")
        wait_for(lambda: len(server.requests_to("/manifest")) >= 2 and server.state.playlogs, timeout=40,
                 what="a second poll and an upload of records")
        # The MQTT link's socket is read every 10 s (and at its close): wait for its first reading.
        wait_for(lambda: set(agent.status()["data"]["today"]["by_kind"]) >= {"manifest", "media", "reports", "mqtt"},
                 timeout=20, what="every kind of traffic in the meter")
        assert agent.stop(signal.SIGTERM) == 0
        wait_for(lambda: all(flow.closed_at for flow in http_proxy.snapshot() + mqtt_proxy.snapshot()),
                 what="every proxied connection closed")
        today = saved_days(agent.storage)
        http_seen = sum(http_proxy.totals())
        mqtt_seen = sum(mqtt_proxy.totals())
        http_counted = sum(sum(today[kind]) for kind in ("manifest", "media", "reports"))
        flows = len(http_proxy.snapshot()) + len(mqtt_proxy.snapshot())
        assert abs(http_counted - http_seen) <= TOLERANCE_BYTES * flows, (today, http_seen)
        assert abs(sum(today["mqtt"]) - mqtt_seen) <= TOLERANCE_BYTES * flows, (today, mqtt_seen)
        assert 200_000 < sum(today["media"]) < 200_000 * 1.02
        assert sum(today["manifest"]) > manifest_bytes * 2 // 3  # the body (gzip aside) and two polls
        assert today["mqtt"][0] > 100 and today["reports"][0] > 100  # presence and acks; playlogs up

        # The totals go on from where they were after a restart.
        again = agent_factory(config).start()
        wait_for(lambda: again.status()["data"]["today"]["total"] > sum(map(sum, today.values())), timeout=20,
                 what="the meter to go on from the saved totals")
        assert again.status()["data"]["today"]["by_kind"]["media"]["received"] >= today["media"][1]
        again.stop()
    finally:
        mqtt_proxy.stop()
        broker.stop()


def test_the_heartbeat_carries_the_meter_and_a_damaged_file_is_reported(
        tmp_path, tls_source, private_key, public_key_b64, agent_factory) -> None:
    server, proxy, ca_file = tls_source
    publish_poster(server, tmp_path, private_key, size=20_000)
    config = https_board_config(tmp_path, f"https://127.0.0.1:{proxy.port}{BASE}", ca_file, [public_key_b64], None)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / METER_FILE).write_text('{"schema": "bangtin.data-meter/1", "days": [')
    agent = agent_factory(config).start()
    wait_for(lambda: any("data meter" in e for e in agent.status()["errors"]), what="the damage reported")
    # The first heartbeat may ride on the first poll, before the poster is in: wait for one after it.
    wait_for(lambda: any(beat.get("data", {}).get("day", {}).get("media") for beat in server.state.heartbeats),
             timeout=30, what="a heartbeat that carries the data meter")
    beat = next(b for b in server.state.heartbeats if b.get("data", {}).get("day", {}).get("media"))
    assert set(beat["data"]) == {"day", "month"} and beat["data"]["day"]["media"] > 20_000
    assert len(json.dumps(beat["data"])) < 200  # paid per byte: a compact field
    assert agent.stop() == 0
    assert json.loads((agent.storage / METER_FILE).read_text())["schema"] == "bangtin.data-meter/1"


def test_ctl_status_shows_the_meter_in_one_line() -> None:
    from agent.cli import format_status

    status: dict[str, Any] = {"data": {"counted_by": "kernel (TCP_INFO)", "today": {
        "date": "2026-11-26", "total": 1_234_567, "by_kind": {"manifest": {"sent": 1000, "received": 33_567},
                                                            "media": {"sent": 0, "received": 1_200_000}}},
        "month": {"date": "2026-11", "total": 45_600_000, "by_kind": {}}}}
    line = next(line for line in format_status(status).splitlines() if line.startswith("data"))
    assert line == "data            today 1.23 MB (manifest 34.6 kB, media 1.20 MB), this month 45.60 MB"


# --- spending less: resumed TLS, rounds that share a connection ---------------------------------


def test_a_new_connection_resumes_the_last_tls_session(tls_source) -> None:
    server, proxy, ca_file = tls_source
    proxy.idle_close_s = 0.2  # the server closes idle connections, as nginx does after 75 s
    server.publish(DEVICE, b'{"serial": 1}')
    base = f"https://127.0.0.1:{proxy.port}{BASE}"
    client = HttpClient(ClientSettings(base, TOKEN, str(ca_file), "bangtin-agent/test"))
    for n in range(3):
        with client.get(f"{base}/devices/{DEVICE}/manifest", {}, 10, kind="manifest") as reply:
            client.read_limited(reply, 1 << 20, time.monotonic() + 10)
        wait_for(lambda n=n: len([f for f in proxy.snapshot() if f.closed_by == "idle"]) == n + 1,
                 what="the idle connection closed")
    assert [r.tls_resumed for r in server.state.requests] == [False, True, True]
    flows = proxy.snapshot()
    assert flows[1].total < flows[0].total - 400 and flows[2].total == pytest.approx(flows[1].total, abs=40)
    client.close()


def test_records_go_with_the_heartbeat_and_a_round_rides_on_the_poll() -> None:
    from agent.sync.reporter import ALIGN, ReportTimer

    timer = ReportTimer(600, 600, random.Random(1), now=0.0)
    timer.next_heartbeat, timer.next_upload = 600.0, 620.0
    assert timer.due(500.0, polled=False, poll_in=None) == (False, False)
    # Due at 600; the source polls 40 s later: the round waits for the poll, and the upload goes with it.
    assert timer.due(600.0, polled=False, poll_in=40.0) == (False, False)
    assert timer.wake_at(600.0) == 620.0  # the upload's own time: it waits for the poll too
    assert timer.due(620.0, polled=False, poll_in=20.0) == (False, False)
    assert timer.wake_at(620.0) == 600 + ALIGN * 600  # the longest the heartbeat waits for the poll
    assert timer.due(640.0, polled=True, poll_in=300.0) == (True, True)
    # A poll shortly before a round is due carries it early; one long before does not.
    timer.heartbeat_sent(640.0, 600.0)
    timer.uploaded(640.0, 600.0)
    assert timer.due(640.0 + 300, polled=True, poll_in=300.0) == (False, False)
    assert timer.due(640.0 + 500, polled=True, poll_in=300.0) == (True, True)
    # A poll that does not come (the source is downloading): the round goes alone at the limit.
    timer.heartbeat_sent(1140.0, 600.0)
    timer.uploaded(1140.0, 600.0)
    assert timer.due(1740.0 + ALIGN * 600 - 1, polled=False, poll_in=0.0) == (False, False)
    assert timer.due(1740.0 + ALIGN * 600, polled=False, poll_in=0.0) == (True, True)
    # Records that would come due before the next heartbeat go with this one; later ones wait.
    rare = ReportTimer(60, 600, random.Random(1), now=0.0)
    rare.next_heartbeat, rare.next_upload = 60.0, 500.0
    assert rare.due(60.0, polled=False, poll_in=None) == (True, False)
    rare.next_upload = 100.0
    assert rare.due(60.0, polled=False, poll_in=None) == (True, True)
    # Uploads more often than heartbeats keep their own pace.
    fast = ReportTimer(600, 30, random.Random(1), now=0.0)
    fast.next_heartbeat, fast.next_upload = 600.0, 30.0
    assert fast.due(30.0, polled=False, poll_in=None) == (False, True)


def test_the_agents_heartbeat_and_records_ride_on_a_poll_sharing_its_connection(
        tmp_path, tls_source, private_key, public_key_b64, agent_factory) -> None:
    server, proxy, ca_file = tls_source
    proxy.idle_close_s = 3.0  # well below the time between polls: each poll opens a connection
    publish_poster(server, tmp_path, private_key, size=1000)
    # The defaults' proportions (poll 300 s, reports 600 s), compressed: every other poll carries a round.
    config = https_board_config(tmp_path, f"https://127.0.0.1:{proxy.port}{BASE}", ca_file, [public_key_b64], None,
                                report={"heartbeat_interval_s": 20, "upload_interval_s": 20})
    agent = agent_factory(config).start()
    wait_for(lambda: len(server.requests_to("/playlogs")) >= 2 and len(server.requests_to("/heartbeat")) >= 2,
             timeout=60, what="a second heartbeat and its records")
    agent.stop()
    by_connection: dict[int, list[str]] = {}
    for record in sorted(server.state.requests, key=lambda r: r.at):
        by_connection.setdefault(record.peer_port, []).append(record.path.rsplit("/", 1)[-1])
    with_heartbeat = [paths for paths in by_connection.values() if "heartbeat" in paths]
    # The first heartbeat comes soon after the start, on its own; every later one follows a poll on
    # the poll's connection, and the records follow it.
    assert all(paths[:3] == ["manifest", "heartbeat", "playlogs"] for paths in with_heartbeat[1:]), by_connection
    assert len(with_heartbeat) >= 2
    polls = [r for r in server.state.requests if r.path.endswith("/manifest")]
    assert all(len(paths) <= 4 for paths in by_connection.values())  # no connection outlives a round
    assert all(r.tls_resumed for r in polls[1:])  # a reconnect resumes TLS

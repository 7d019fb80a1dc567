"""Reporting benchmark: card writes per record, and what a board spends on its SIM. Prints figures.

    python bench/bench_report.py [--seconds 40]

1. Bytes written to the card per proof-of-play record: a child process commits records one showing
   at a time, as the player does (WAL, synchronous=FULL), and reads its own /proc/self/io.
2. The board's overhead on a metered SIM (everything but media and releases), measured: the real
   agent (`python -m agent run`, SDL dummy driver) talks to the reference source over TLS and to a
   real mosquitto over TLS, each through a counting TCP proxy (refsource/proxy.py) that sees every
   byte. The certificate is an RSA-2048 leaf and intermediate, the size a province's CA issues.
   Intervals are compressed; four runs: HTTP kept alive (what each exchange costs on an open
   connection); HTTP closed by the proxy after 0.5 s idle, against a source that resumes TLS
   sessions and against one that never does (what opening a connection costs, resumed and full);
   and HTTP with MQTT (heartbeats go as retained MQTT status; keep-alives, the connect).
   Each exchange is read off the proxy's per-connection timeline and matched, by port, to the
   source's request log (manifest polls answered 304, heartbeats, playlog batches by record count).
3. A month: the count of each exchange (a simulated month of the agent's own timers — the source's
   polls, the reporter's `ReportTimer` — for 10-second items around the clock, the server closing
   idle connections after 75 s like nginx's keepalive_timeout and resuming sessions for 300 s like
   its ssl_session_timeout) × the measured bytes, by kind, at the defaults, with an MQTT broker, and
   at other intervals. TCP/IP headers (52 bytes a packet, packets from the kernel's counts) are
   added in a second total. The data meter's own figure for each run is printed beside the proxy's.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import ipaddress
import json
import math
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from agent.config import Config  # noqa: E402
from agent.ctlsocket import request  # noqa: E402
from agent.envelope import MANIFEST_PAYLOAD_TYPE, sign_envelope  # noqa: E402
from agent.meter import METER_FILE  # noqa: E402
from agent.sync.reporter import HTTP_HEARTBEAT_EVERY_S, ReportTimer, jittered  # noqa: E402
from bench.benchkit import free_port, wait  # noqa: E402
from refsource.proxy import CountingProxy, Flow  # noqa: E402
from refsource.server import ReferenceServer, RequestRecord, SourceState  # noqa: E402

DEVICE = "vinhthuan-ubnd-01"
BASE = "/api/bangtin/v1"
TOKEN = "t" * 40  # a province's tokens are long random strings: they travel in every request
MONTH_S = 30 * 86_400
ITEM_S = 10.0  # a board showing 10-second items around the clock: a record every 10 s
IDLE_CLOSE_S = 75.0  # nginx keepalive_timeout default
TICKET_S = 300.0  # nginx ssl_session_timeout default: how long a session ticket resumes
MQTT_CONNECTS_A_DAY = 4  # a 3G link drops now and then; each drop costs an MQTT connect (an assumption)
TCP_IP_HEADER = 52  # IPv4 + TCP with timestamps, per packet

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


def writes_per_record(tmp: Path, count: int = 2000) -> dict[str, float]:
    output = subprocess.run([sys.executable, "-c", WRITER, str(tmp / "w.sqlite"), str(count)], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return {"records": count, "bytes_passed_to_write_per_record": round(float(output[0])),
            "bytes_reaching_the_block_layer_per_record": round(float(output[1]))}


# --- a province's certificates ------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    root: Path  # the board's source.ca_file and mqtt.ca_file
    chain: Path  # leaf + intermediate: what the servers send
    key: Path


def make_pki(folder: Path) -> Pki:
    now = dt.datetime.now(dt.UTC)

    def issue(subject: str, key: rsa.RSAPrivateKey, issuer: str, signer: rsa.RSAPrivateKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject),
                                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sở Thông tin và Truyền thông")]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer),
                                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sở Thông tin và Truyền thông")]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("tttn.example.gov.vn"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    root = issue("Bench Root CA", keys[0], "Bench Root CA", keys[0], True)
    intermediate = issue("Bench Issuing CA", keys[1], "Bench Root CA", keys[0], True)
    leaf = issue("tttn.example.gov.vn", keys[2], "Bench Issuing CA", keys[1], False)
    pki = Pki(folder / "root.pem", folder / "chain.pem", folder / "leaf.key")
    pki.root.write_bytes(root.public_bytes(Encoding.PEM))
    pki.chain.write_bytes(leaf.public_bytes(Encoding.PEM) + intermediate.public_bytes(Encoding.PEM))
    pki.key.write_bytes(keys[2].private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki


# --- one run of the real agent -------------------------------------------------------------------


@dataclass
class Run:
    name: str
    http: list[Flow]
    mqtt: list[Flow]
    requests: list[RequestRecord]
    meter: dict[str, list[int]]  # the agent's data meter for the run (one day)
    stopped_at: float


def start_broker(work: Path, pki: Pki) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"cafile {pki.root}\ncertfile {pki.chain}\nkeyfile {pki.key}\n"
                    f"user {os.environ.get('USER', 'root')}\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, 10, "mosquitto")
    return broker, port


def publish_content(server: ReferenceServer, key: Ed25519PrivateKey, item_s: float) -> None:
    """Text items (no media: media are not overhead), each shown `item_s`, as a commune's bulletin."""
    items = [{"id": f"tb-{n}", "type": "text", "title": "THÔNG BÁO", "priority": "normal", "duration_s": item_s,
              "body": "Lịch tiếp công dân của Chủ tịch UBND xã: sáng thứ Năm hằng tuần, tại phòng tiếp dân."}
             for n in range(4)]
    manifest = {"schema": "bangtin.manifest/1", "serial": 1, "issued_at": "2026-11-26T08:00:00+07:00",
                "audience": [DEVICE], "timezone": "Asia/Ho_Chi_Minh",
                "layout": {"header": {"title": "ỦY BAN NHÂN DÂN XÃ VĨNH THUẬN", "clock": True}},
                "media": [], "items": items}
    payload = json.dumps(manifest, ensure_ascii=False).encode()
    server.publish(DEVICE, json.dumps(sign_envelope(payload, MANIFEST_PAYLOAD_TYPE, key)).encode())


def server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.chain, pki.key)
    return context


class ForgetfulServer(ReferenceServer):
    """The reference source behind TLS that resumes no session: each connection gets a new context,
    so a new ticket key, and the board's ticket is refused (as when it has expired) — every new
    connection pays a full handshake, and receives tickets it will not be able to use."""

    def __init__(self, address: tuple[str, int], state: SourceState, pki: Pki) -> None:
        super().__init__(address, state)
        self._pki = pki

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        return server_context(self._pki).wrap_socket(sock, server_side=True), address


def run_agent(name: str, work: Path, pki: Pki, *, seconds: float, idle_close_s: float | None, with_mqtt: bool,
              report: dict[str, int], item_s: float, resuming_server: bool = True) -> Run:
    """The real agent for `seconds` behind counting proxies; a clean stop; what the proxies and the meter saw."""
    folder = work / name
    folder.mkdir()
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    state = SourceState(base_path=BASE, token=TOKEN)
    server = (ReferenceServer(("127.0.0.1", 0), state, tls=server_context(pki)) if resuming_server
              else ForgetfulServer(("127.0.0.1", 0), state, pki)).start()
    publish_content(server, key, item_s)
    http_proxy = CountingProxy(server.server_address[:2], idle_close_s=idle_close_s, name="http").start()
    broker = mqtt_proxy = None
    if with_mqtt:
        broker, broker_port = start_broker(folder, pki)
        mqtt_proxy = CountingProxy(("127.0.0.1", broker_port), name="mqtt").start()
    config: dict[str, Any] = {
        "device": {"id": DEVICE}, "security": {"manifest_keys": [public]},
        "source": {"url": f"https://127.0.0.1:{http_proxy.port}{BASE}", "token": TOKEN, "ca_file": str(pki.root),
                   "poll_interval_s": report.pop("poll_interval_s")},
        "report": report, "storage": {"dir": str(folder / "state")},
        "display": {"width": 640, "height": 360, "fullscreen": False}, "control": {"socket": str(folder / "ctl.sock")}}
    if mqtt_proxy is not None:
        config["mqtt"] = {"url": f"mqtts://127.0.0.1:{mqtt_proxy.port}", "ca_file": str(pki.root), "keepalive_s": 5}
    (folder / "agent.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
    log = (folder / "agent.log").open("wb")
    agent = subprocess.Popen([sys.executable, "-m", "agent", "--log-level", "WARNING", "run", "--config",
                              str(folder / "agent.yaml")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait(lambda: request(folder / "ctl.sock", "status")["result"]["manifest_serial"] == 1, 30, "the manifest")
        time.sleep(seconds)  # a benchmark: the agent's own timers run for this long
    finally:
        stopped_at = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            raise SystemExit(f"the agent did not stop within 30 s; its log:\n{(folder / 'agent.log').read_text()}") from None
        finally:
            log.close()
        time.sleep(0.5)  # the proxies see the last closes
        http_proxy.stop()
        if mqtt_proxy is not None:
            mqtt_proxy.stop()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        server.stop()
    days = json.loads((folder / "state" / METER_FILE).read_text())["days"]
    meter: dict[str, list[int]] = {}
    for tally in days.values():
        for kind, pair in tally.items():
            meter.setdefault(kind, [0, 0])
            meter[kind] = [meter[kind][0] + pair[0], meter[kind][1] + pair[1]]
    return Run(name, http_proxy.snapshot(), mqtt_proxy.snapshot() if mqtt_proxy else [], list(server.state.requests),
               meter, stopped_at)


# --- reading exchanges off the proxy's timelines -------------------------------------------------


def rounds(flow: Flow, until: float = math.inf) -> list[tuple[int, int]]:
    """(bytes up, bytes down) of each round trip: a round starts when the board speaks after the server did."""
    out: list[list[int]] = []
    last = None
    for at, direction, size in flow.events:
        if at > until:
            break
        if direction == "up" and last != "up":
            out.append([0, 0])
        if not out:
            out.append([0, 0])
        out[-1][0 if direction == "up" else 1] += size
        last = direction
    return [(up, down) for up, down in out]


def kind_of(record: RequestRecord) -> str:
    path = record.path.split("?")[0]
    if path.endswith("/manifest"):
        return "poll" if record.status == 304 else "manifest"
    return path.rsplit("/", 1)[-1]  # heartbeat, playlogs


@dataclass
class Exchange:
    kind: str
    records: int
    up: int
    down: int
    first_on_connection: bool

    @property
    def total(self) -> int:
        return self.up + self.down


def http_exchanges(run: Run) -> tuple[list[Exchange], list[tuple[Flow, list[RequestRecord]]]]:
    """Every request with its bytes (the last rounds of its connection, in order), and each connection's requests."""
    exchanges, connections = [], []
    for flow in run.http:
        closed = flow.closed_at or math.inf
        mine = sorted((r for r in run.requests if r.peer_port == flow.upstream_port and flow.opened_at <= r.at <= closed),
                      key=lambda r: r.at)
        connections.append((flow, mine))
        trips = rounds(flow)
        if not mine or len(trips) < len(mine):
            continue
        for index, (record, (up, down)) in enumerate(zip(mine, trips[-len(mine):], strict=True)):
            exchanges.append(Exchange(kind_of(record), record.records, up, down, index == 0))
    return exchanges, connections


def packets(flow: Flow) -> int:
    """TCP segments of a connection on a 1500-byte link: the kernel's count on loopback, plus the
    segments a 1448-byte MSS splits each large read into (loopback carries 64 KiB at once)."""
    return flow.segments + sum(max(0, math.ceil(size / 1448) - 1) for _, _, size in flow.events)


def steady_costs(run: Run) -> dict[str, Any]:
    """On a connection already open (not its first request): median bytes of a poll and a heartbeat,
    and a playlog batch as fixed + per-record bytes (least squares over the batches seen); and the
    TCP/IP packets an exchange takes, from the run's connections."""
    exchanges, connections = http_exchanges(run)
    steady = [e for e in exchanges if not e.first_on_connection]
    costs: dict[str, Any] = {}
    for kind in ("poll", "heartbeat"):
        sizes = [e.total for e in steady if e.kind == kind]
        if sizes:
            costs[kind] = {"bytes": round(statistics.median(sizes)), "up": round(statistics.median(
                [e.up for e in steady if e.kind == kind])), "samples": len(sizes)}
    batches = [(e.records, e.total) for e in steady if e.kind == "playlogs" and e.records]
    if len({n for n, _ in batches}) >= 2:
        slope, intercept = statistics.linear_regression([n for n, _ in batches], [b for _, b in batches])
        costs["playlogs"] = {"fixed_bytes": round(intercept), "bytes_per_record": round(slope, 1),
                             "samples": len(batches), "records_seen": [min(n for n, _ in batches), max(n for n, _ in batches)]}
    requests = sum(len(mine) for _, mine in connections)
    costs["packets_per_exchange"] = round(sum(packets(flow) for flow, _ in connections) / max(1, requests), 1)
    return costs


def batch_bytes(costs: dict[str, Any], records: float) -> float:
    return float(costs["playlogs"]["fixed_bytes"] + costs["playlogs"]["bytes_per_record"] * records)


def exchange_cost(costs: dict[str, Any], exchange: Exchange) -> float:
    if exchange.kind == "playlogs":
        return batch_bytes(costs, exchange.records)
    return float(costs[exchange.kind]["bytes"]) if exchange.kind in costs else float(exchange.total)


def open_costs(run: Run, costs: dict[str, Any]) -> dict[str, Any]:
    """What opening a connection adds (TCP: packets, no payload; TLS: the handshake and the session
    tickets): each connection's bytes less what its requests cost on an open connection."""
    _, connections = http_exchanges(run)
    found: dict[str, list[tuple[float, float]]] = {"full": [], "resumed": []}
    for flow, mine in connections:
        if not mine or flow.closed_by == "proxy stopped" or any(kind_of(r) == "manifest" for r in mine):
            continue
        trips = rounds(flow)[-len(mine):]
        extra = flow.total - sum(exchange_cost(costs, Exchange(kind_of(r), r.records, up, down, False))
                                 for r, (up, down) in zip(mine, trips, strict=False))
        extra_packets = packets(flow) - costs["packets_per_exchange"] * len(mine)
        found["resumed" if mine[0].tls_resumed else "full"].append((extra, extra_packets))
    return {kind: {"bytes": round(statistics.median(v[0] for v in values)),
                   "packets": round(statistics.median(v[1] for v in values), 1), "samples": len(values)}
            if values else None for kind, values in found.items()}


def mqtt_costs(run: Run) -> dict[str, Any]:
    """The MQTT connection: connect (TLS, CONNECT, SUBSCRIBE) up to the first status publish; then
    each status publish (heartbeat as retained status, with its PUBACK) and each keep-alive."""
    flow = run.mqtt[0]
    trips = rounds(flow, until=run.stopped_at)
    # The first status publish: a large message up answered by a PUBACK (the handshake's and the
    # CONNECT's answers are large: certificate, session tickets).
    first_publish = next(i for i, (up, down) in enumerate(trips) if up > 300 and down < 60)
    pings = [up + down for up, down in trips[first_publish:] if up < 60 and down < 60]
    publishes = [up + down for up, down in trips[first_publish:] if up >= 300]
    return {"connect": {"bytes": sum(up + down for up, down in trips[:first_publish])},
            "status_publish": {"bytes": round(statistics.median(publishes)), "samples": len(publishes)},
            "keepalive": {"bytes": round(statistics.median(pings)) if pings else 0, "samples": len(pings)},
            "packets_per_exchange": round(packets(flow) / max(1, len(trips)), 1)}


def meter_vs_proxy(run: Run) -> dict[str, Any]:
    http_meter = sum(sum(run.meter.get(k, [0, 0])) for k in ("manifest", "media", "reports"))
    mqtt_meter = sum(run.meter.get("mqtt", [0, 0]))
    http_proxy = sum(f.total for f in run.http)
    mqtt_proxy = sum(f.total for f in run.mqtt)
    return {"meter_by_kind": {k: sum(v) for k, v in sorted(run.meter.items())},
            "http": {"proxy": http_proxy, "meter": http_meter, "difference": http_meter - http_proxy},
            "mqtt": {"proxy": mqtt_proxy, "meter": mqtt_meter, "difference": mqtt_meter - mqtt_proxy}}


# --- a month ---------------------------------------------------------------------------------------


def simulate_month(config: Config, *, http_heartbeats: bool, rng: random.Random) -> dict[str, float]:
    """Counts of each exchange in a month, from the agent's own timers: the source polls every poll
    interval (±10 %); the reporter's `ReportTimer` decides when heartbeats and uploads go (records
    go with heartbeats; rounds ride on polls). The server closes the HTTP connection when idle
    `IDLE_CLOSE_S`; a new one resumes where a ticket from the last handshake is at most `TICKET_S` old.
    With MQTT carrying heartbeats, one a day still goes over HTTP (the reporter's policy)."""
    poll_s = config.source.poll_interval_s
    timer = ReportTimer(config.report.heartbeat_interval_s, config.report.upload_interval_s, rng, 0.0)
    counts = {"poll": 0.0, "heartbeat": 0.0, "batches": 0.0, "records": 0.0, "open_full": 0.0, "open_resumed": 0.0}
    last_activity = last_open = last_http_beat = -math.inf
    next_poll, last_upload, now = rng.uniform(0, 10), 0.0, 0.0

    def exchange(kind: str) -> None:
        nonlocal last_activity, last_open
        if now - last_activity > IDLE_CLOSE_S:
            counts["open_resumed" if now - last_open <= TICKET_S else "open_full"] += 1
            last_open = now
        last_activity = now
        counts[kind] += 1

    while now < MONTH_S:
        wake = timer.wake_at(now)
        polled = next_poll <= wake
        now = next_poll if polled else wake
        if polled:
            exchange("poll")
            next_poll = now + jittered(rng, poll_s)
        heartbeat, upload = timer.due(now, polled, next_poll - now)
        if heartbeat:
            if http_heartbeats or now - last_http_beat >= HTTP_HEARTBEAT_EVERY_S:
                exchange("heartbeat")
                last_http_beat = now
            timer.heartbeat_sent(now, jittered(rng, config.report.heartbeat_interval_s))
        if upload:
            exchange("batches")
            counts["records"] += (now - last_upload) / ITEM_S
            last_upload = now
            timer.uploaded(now, jittered(rng, config.report.upload_interval_s))
    return counts


def month(config: Config, costs: dict[str, Any], opens: dict[str, Any], mqtt: dict[str, Any] | None) -> dict[str, Any]:
    """A month of `config`: counts from `simulate_month` × the measured bytes, by kind (a new
    connection's handshake is paid by whichever request opens it: shared out by count)."""
    counts = simulate_month(config, http_heartbeats=mqtt is None, rng=random.Random(14))
    full, resumed = opens["full"], opens["resumed"] or opens["full"]
    by_kind = {"manifest": counts["poll"] * costs["poll"]["bytes"],
               "reports": counts["heartbeat"] * costs["heartbeat"]["bytes"] + batch_bytes(costs, 0) * counts["batches"]
               + costs["playlogs"]["bytes_per_record"] * counts["records"]}
    exchanges = counts["poll"] + counts["heartbeat"] + counts["batches"]
    handshakes = counts["open_full"] * full["bytes"] + counts["open_resumed"] * resumed["bytes"]
    by_kind["manifest"] += handshakes * counts["poll"] / max(1.0, exchanges)
    by_kind["reports"] += handshakes * (1 - counts["poll"] / max(1.0, exchanges))
    packet_count = (exchanges * costs["packets_per_exchange"] + counts["open_full"] * full["packets"]
                    + counts["open_resumed"] * resumed["packets"])
    extra: dict[str, float] = {}
    if mqtt is not None:
        beats = MONTH_S / config.report.heartbeat_interval_s
        # paho pings when nothing went either way for keepalive_s: between two status publishes.
        pings = beats * max(0, math.ceil(config.report.heartbeat_interval_s / config.mqtt.keepalive_s) - 1)
        extra = {"status_publishes": beats, "keepalives": pings, "mqtt_connects": MQTT_CONNECTS_A_DAY * 30}
        by_kind["mqtt"] = (beats * mqtt["status_publish"]["bytes"] + pings * mqtt["keepalive"]["bytes"]
                           + extra["mqtt_connects"] * mqtt["connect"]["bytes"])
        packet_count += (beats + pings) * mqtt["packets_per_exchange"]
    total = sum(by_kind.values())
    return {"settings": {"source.poll_interval_s": config.source.poll_interval_s,
                         "report.heartbeat_interval_s": config.report.heartbeat_interval_s,
                         "report.upload_interval_s": config.report.upload_interval_s,
                         **({"mqtt.keepalive_s": config.mqtt.keepalive_s} if mqtt is not None else {})},
            "per_month": {k: round(v) for k, v in (counts | extra).items()},
            "kb_a_day_by_kind": {k: round(v / 30 / 1e3, 1) for k, v in by_kind.items()},
            "mb_by_kind": {k: round(v / 1e6, 1) for k, v in by_kind.items()},
            "mb_total": round(total / 1e6, 1),
            "mb_total_with_tcp_ip_headers": round((total + packet_count * TCP_IP_HEADER) / 1e6, 1)}


def with_intervals(poll: int, heartbeat: int, upload: int) -> Config:
    config = Config()
    return dataclasses.replace(config, source=dataclasses.replace(config.source, poll_interval_s=poll),
                               report=dataclasses.replace(config.report, heartbeat_interval_s=heartbeat,
                                                          upload_interval_s=upload))


def main() -> None:
    parser = argparse.ArgumentParser(description="card writes per record; SIM bytes a month at the defaults")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each of the four runs")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        work = Path(tmp)
        results["card_writes"] = writes_per_record(work)
        pki = make_pki(work)
        # Compressed: a record every 0.25 s, so batches of realistic sizes come every few seconds;
        # "closed" runs: the proxy closes a connection idle for 0.5 s, so every exchange opens one.
        fast = {"poll_interval_s": 10, "heartbeat_interval_s": 10, "upload_interval_s": 4}
        runs = {
            "kept-alive": run_agent("kept-alive", work, pki, seconds=args.seconds, idle_close_s=None, with_mqtt=False,
                                    report=dict(fast), item_s=0.25),
            "closed-resumed": run_agent("closed-resumed", work, pki, seconds=args.seconds, idle_close_s=0.5,
                                        with_mqtt=False, report=dict(fast), item_s=0.25),
            "closed-full": run_agent("closed-full", work, pki, seconds=args.seconds, idle_close_s=0.5, with_mqtt=False,
                                     report=dict(fast), item_s=0.25, resuming_server=False),
            "with-mqtt": run_agent("with-mqtt", work, pki, seconds=args.seconds, idle_close_s=None, with_mqtt=True,
                                   report=dict(fast), item_s=0.25),
        }
    costs = steady_costs(runs["kept-alive"])
    opens = {"full": open_costs(runs["closed-full"], costs)["full"],
             "resumed": open_costs(runs["closed-resumed"], costs)["resumed"]}
    mqtt = mqtt_costs(runs["with-mqtt"])
    results["bytes_per_exchange_tls"] = {"on_an_open_connection": costs, "opening_a_connection": opens, "mqtt": mqtt}
    results["meter_vs_proxy"] = {name: meter_vs_proxy(run) for name, run in runs.items()}
    results["month_at_defaults"] = month(Config(), costs, opens, None)
    results["month_at_defaults_with_mqtt"] = month(Config(), costs, opens, mqtt)
    results["month_other_intervals_mb"] = {
        f"poll {poll} s, heartbeat {heartbeat} s, upload {upload} s": month(
            with_intervals(poll, heartbeat, upload), costs, opens, None)["mb_total"]
        for poll, heartbeat, upload in ((300, 60, 30), (300, 300, 300), (270, 270, 270), (300, 600, 600), (600, 600, 600))}
    # With a broker, keep-alives between two status publishes dominate the TCP/IP headers.
    results["month_with_mqtt_by_keepalive_mb_with_tcp_ip_headers"] = {
        f"mqtt.keepalive_s {keepalive}": month(dataclasses.replace(Config(), mqtt=dataclasses.replace(
            Config().mqtt, keepalive_s=keepalive)), costs, opens, mqtt)["mb_total_with_tcp_ip_headers"]
        for keepalive in (60, 120, 300, 600)}
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

"""Sync benchmark: HTTP bytes on the wire per content byte. Run on demand; prints figures.

    python bench/bench_sync.py

The agent's HTTP source syncs from the reference source on loopback; the server counts every byte
of HTTP it receives and sends (request and status lines, headers, bodies). TCP/IP and TLS framing
are not counted: add about 40 bytes per TCP segment and a TLS handshake per new connection on a
real link (the agent keeps its connection alive between requests).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402

from agent import schedule  # noqa: E402
from agent.cache.store import MediaStore  # noqa: E402
from agent.content import Content  # noqa: E402
from agent.envelope import MANIFEST_PAYLOAD_TYPE, load_trusted_keys, sign_envelope  # noqa: E402
from agent.health import Problems  # noqa: E402
from agent.sync.client import HttpClient  # noqa: E402
from agent.sync.http import HttpSettings, HttpSource  # noqa: E402
from refsource.server import Faults, ReferenceServer, SourceState  # noqa: E402

BASE = "/api/bangtin/v1"
DEVICE = "bench-board"
SIZES = (1_500_000, 400_000, 60_000)  # a poster, a photo, a logo


class Later:
    """A monotonic clock the benchmark can move on, so a back-off passes without waiting for it."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


def make_board(work: Path, server: ReferenceServer, public_b64: str, mono: Later) -> HttpSource:
    problems = Problems()
    store = MediaStore(work / "media")
    store.open()
    content = Content(work, store, problems, keys=load_trusted_keys([public_b64]), device_id=DEVICE, groups=())
    content.restore()
    settings = HttpSettings(base_url=server.base_url, device_id=DEVICE, token="bench-token", ca_file=None,
                            poll_interval_s=300, cache_limit_bytes=1 << 30, user_agent="bangtin-agent/bench")
    client = HttpClient(settings.client_settings())
    return HttpSource(settings, content, store, problems, threading.Event(), lambda: None,
                      lambda m: schedule.media_in_order_of_need(m, dt.datetime.now(dt.UTC), None), client,
                      rng=random.Random(1), mono=mono)


def publish(server: ReferenceServer, key: Ed25519PrivateKey, site: Path, serial: int) -> int:
    media, files = [], {}
    for index, size in enumerate(SIZES):
        path = site / f"media-{serial}-{index}.jpg"
        path.write_bytes(random.Random(serial * 10 + index).randbytes(size))
        files[f"{BASE}/media/{path.name}"] = path
        media.append({"id": f"m{index}", "url": f"{BASE}/media/{path.name}",
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": size, "type": "image/jpeg"})
    manifest = {"schema": "bangtin.manifest/1", "serial": serial, "issued_at": "2026-11-26T08:00:00+07:00",
                "audience": [DEVICE],
                "layout": {"header": {"title": "ỦY BAN NHÂN DÂN XÃ VĨNH THUẬN"}}, "media": media,
                "items": [{"id": f"i{n}", "type": "image", "media": f"m{n}", "duration_s": 10} for n in range(len(SIZES))]}
    payload = json.dumps(manifest, ensure_ascii=False).encode()
    body = json.dumps(sign_envelope(payload, MANIFEST_PAYLOAD_TYPE, key)).encode()
    server.publish(DEVICE, body, files)
    return len(body) + sum(SIZES)


def ratio(server: ReferenceServer, content_bytes: int) -> dict[str, Any]:
    wire = server.state.wire
    return {"content_bytes": content_bytes, "wire_bytes_down": wire.sent, "wire_bytes_up": wire.received,
            "down_per_content_byte": round(wire.sent / content_bytes, 4)}


def main() -> None:
    key = Ed25519PrivateKey.generate()
    public_b64 = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "site").mkdir()
        server = ReferenceServer(("127.0.0.1", 0), SourceState(base_path=BASE, token="bench-token")).start()
        try:
            content_bytes = publish(server, key, work / "site", 1)
            board = make_board(work / "board-a", server, public_b64, Later())
            board.sync_once()
            results["first_sync"] = ratio(server, content_bytes)

            server.state.wire.reset()
            board.sync_once()
            results["unchanged_poll"] = {"wire_bytes_down": server.state.wire.sent, "wire_bytes_up": server.state.wire.received,
                                         "per_day_at_300_s": (server.state.wire.sent + server.state.wire.received) * 288}

            server.state.wire.reset()
            later = Later()
            cut_board = make_board(work / "board-b", server, public_b64, later)
            server.state.faults = Faults(cut_media_after_bytes=SIZES[0] // 2, cut_times=1)
            cut_board.sync_once()  # the cut: that media waits for its host's back-off, then resumes
            later.skipped += 3600
            cut_board.sync_once()
            results["first_sync_cut_at_50_percent_of_the_largest_file"] = ratio(server, content_bytes)
        finally:
            server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

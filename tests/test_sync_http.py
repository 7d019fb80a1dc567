"""The HTTP source against the reference source on loopback: polls, resume, faults, switching, cache."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import schedule
from agent.cache.store import MediaStore
from agent.content import Content
from agent.downloads import DownloadRules
from agent.envelope import load_trusted_keys
from agent.health import Problems
from agent.manifest import accept_manifest
from agent.sync.client import Backoff, HttpClient, SourceError, parse_retry_after
from agent.sync.http import SCREEN_TURN_RETRY_S, HttpSettings, HttpSource
from refsource.server import Faults, ReferenceServer, SourceState, strong_etag
from tests.conftest import VECTORS, base_manifest, sign_manifest, wait_for

DEVICE = "vinhthuan-ubnd-01"
BASE = "/api/bangtin/v1"


def media_file(tmp_path: Path, name: str, size: int, seed: int = 1) -> Path:
    path = tmp_path / "site" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def publish(server: ReferenceServer, key: Ed25519PrivateKey, serial: int, files: dict[str, Path],
            raw: bytes | None = None, **changes: Any) -> dict[str, Any]:
    """Serve a manifest with one image item per file, media root-relative under the API."""
    media = []
    for media_id, path in files.items():
        data = path.read_bytes()
        media.append({"id": media_id, "url": f"{BASE}/media/{path.name}", "sha256": hashlib.sha256(data).hexdigest(),
                      "size": len(data), "type": "image/png"})
    manifest = base_manifest(serial, media=media, items=[
        {"id": f"i-{m['id']}", "type": "image", "media": m["id"], "duration_s": 10} for m in media], **changes)
    server.publish(DEVICE, raw if raw is not None else sign_manifest(manifest, key),
                   {f"{BASE}/media/{p.name}": p for p in files.values()})
    return manifest


class Board:
    """HttpSource wired to a real Content and store, as main.py does (no display, no thread unless started)."""

    def __init__(self, tmp_path: Path, server: ReferenceServer, keys: list[str], *, token: str | None = "tok-123",
                 cache_limit: int = 1 << 30, read_timeout: float = 5.0, base_url: str | None = None,
                 ca_file: str | None = None, downloads: DownloadRules | None = None,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.problems = Problems()
        self.store = MediaStore(tmp_path / "state" / "media")
        self.store.open()
        self.content = Content(tmp_path / "state", self.store, self.problems, keys=load_trusted_keys(keys),
                               device_id=DEVICE, groups=["angiang"])
        restored = self.content.restore()
        if restored is not None:  # as the agent does before its first sync (wiring.restore)
            self.content.verify_cached(restored.media)
        self.stop = threading.Event()
        self.offsets: list[float] = []
        self.on_screen: set[str] = set()
        self.settings = HttpSettings(base_url=base_url or server.base_url, device_id=DEVICE, token=token, ca_file=ca_file,
                                     poll_interval_s=30, cache_limit_bytes=cache_limit, user_agent="bangtin-agent/test",
                                     read_timeout_s=read_timeout)
        self.client = HttpClient(self.settings.client_settings(), self.offsets.append)
        self.source = HttpSource(self.settings, self.content, self.store, self.problems, self.stop, lambda: None,
                                 lambda m: schedule.media_in_order_of_need(m, dt.datetime.now(dt.UTC), None),
                                 self.client, rng=random.Random(7), on_screen=lambda: self.on_screen,
                                 mono=lambda: time.monotonic() + self.skipped_s, downloads=downloads, now=now)

    skipped_s = 0.0

    def later(self, seconds: float) -> None:
        """Move the source's clock on, as if `seconds` passed (its back-offs expire)."""
        self.skipped_s += seconds

    def serial(self) -> int | None:
        manifest = self.content.current()
        return manifest.serial if manifest else None

    def errors(self) -> str:
        return "\n".join(self.problems.current())


def test_first_sync_then_conditional_polls_even_across_restart(tmp_path, server, private_key, keys) -> None:
    files = {"m1": media_file(tmp_path, "a.png", 50_000)}
    publish(server, private_key, 1, files)
    board = Board(tmp_path, server, keys)
    board.source.sync_once()
    assert board.serial() == 1
    assert board.store.path_for(hashlib.sha256(files["m1"].read_bytes()).hexdigest()) is not None
    first_poll = server.requests_to("/manifest")[0]
    assert first_poll.headers["Authorization"] == "Bearer tok-123"
    assert first_poll.headers["User-Agent"] == "bangtin-agent/test"
    board.source.sync_once()
    second = server.requests_to("/manifest")[-1]
    assert second.status == 304 and second.headers["If-None-Match"].startswith('"')
    restarted = Board(tmp_path, server, keys)  # the ETag is persisted with the accepted manifest
    restarted.source.sync_once()
    assert server.requests_to("/manifest")[-1].status == 304
    assert len(server.requests_to(".png")) == 1  # media fetched once, never again


def test_cut_transfer_resumes_with_range_and_if_range(tmp_path, server, private_key, keys) -> None:
    size = 200_000
    files = {"m1": media_file(tmp_path, "big.png", size)}
    publish(server, private_key, 1, files)
    server.state.faults = Faults(cut_media_after_bytes=size // 2, cut_times=1)
    board = Board(tmp_path, server, keys)
    assert board.source.sync_once().waiting_media == ("m1",)
    assert re.search(r"media m1: .*(will resume|interrupted)", board.errors())
    sha = hashlib.sha256(files["m1"].read_bytes()).hexdigest()
    assert board.store.partial_size(sha) == size // 2
    assert board.store.path_for(sha) is None  # half a file is never visible
    board.later(60)
    board.source.sync_once()
    media_requests = server.requests_to("big.png")
    assert len(media_requests) == 2
    assert "Range" not in media_requests[0].headers
    assert media_requests[1].headers["Range"] == f"bytes={size // 2}-"
    assert media_requests[1].headers["If-Range"] == strong_etag(files["m1"].read_bytes())  # the first answer's ETag
    assert media_requests[1].status == 206
    assert sum(r.body_bytes_sent for r in media_requests) == size  # not one byte fetched twice
    assert board.store.path_for(sha) is not None


def test_changed_file_behind_a_partial_restarts_from_zero(tmp_path, server, private_key, keys) -> None:
    files = {"m1": media_file(tmp_path, "c.png", 100_000)}
    publish(server, private_key, 1, files)
    board = Board(tmp_path, server, keys)
    sha = hashlib.sha256(files["m1"].read_bytes()).hexdigest()
    board.store.partial_path(sha).write_bytes(b"x" * 1000)  # bytes from some other version of the file
    board.store.set_partial_validator(sha, '"stale-etag"')
    board.source.sync_once()
    request = server.requests_to("c.png")[-1]
    assert request.headers["If-Range"] == '"stale-etag"' and request.status == 200  # If-Range failed: whole file
    assert board.store.path_for(sha) is not None


def test_wrong_or_oversized_bytes_are_never_shown(tmp_path, server, private_key, keys) -> None:
    files = {"m1": media_file(tmp_path, "w.png", 30_000)}
    publish(server, private_key, 1, files)
    server.state.faults = Faults(wrong_media_bytes=True)
    board = Board(tmp_path, server, keys)
    board.source.sync_once()  # wrong bytes are a permanent failure of that media, not of the round
    sha = hashlib.sha256(files["m1"].read_bytes()).hexdigest()
    assert board.store.path_for(sha) is None and "does not match the manifest's" in board.errors()
    assert not any((board.store.root / "partial").iterdir())
    other = {"m2": media_file(tmp_path, "x.png", 30_000, seed=2)}
    publish(server, private_key, 2, other)
    server.state.faults = Faults(extra_media_bytes=5000)
    board.source.sync_once()
    assert "more than the declared 30000 bytes" in board.errors()
    assert server.requests_to("x.png")[-1].body_bytes_sent == 35_000  # the server tried; the board cut it
    assert board.store.path_for(hashlib.sha256(other["m2"].read_bytes()).hexdigest()) is None


def test_rejected_manifests_keep_the_old_one_and_say_why(tmp_path, server, private_key, keys) -> None:
    publish(server, private_key, 42, {"m1": media_file(tmp_path, "a.png", 1000)})
    board = Board(tmp_path, server, keys)
    board.source.sync_once()
    assert board.serial() == 42
    server.publish(DEVICE, (VECTORS / "manifest.tampered.json").read_bytes())
    board.source.sync_once()
    assert "signature not valid for any trusted key" in board.errors() and board.serial() == 42
    publish(server, private_key, 41, {"m1": media_file(tmp_path, "a.png", 1000)})
    board.source.sync_once()
    assert "serial 41 is lower than the accepted 42" in board.errors() and board.serial() == 42
    publish(server, private_key, 43, {"m1": media_file(tmp_path, "a.png", 1000)}, audience=["someone-else"])
    board.source.sync_once()
    assert "names neither this board" in board.errors() and board.serial() == 42


def test_new_manifest_switches_only_when_its_media_are_in(tmp_path, server, private_key, keys) -> None:
    publish(server, private_key, 1, {"m1": media_file(tmp_path, "one.png", 1000)})
    board = Board(tmp_path, server, keys)
    board.source.sync_once()
    size = 120_000
    publish(server, private_key, 2, {"m2": media_file(tmp_path, "two.png", size, seed=9)})
    server.state.faults = Faults(cut_media_after_bytes=size // 3, cut_times=1)
    assert board.source.sync_once().waiting_media == ("m2",)
    assert board.serial() == 1  # the old content plays on while the new media download
    assert board.source.status()["pending_manifest_serial"] == 2
    board.later(60)  # the media host's back-off has passed
    board.source.sync_once()
    assert board.serial() == 2 and board.source.status()["pending_manifest_serial"] is None
    assert server.requests_to("/manifest")[-1].headers["If-None-Match"]  # the pending one's ETag: a 304


def test_retry_after_is_honoured_and_backoff_is_capped(tmp_path, server, private_key, keys) -> None:
    publish(server, private_key, 1, {"m1": media_file(tmp_path, "a.png", 1000)})
    server.state.faults = Faults(unavailable_times=1, retry_after_s=2, apply_to="manifest")
    board = Board(tmp_path, server, keys)
    board.source.start()
    try:
        wait_for(lambda: board.serial() == 1, timeout=20, what="sync after the 503")
    finally:
        board.stop.set()
        board.source.join(5)
    polls = server.requests_to("/manifest")
    assert polls[0].status == 503 and polls[1].status == 200
    assert polls[1].at - polls[0].at >= 2.0  # not before the server's Retry-After
    backoff = Backoff(random.Random(3))
    delays = [backoff.next_delay() for _ in range(12)]
    assert delays[0] <= 10 and max(delays) <= 15 * 60 and delays[-1] >= 7.5 * 60
    assert Backoff(random.Random(3)).next_delay(retry_after=300) >= 300
    assert Backoff(random.Random(3)).next_delay(retry_after=86400) <= 3600  # §2: a day's Retry-After is an hour
    assert parse_retry_after("120", 0) == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == 10


def test_a_stalled_server_does_not_hang_the_board(tmp_path, server, private_key, keys) -> None:
    publish(server, private_key, 1, {"m1": media_file(tmp_path, "a.png", 1000)})
    server.state.faults = Faults(stall_s=4, stall_times=1, apply_to="manifest")
    board = Board(tmp_path, server, keys, read_timeout=1.0)
    with pytest.raises(SourceError, match=r"timed out|cannot reach"):  # a 1 s read timeout, not the 4 s stall
        board.source.sync_once()
    board.source.sync_once()
    assert board.serial() == 1


def test_clock_offset_from_the_date_header(tmp_path, server, private_key, keys) -> None:
    publish(server, private_key, 1, {"m1": media_file(tmp_path, "a.png", 1000)})
    server.state.faults = Faults(date_offset_s=3600)
    board = Board(tmp_path, server, keys)
    board.source.sync_once()
    assert board.offsets and all(abs(offset - 3600) < 3 for offset in board.offsets)


def test_token_goes_only_to_the_source_not_to_other_media_hosts(tmp_path, server, private_key, keys) -> None:
    cdn = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/cdn")).start()
    try:
        path = media_file(tmp_path, "cdn.png", 5000)
        data = path.read_bytes()
        cdn.publish("unused", b"{}", {"/cdn/cdn.png": path})
        manifest = base_manifest(1, media=[{"id": "m1", "url": f"http://127.0.0.1:{cdn.server_address[1]}/cdn/cdn.png",
                                            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                            "type": "image/png"}],
                                 items=[{"id": "i1", "type": "image", "media": "m1", "duration_s": 5}])
        server.publish(DEVICE, sign_manifest(manifest, private_key))
        board = Board(tmp_path, server, keys)
        board.source.sync_once()
        assert board.store.path_for(hashlib.sha256(data).hexdigest()) is not None
        assert "Authorization" not in cdn.requests_to("cdn.png")[0].headers
    finally:
        cdn.stop()


def test_cache_limit_evicts_old_media_never_the_current_manifests(tmp_path, server, private_key, keys) -> None:
    one = media_file(tmp_path, "one.png", 400_000, seed=1)
    two = media_file(tmp_path, "two.png", 400_000, seed=2)
    board = Board(tmp_path, server, keys, cache_limit=1_000_000)
    publish(server, private_key, 1, {"m1": one})
    board.source.sync_once()
    publish(server, private_key, 2, {"m2": two})
    board.source.sync_once()
    three = media_file(tmp_path, "three.png", 400_000, seed=3)
    publish(server, private_key, 3, {"m2": two, "m3": three})
    board.source.sync_once()
    sha = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in (("1", one), ("2", two), ("3", three))}
    assert board.serial() == 3
    assert board.store.path_for(sha["2"]) and board.store.path_for(sha["3"])
    assert not (board.store.root / sha["1"]).exists()  # the one no manifest needs went
    assert board.store.bytes_used() <= 1_000_000
    four = media_file(tmp_path, "four.png", 900_000, seed=4)
    publish(server, private_key, 4, {"m2": two, "m4": four})
    board.source.sync_once()  # the new manifest alone does not fit: refused, reported, old plays on
    assert "900000 bytes do not fit in storage.cache_max_mb" in board.errors()
    assert board.store.path_for(sha["2"]) and board.store.path_for(sha["3"])


def test_a_new_manifest_that_does_not_fit_beside_the_old_one_replaces_it_and_arrives_whole(
        tmp_path, server, private_key, keys) -> None:
    """Turnover: the old manifest's media go (never the one on screen), the rest is fetched, and in the
    end every new item is playable, without waiting for another manifest."""
    files = {name: media_file(tmp_path, f"{name}.png", 400_000, seed=n) for n, name in enumerate("abcd")}
    sha = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}
    board = Board(tmp_path, server, keys, cache_limit=1_000_000)
    publish(server, private_key, 1, {"ma": files["a"], "mb": files["b"]})
    board.source.sync_once()
    assert board.serial() == 1
    board.on_screen = {sha["a"]}  # item a is on screen
    publish(server, private_key, 2, {"mc": files["c"], "md": files["d"]})
    board.source.sync_once()
    assert not (board.store.root / sha["b"]).exists()  # evicted to make room: not needed, not on screen
    assert board.store.path_for(sha["a"]) is not None  # the picture on screen stays
    assert board.serial() == 2 and board.store.path_for(sha["c"]) is not None
    # d waits for "a" to leave the screen: said so, not reported as a cache too small for the manifest.
    assert board.store.path_for(sha["d"]) is None and "waits for the media on screen" in board.errors()
    assert "do not fit" not in board.errors()
    outcome = board.source.sync_once()  # while "a" is still on screen, d keeps waiting, and says when to look again
    assert board.store.path_for(sha["d"]) is None
    assert outcome.retry_media_in_s is not None and outcome.retry_media_in_s <= SCREEN_TURN_RETRY_S
    board.on_screen = {sha["c"]}  # the switch took "a" off the screen; "c" shows
    board.later(SCREEN_TURN_RETRY_S)  # seconds, not the minutes of a failed download's back-off
    board.source.sync_once()
    assert board.store.path_for(sha["c"]) and board.store.path_for(sha["d"])
    assert not (board.store.root / sha["a"]).exists() and board.store.bytes_used() <= 1_000_000
    assert "waits for the media on screen" not in board.errors()


def test_partial_downloads_no_manifest_needs_are_removed_and_a_needed_one_stays(
        tmp_path, server, private_key, keys) -> None:
    """A power cut mid-download, then a manifest without that file: its partial must not stay on the
    card for ever (the system test found 24 after 20 power cuts). A needed partial stays to resume
    (test_cut_transfer_resumes_with_range_and_if_range resumes one across this pruning)."""
    wanted = media_file(tmp_path, "wanted.png", 300_000, seed=5)
    wanted_sha = hashlib.sha256(wanted.read_bytes()).hexdigest()
    board = Board(tmp_path, server, keys)
    stale = "ab" * 32
    with board.store.open_partial(stale, append=False) as out:  # a download the new manifest dropped
        out.write(b"x" * 50_000)
    board.store.set_partial_validator(stale, '"old"')
    (board.store.partial_dir / f"{'cd' * 32}.part").write_bytes(b"y" * 1000)  # an interrupted local copy
    publish(server, private_key, 1, {"m1": wanted})
    server.state.faults = Faults(cut_media_after_bytes=100_000, cut_times=1)
    board.source.sync_once()
    assert sorted(p.name for p in board.store.partial_dir.iterdir()) == [f"{wanted_sha}.download", f"{wanted_sha}.validator"]
    assert board.store.partial_size(wanted_sha) == 100_000


def test_eviction_takes_the_least_recently_shown_first(tmp_path) -> None:
    store = MediaStore(tmp_path / "media")
    store.open()
    shas = []
    for n in range(3):
        data = random.Random(n).randbytes(100_000)
        shas.append(hashlib.sha256(data).hexdigest())
        store.import_stream(io.BytesIO(data), shas[-1], len(data), f"m{n}")
    now = time.time()
    store.touch(shas[0], now - 10)  # downloaded first, shown last: it is kept
    store.touch(shas[1], now - 300)
    store.touch(shas[2], now - 200)
    assert store.make_room(100_000, 300_000, keep=set())
    assert store.path_for(shas[1]) is None and store.path_for(shas[0]) and store.path_for(shas[2])
    again = MediaStore(tmp_path / "media")  # the order survives a restart (the mtimes)
    again.open()
    assert again.make_room(100_000, 200_000, keep=set())
    assert not (tmp_path / "media" / shas[2]).exists() and (tmp_path / "media" / shas[0]).exists()


def test_unreachable_source_is_reported_and_content_stays(tmp_path, server, private_key, keys) -> None:
    publish(server, private_key, 1, {"m1": media_file(tmp_path, "a.png", 1000)})
    Board(tmp_path, server, keys).source.sync_once()
    offline = Board(tmp_path, server, keys, base_url="http://127.0.0.1:9/api")  # discard port: refused
    assert offline.serial() == 1  # restored from storage before any network
    with pytest.raises(SourceError, match=r"connection refused|cannot reach"):
        offline.source.sync_once()
    assert offline.serial() == 1


def test_media_order_puts_the_next_item_first() -> None:
    manifest = accept_manifest(json.dumps(base_manifest(1, media=[
        {"id": f"m{n}", "url": f"m{n}.png", "sha256": str(n) * 64, "size": 1, "type": "image/png"} for n in range(1, 6)],
        items=[{"id": f"i{n}", "type": "image", "media": f"m{n}", "duration_s": 5} for n in range(1, 5)]
        + [{"id": "late", "type": "image", "media": "m5", "duration_s": 5, "when": {"from": "2099-01-01T00:00:00Z"}}],
        layout={"header": {"title": "X", "logo": "m4"}})).encode(), keys=(), device_id="b", groups=(), last_serial=None)
    order = [m.id for m in schedule.media_in_order_of_need(manifest, dt.datetime(2026, 11, 26, tzinfo=dt.UTC), "i2")]
    assert order == ["m4", "m3", "m1", "m2", "m5"]  # logo, then i3 (after the current i2), i4's m4 (dup), i1, i2, late


def test_agent_process_syncs_over_http_and_boots_offline_from_its_cache(
        tmp_path, server, private_key, public_key_b64, agent_factory) -> None:
    """`bangtin-agent run` with an http:// source; then a boot with no DNS plays the cache within seconds."""
    import yaml

    from tests.conftest import RunningAgent, write_config, write_png

    png = write_png(tmp_path / "site" / "poster.png", (160, 90), (220, 20, 20))
    publish(server, private_key, 5, {"m1": png})
    config_path = write_config(tmp_path / "agent.yaml", tmp_path / "unused", tmp_path / "state", [public_key_b64])
    config = yaml.safe_load(config_path.read_text())
    config["source"] = {"url": server.base_url, "token": "tok-123", "poll_interval_s": 10}
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    agent: RunningAgent = agent_factory(config_path).start()
    wait_for(lambda: agent.status()["current_item"] == "i-m1", timeout=20, what="the synced item on screen")
    status = agent.status()
    assert status["manifest_serial"] == 5 and status["errors"] == []
    assert status["last_sync_ok_at"] is not None and abs(status["clock_offset_s"]) < 5
    assert agent.stop() == 0

    config["source"]["url"] = "http://bangtin-source.invalid/api"  # no DNS answer, as on a board with no link
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    started = time.monotonic()
    offline = agent_factory(config_path).start()
    wait_for(lambda: offline.status()["current_item"] == "i-m1", timeout=10, what="cached content with no network")
    assert time.monotonic() - started < 10
    wait_for(lambda: any("cannot reach" in e for e in offline.status()["errors"]), timeout=15,
             what="the unreachable source reported")
    assert offline.status()["manifest_serial"] == 5
    assert offline.stop() == 0


def make_tls(tmp_path: Path) -> tuple[Any, Path]:
    """A throwaway CA-less self-signed certificate for 127.0.0.1, as a provincial PKI might issue."""
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tttn.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def test_https_verifies_the_certificate_with_the_configured_ca_file(tmp_path, private_key, keys) -> None:
    context, ca_file = make_tls(tmp_path)
    tls_server = ReferenceServer(("127.0.0.1", 0), SourceState(base_path=BASE, token="tok-123"), tls=context).start()
    try:
        publish(tls_server, private_key, 1, {"m1": media_file(tmp_path, "a.png", 2000)})
        untrusting = Board(tmp_path / "a", tls_server, keys)
        with pytest.raises(SourceError, match="TLS verification failed"):
            untrusting.source.sync_once()
        assert untrusting.serial() is None
        trusting = Board(tmp_path / "b", tls_server, keys, ca_file=str(ca_file))
        trusting.source.sync_once()
        assert trusting.serial() == 1
    finally:
        tls_server.stop()


def test_corrupt_cached_media_is_fetched_again_after_a_restart(tmp_path, server, private_key, keys) -> None:
    path = media_file(tmp_path, "a.png", 20_000)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    publish(server, private_key, 1, {"m1": path})
    Board(tmp_path, server, keys).source.sync_once()
    cached = tmp_path / "state" / "media" / sha
    cached.write_bytes(cached.read_bytes()[:-100])  # a torn file (power cut on an old filesystem)
    again = Board(tmp_path, server, keys)  # restore() re-hashes the current manifest's media
    assert again.store.path_for(sha) is None and "was corrupt" in again.errors()
    again.source.sync_once()
    assert again.store.path_for(sha) is not None and cached.read_bytes() == path.read_bytes()
    assert len(server.requests_to("a.png")) == 2


def test_clock_corrects_only_beyond_sixty_seconds() -> None:
    from agent.clock import Clock

    problems: list[str | None] = []
    clock = Clock(synchronised=lambda: False, report=problems.append)
    clock.set_offset(30)
    assert abs(clock.now().timestamp() - time.time()) < 1
    clock.set_offset(-7200)  # a Pi that booted two hours fast, before NTP
    assert abs(clock.now().timestamp() - (time.time() - 7200)) < 1
    assert clock.offset_s == -7200 and problems[-1] is None
    synced = Clock(synchronised=lambda: True, report=problems.append)  # NTP has the clock: it wins (§7)
    synced.set_offset(-7200)
    assert abs(synced.now().timestamp() - time.time()) < 1
    assert problems[-1] is not None and "NTP-synchronised but -7200 s from the source" in problems[-1]


def test_reference_source_cli_and_report_endpoints(tmp_path, keys) -> None:
    """keygen → publish (fills sha256/size, bumps serial, signs) → serve → a board syncs; POSTs are kept."""
    import requests

    from refsource.cli import keygen, load_site
    from refsource.cli import publish as publish_site

    key = keygen(tmp_path / "province.json")
    bulletin = tmp_path / "bulletin"
    (bulletin / "media").mkdir(parents=True)
    poster = media_file(tmp_path, "poster.png", 3000)
    (bulletin / "media" / "poster.png").write_bytes(poster.read_bytes())
    (bulletin / "manifest.json").write_text(json.dumps({
        "issued_at": "2026-11-26T08:00:00+07:00", "media": [{"id": "m1", "url": "media/poster.png"}],
        "items": [{"id": "i1", "type": "image", "media": "m1", "duration_s": 10, "title": "Lịch tiêm chủng"}]}))
    first = publish_site(bulletin, tmp_path / "site", DEVICE, tmp_path / "province.json")
    second = publish_site(bulletin, tmp_path / "site", DEVICE, tmp_path / "province.json")
    assert (first["serial"], second["serial"]) == (1, 2)
    assert second["media"][0]["sha256"] == hashlib.sha256(poster.read_bytes()).hexdigest()
    state = SourceState(base_path=BASE, token="t")
    load_site(tmp_path / "site", state)
    site_server = ReferenceServer(("127.0.0.1", 0), state).start()
    try:
        board = Board(tmp_path / "b", site_server, [key["public_key_b64"]], token="t")
        board.source.sync_once()
        assert board.serial() == 2 and board.store.path_for(second["media"][0]["sha256"]) is not None
        url = f"{site_server.base_url}/devices/{DEVICE}"
        auth = {"Authorization": "Bearer t"}
        record = {"id": "r1", "item": "i1"}
        for _ in range(2):  # a re-sent batch is stored once
            assert requests.post(f"{url}/playlogs", json={"device": DEVICE, "records": [record]}, headers=auth,
                                 timeout=5).status_code == 204
        assert list(state.playlogs) == ["r1"] and state.playlog_batches == 2
        assert requests.post(f"{url}/heartbeat", json={"device": DEVICE}, headers=auth, timeout=5).status_code == 204
        assert requests.post(f"{url}/screenshots", data=b"\x89PNG", headers={**auth, "X-Command-Id": "c1"},
                             timeout=5).status_code == 204
        assert state.heartbeats == [{"device": DEVICE}] and state.screenshots[0][1] == b"\x89PNG"
        assert requests.get(f"{url}/manifest", timeout=5).status_code == 401  # no token, no manifest
    finally:
        site_server.stop()


def test_stop_during_a_stalled_download_does_not_wait_for_the_read_timeout(tmp_path, server, private_key, keys) -> None:
    publish(server, private_key, 1, {"m1": media_file(tmp_path, "slow.png", 50_000)})
    server.state.faults = Faults(stall_s=8, stall_times=1, apply_to="media")
    board = Board(tmp_path, server, keys, read_timeout=30)
    board.source.start()
    wait_for(lambda: server.requests_to("/manifest"), timeout=15, what="the first poll")
    wait_for(lambda: server.state.faults.stall_times == 0, timeout=10, what="the media request to stall")
    board.stop.set()
    board.source.join(2)  # a clean stop gives each thread a few seconds, never a 30 s read timeout
    # Still in its read, and it says so: the agent leaves it behind rather than wait, and logs why.
    assert board.source.is_alive() and board.source.blocked_in_network_io()
    wait_for(lambda: not board.source.is_alive(), timeout=25, what="the thread to end once the stall ends")
    assert board.store.path_for(hashlib.sha256((tmp_path / "site" / "slow.png").read_bytes()).hexdigest()) is None

"""The board's identity (PROTOCOL.md §12): its key, signed POSTs, and the source refusing a clone."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.identity import IDENTITY_FILE, IdentityError, load_or_create
from agent.sync.client import ClientSettings, HttpClient
from refsource.boards import BoardKeys
from refsource.server import ReferenceServer, SourceState
from tests.conftest import ROOT, RunningAgent, wait_for, write_config

DEVICE = "vinhthuan-ubnd-01"
BASE = "/api/bangtin/v1"


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    srv = ReferenceServer(("127.0.0.1", 0), SourceState(base_path=BASE, token="tok")).start()
    yield srv
    srv.stop()


def test_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    storage = tmp_path / "state"
    first = load_or_create(storage)
    path = storage / IDENTITY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create(storage).public_raw == first.public_raw
    assert len(first.fingerprint) == 16 and int(first.fingerprint, 16) >= 0
    header = first.signature_header(b"body")
    keyid, _, signature = header.partition(":")
    assert keyid == first.fingerprint
    Ed25519PublicKey.from_public_bytes(first.public_raw).verify(base64.b64decode(signature), b"body")


def test_a_readable_or_damaged_key_is_refused_never_replaced(tmp_path: Path) -> None:
    storage = tmp_path / "state"
    original = load_or_create(storage).public_raw
    path = storage / IDENTITY_FILE
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="mode 0644: the board's private key must be 0600"):
        load_or_create(storage)
    path.chmod(0o600)
    saved = path.read_bytes()
    path.write_bytes(b"not a key\n")
    with pytest.raises(IdentityError, match="is not a board key"):
        load_or_create(storage)
    assert path.read_bytes() == b"not a key\n"  # left for the technician: a new key is a new board
    path.write_bytes(saved)
    assert load_or_create(storage).public_raw == original


def test_boards_started_together_agree_on_one_key(tmp_path: Path) -> None:
    storage = tmp_path / "state"
    found: list[bytes] = []
    threads = [threading.Thread(target=lambda: found.append(load_or_create(storage).public_raw)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and sorted(os.listdir(storage)) == [IDENTITY_FILE]


def post_heartbeat(server: ReferenceServer, storage: Path, body: dict[str, object]) -> tuple[int, str]:
    identity = load_or_create(storage)
    client = HttpClient(ClientSettings(server.base_url, "tok", None, "bangtin-agent/test"),
                        signer=identity.signature_header)
    try:
        reply = client.post(f"{server.base_url}/devices/{DEVICE}/heartbeat",
                            json.dumps({**body, "board_key": identity.public_b64}).encode(), "application/json", 10)
        return reply.status_code, reply.answer.decode()
    finally:
        client.close()


def test_source_learns_a_board_key_and_refuses_a_clone(server: ReferenceServer, tmp_path: Path) -> None:
    padding = "x" * 4000  # big enough to be gzipped: the signature covers the bytes as sent
    assert post_heartbeat(server, tmp_path / "board", {"device": DEVICE, "note": padding})[0] == 204
    request = server.requests_to("/heartbeat")[-1]
    assert request.headers.get("Content-Encoding") == "gzip"
    assert server.state.board_keys.keys[DEVICE] == load_or_create(tmp_path / "board").public_b64
    status, answer = post_heartbeat(server, tmp_path / "clone", {"device": DEVICE})
    assert status == 409 and "board key conflict for vinhthuan-ubnd-01" in answer
    conflict = server.state.board_keys.conflicts[-1]
    assert conflict["keyid"] == load_or_create(tmp_path / "clone").fingerprint
    assert len(server.state.heartbeats) == 1  # the clone's heartbeat was not taken
    assert post_heartbeat(server, tmp_path / "board", {"device": DEVICE})[0] == 204  # the real one still is


def test_registry_file_is_read_and_kept(tmp_path: Path) -> None:
    board = load_or_create(tmp_path / "board")
    registry = tmp_path / "boards.json"
    registry.write_text(json.dumps({DEVICE: board.public_b64}))
    keys = BoardKeys.from_registry(registry)
    body = b'{"device": "vinhthuan-ubnd-01"}'
    assert keys.check(DEVICE, board.signature_header(body), body, None) is None
    stranger = load_or_create(tmp_path / "stranger")
    refusal = keys.check(DEVICE, stranger.signature_header(body), body, stranger.public_b64)
    assert refusal is not None and "signature does not verify" in refusal
    assert keys.check(DEVICE, None, body, None) == "unsigned body from a board whose key is known"
    other = "b2"
    assert keys.check(other, stranger.signature_header(body), body, stranger.public_b64) is None  # learnt
    assert json.loads(registry.read_text()) == {DEVICE: board.public_b64, "b2": stranger.public_b64}
    conflicts = [json.loads(line) for line in registry.with_suffix(".conflicts.jsonl").read_text().splitlines()]
    assert [c["keyid"] for c in conflicts] == [stranger.fingerprint]


def test_a_tampered_gzip_body_is_refused(server: ReferenceServer, tmp_path: Path) -> None:
    identity = load_or_create(tmp_path / "board")
    keys = BoardKeys()
    sent = gzip.compress(b'{"device": "vinhthuan-ubnd-01"}', mtime=0)
    header = identity.signature_header(sent)
    assert keys.check(DEVICE, header, sent, identity.public_b64) is None
    assert keys.check(DEVICE, header, sent[:-1] + bytes([sent[-1] ^ 1]), None) is not None


def http_config(tmp_path: Path, server: ReferenceServer, storage: Path, name: str) -> Path:
    path = write_config(tmp_path / name / "agent.yaml", tmp_path / "unused", storage, [])
    config = yaml.safe_load(path.read_text())
    config["source"] = {"url": server.base_url, "token": "tok", "poll_interval_s": 10}
    config["report"] = {"heartbeat_interval_s": 10, "upload_interval_s": 2}
    path.write_text(yaml.safe_dump(config))
    return path


def test_agent_signs_heartbeats_and_playlogs_and_its_clone_is_refused(
        tmp_path: Path, server: ReferenceServer, agent_factory) -> None:
    (tmp_path / "board").mkdir()
    config_path = http_config(tmp_path, server, tmp_path / "board" / "state", "board")
    printed = subprocess.run([sys.executable, "-m", "agent", "identity", "--config", str(config_path), "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    identity = json.loads(printed.stdout)
    agent: RunningAgent = agent_factory(config_path).start()
    assert agent.status()["identity"] == identity
    wait_for(lambda: server.state.heartbeats, timeout=20, what="a heartbeat")
    assert server.state.heartbeats[0]["board_key"] == identity["public_key"]
    assert server.state.board_keys.keys[DEVICE] == identity["public_key"]
    agent.ctl("alert", title="THỬ", body="kiểm tra", minutes=0.02)  # a showing, so a playlog batch goes up
    wait_for(lambda: server.requests_to("/playlogs"), timeout=20, what="a playlog batch")
    assert server.requests_to("/playlogs")[-1].headers["X-Bangtin-Signature"].startswith(identity["fingerprint"] + ":")
    assert server.state.board_keys.conflicts == []

    (tmp_path / "clone").mkdir()
    clone_path = http_config(tmp_path, server, tmp_path / "clone" / "state", "clone")
    clone = agent_factory(clone_path).start()  # same device id, its own storage: another key
    wait_for(lambda: any("board key conflict" in e for e in clone.status()["errors"]), timeout=25,
             what="the clone told why its heartbeat is refused")
    assert server.state.board_keys.conflicts[0]["keyid"] == clone.status()["identity"]["fingerprint"]
    assert all(beat["board_key"] == identity["public_key"] for beat in server.state.heartbeats)
    assert clone.stop() == 0 and agent.stop() == 0


def test_a_copied_sd_card_on_another_machine_gets_a_new_key_and_the_source_sees_the_conflict(
        tmp_path: Path, server: ReferenceServer) -> None:
    import shutil

    original = load_or_create(tmp_path / "board", machine="10000000a1b2c3d4")
    assert "machine 10000000a1b2c3d4" in (tmp_path / "board" / IDENTITY_FILE).read_text()
    assert load_or_create(tmp_path / "board", machine="10000000a1b2c3d4").public_raw == original.public_raw
    shutil.copytree(tmp_path / "board", tmp_path / "copy")  # the card, byte for byte, in another Pi
    copy = load_or_create(tmp_path / "copy", machine="10000000ffffeeee")
    assert copy.public_raw != original.public_raw and copy.replaced is not None
    assert "made on another machine (10000000a1b2c3d4, this one is 10000000ffffeeee)" in copy.replaced
    assert (tmp_path / "copy" / "identity.key.from-0000a1b2c3d4").exists()
    assert load_or_create(tmp_path / "copy", machine="10000000ffffeeee").replaced is None  # settled on its new key
    for storage, expected in (("board", 204), ("copy", 409)):
        identity = load_or_create(tmp_path / storage, machine="10000000a1b2c3d4" if storage == "board"
                                  else "10000000ffffeeee")
        client = HttpClient(ClientSettings(server.base_url, "tok", None, "bangtin-agent/test"),
                            signer=identity.signature_header)
        body = json.dumps({"device": DEVICE, "board_key": identity.public_b64}).encode()
        assert client.post(f"{server.base_url}/devices/{DEVICE}/heartbeat", body, "application/json", 10).status_code \
            == expected
        client.close()


def test_a_key_from_before_the_binding_is_bound_and_a_machine_without_a_serial_binds_nothing(tmp_path: Path) -> None:
    from agent.identity import machine_id

    unbound = load_or_create(tmp_path / "state")  # no machine known
    assert "machine" not in (tmp_path / "state" / IDENTITY_FILE).read_text()
    assert load_or_create(tmp_path / "state", machine="abc123").public_raw == unbound.public_raw
    assert (tmp_path / "state" / IDENTITY_FILE).read_text().endswith("machine abc123\n")
    root = tmp_path / "root"
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/serial-number").write_bytes(b"10000000a1b2c3d4\0")
    assert machine_id(root) == "10000000a1b2c3d4"
    (root / "proc/device-tree/serial-number").unlink()
    (root / "proc/cpuinfo").write_text("processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 100000001234abcd\n")
    assert machine_id(root) == "100000001234abcd"
    (root / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: Intel\n")
    assert machine_id(root) is None


def test_the_source_learns_a_board_key_from_its_playlog_batches_too(tmp_path: Path) -> None:
    identity = load_or_create(tmp_path / "state")
    keys = BoardKeys()
    body = json.dumps({"device": DEVICE, "records": [], "board_key": identity.public_b64}).encode()
    assert keys.check(DEVICE, identity.signature_header(body), body, identity.public_b64) is None
    assert keys.keys[DEVICE] == identity.public_b64  # a board whose heartbeats MQTT carries is known all the same

"""Enrolment and provisioning (PROTOCOL.md §12): the enrolment screen, bundles from the drop
folder and USB sticks, and every kind of bundle a stranger could bring refused without a trace."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygame
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyzbar import pyzbar

from agent.bundle import DROPIN_NAME, TOKEN_NAME, BundleRefused, read_applied
from agent.config import load_config
from agent.enrolment import public_key_from_qr, qr_text
from agent.envelope import load_trusted_keys
from agent.identity import load_or_create
from agent.provision import Provisioner
from refsource.cli import keygen, provision
from refsource.server import ReferenceServer, SourceState
from tests.conftest import ROOT, VECTORS, RunningAgent, base_manifest, near, sign_manifest, wait_for

DEVICE = "vinhthuan-ubnd-01"
BASE = "/api/bangtin/v1"
KEY_FILE = VECTORS / "test-key.json"


@pytest.fixture
def board_dir(tmp_path: Path) -> Path:
    """An empty board: a config with only where to keep things, the province's provisioning key."""
    folder = tmp_path / "board"
    folder.mkdir()
    return folder


def bare_config(folder: Path, provision_keys: list[str], **extra: Any) -> Path:
    path = folder / "agent.yaml"
    config = {"storage": {"dir": str(folder / "state")}, "control": {"socket": str(folder / "ctl.sock")},
              "display": {"width": 640, "height": 360, "fullscreen": False},
              "security": {"provision_keys": provision_keys}, **extra}
    path.write_text(yaml.safe_dump(config))
    return path


class Scanner:
    """A Provisioner over a board folder, driven scan by scan (no thread), recording what it says
    (each change of what it says, as the screen shows it)."""

    def __init__(self, config_path: Path, keys: list[str], usb_roots: list[Path] | None = None) -> None:
        self.config_path = config_path
        self.storage = config_path.parent / "state"
        self.identity = load_or_create(self.storage)
        self.restarts: list[int] = []
        self.said: list[BundleRefused | None] = []
        current = load_config(config_path)
        self.provisioner = Provisioner(
            config_path, self.storage / "provision", load_trusted_keys(keys), self.identity.public_b64,
            threading.Event(), applied_restart=lambda bundle: self.restarts.append(bundle.serial),
            refused=self._say, now=lambda: dt.datetime.now(dt.UTC), usb_roots=usb_roots or [],
            current=current if current.enrolled else None)
        (self.storage / "provision").mkdir(parents=True, exist_ok=True)

    def _say(self, refusal: BundleRefused | None) -> None:
        last = self.said[-1] if self.said else None  # at first, nothing said
        if (str(refusal) if refusal else None) != (str(last) if last else None):
            self.said.append(refusal)

    def drop(self, name: str, data: bytes, folder: Path | None = None) -> Path:
        path = (folder or self.storage / "provision") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def look(self) -> bool:
        return self.provisioner.scan_once()

    def scan(self) -> bool:
        """Two looks: a file is taken once it looked the same twice (it is not being copied)."""
        return self.look() or self.look()

    @property
    def last_refusal(self) -> BundleRefused | None:
        return self.said[-1] if self.said else None


def bundle(tmp_path: Path, key: Path = KEY_FILE, **options: Any) -> bytes:
    out = tmp_path / f"bundle-{time.monotonic_ns()}.json"
    provision(key, options.pop("device", DEVICE), options.pop("url", "https://tttn.example.gov.vn/api/bangtin/v1"),
              out, **{"token": "tok-from-bundle", "serial": 10, "any_board": options.get("board_key") is None,
                      **options})
    return out.read_bytes()


def raw_bundle(config: dict[str, Any], serial: int = 10, board_key: str | None = None) -> bytes:
    """A bundle signed with the test key as it is, unchecked: what a mistaken province tool could make."""
    from agent.envelope import PROVISION_PAYLOAD_TYPE, sign_envelope
    from refsource.cli import load_private_key

    payload = {"schema": "bangtin.provision/1", "serial": serial, "board_key": board_key, "config": config}
    return json.dumps(sign_envelope(json.dumps(payload).encode(), PROVISION_PAYLOAD_TYPE,
                                    load_private_key(KEY_FILE))).encode()


def test_the_published_vector_is_applied_with_the_test_key_and_refused_without(board_dir: Path,
                                                                               public_key_b64: str) -> None:
    vector = (VECTORS / "provision.signed.json").read_bytes()
    without = Scanner(bare_config(board_dir, []), [])
    without.drop("bundle.json", vector)
    assert without.scan() is False and without.last_refusal is not None
    assert without.last_refusal.kind == "no-keys" and "security.provision_keys is empty" in str(without.last_refusal)
    assert not (board_dir / "agent.d").exists()

    scanner = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64])
    assert scanner.scan() is True and scanner.restarts == [1]
    config = load_config(scanner.config_path)
    assert (config.device.id, config.device.groups) == (DEVICE, ("angiang", "vinhthuan"))
    assert config.source.url == "https://tttn.example.gov.vn/api/bangtin/v1"
    assert config.token() == "example-token-not-real" and config.source.token is None
    assert config.mqtt.url == "mqtts://mqtt.tttn.example.gov.vn:8883"
    token_file = board_dir / "agent.d" / TOKEN_NAME
    assert token_file.stat().st_mode & 0o777 == 0o600
    dropin = (board_dir / "agent.d" / DROPIN_NAME).read_text()
    assert "example-token-not-real" not in dropin and dropin.startswith("# Written by bangtin-agent")
    assert (board_dir / "agent.yaml").read_text() == yaml.safe_dump(yaml.safe_load((board_dir / "agent.yaml").read_text()))
    assert read_applied(scanner.config_path).serial == 1
    assert not (scanner.storage / "provision" / "bundle.json").exists()  # it carried the token in clear


def refusal_for(tmp_path: Path, board_dir: Path, public_key_b64: str, data: bytes) -> BundleRefused:
    scanner = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64])
    before = sorted(p.name for p in board_dir.rglob("*"))
    scanner.drop("bundle.json", data)
    assert scanner.scan() is False and scanner.restarts == []
    refusal = scanner.last_refusal
    assert refusal is not None
    after = sorted(p.name for p in board_dir.rglob("*"))
    assert after == sorted([*before, "bundle.json"])  # nothing else written
    assert scanner.scan() is False and str(scanner.said[-1]) == str(refusal)  # still said, the same
    assert len([r for r in scanner.said if r is not None]) == 1  # said once, while it lasts
    return refusal


def test_unsigned_bundle_is_refused(tmp_path: Path, board_dir: Path, public_key_b64: str) -> None:
    envelope = json.loads(bundle(tmp_path))
    bare = base64.b64decode(envelope["payload"])
    refusal = refusal_for(tmp_path, board_dir, public_key_b64, bare)
    assert refusal.kind == "unsigned" and refusal.on_screen == "Gói thiết lập bị từ chối: không có chữ ký"


def test_bundle_signed_by_a_stranger_is_refused(tmp_path: Path, board_dir: Path, public_key_b64: str) -> None:
    keygen(tmp_path / "stranger.json")
    refusal = refusal_for(tmp_path, board_dir, public_key_b64, bundle(tmp_path, key=tmp_path / "stranger.json"))
    assert refusal.kind == "signature" and "signature not valid for any trusted key" in str(refusal)


def test_bundle_bound_to_another_board_is_refused(tmp_path: Path, board_dir: Path, public_key_b64: str) -> None:
    other = load_or_create(tmp_path / "other-board")
    refusal = refusal_for(tmp_path, board_dir, public_key_b64, bundle(tmp_path, board_key=other.public_b64))
    assert refusal.kind == "other-board" and refusal.on_screen == "Gói thiết lập bị từ chối: gói dành cho bảng tin khác"


def test_a_bundle_that_moves_storage_or_would_not_load_is_refused(tmp_path: Path, board_dir: Path,
                                                                  public_key_b64: str) -> None:
    moved = refusal_for(tmp_path, board_dir, public_key_b64, bundle(tmp_path, settings=("storage.dir=/tmp/elsewhere",)))
    assert moved.kind == "config" and "may not move storage.dir" in str(moved)
    (board_dir / "state" / "provision" / "bundle.json").unlink()
    on_the_stick = refusal_for(tmp_path, board_dir, public_key_b64, bundle(tmp_path, settings=("source.ca_file=ca.pem",)))
    assert "config.source.ca_file: a bundle's file paths must be absolute" in str(on_the_stick)
    (board_dir / "state" / "provision" / "bundle.json").unlink()
    rekeyed = refusal_for(tmp_path, board_dir, public_key_b64, raw_bundle(
        {"device": {"id": DEVICE}, "source": {"url": "https://tttn.example/api", "token": "t"},
         "security": {"provision_keys": [public_key_b64]}}))
    assert "config.security.provision_keys: a bundle may not change the keys that judge bundles" in str(rekeyed)
    (board_dir / "state" / "provision" / "bundle.json").unlink()
    broken = refusal_for(tmp_path, board_dir, public_key_b64, raw_bundle(
        {"device": {"id": DEVICE}, "source": {"url": "https://tttn.example/api", "poll_interval_s": 2}}))
    assert broken.kind == "config"
    assert "bundle.json: source.poll_interval_s: expected a number >= 10, found 2" in str(broken)


def test_lower_serial_is_refused_and_the_same_one_again_is_quietly_done(tmp_path: Path, board_dir: Path,
                                                                        public_key_b64: str) -> None:
    scanner = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64])
    scanner.drop("first.json", bundle(tmp_path, serial=5))
    assert scanner.scan() is True
    dropin = (board_dir / "agent.d" / DROPIN_NAME).read_bytes()
    older = bundle(tmp_path, serial=4, url="https://attacker.example/api")
    scanner.drop("older.json", older)
    assert scanner.scan() is False
    assert scanner.last_refusal is not None and scanner.last_refusal.kind == "serial"
    assert "serial 4 is not above the applied serial 5" in str(scanner.last_refusal)
    assert (board_dir / "agent.d" / DROPIN_NAME).read_bytes() == dropin
    assert load_config(scanner.config_path).source.url == "https://tttn.example.gov.vn/api/bangtin/v1"
    (scanner.storage / "provision" / "older.json").unlink()
    assert scanner.scan() is False and scanner.said[-1] is None  # the refusal is gone with its file


def test_usb_stick_bundles_and_what_a_stick_may_hold(tmp_path: Path, board_dir: Path, public_key_b64: str) -> None:
    media = tmp_path / "media"
    scanner = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64], usb_roots=[media, tmp_path / "run"])
    stick = media / "pi" / "USB DISK"  # udisks2's /media/<user>/<label>
    stick.mkdir(parents=True)
    fifo = stick / "bangtin-provision-fifo.json"
    os.mkfifo(fifo)  # would block a careless reader for ever
    os.symlink("/etc/passwd", stick / "bangtin-provision-link.json")
    scanner.drop("notes.json", b"{}", folder=stick)  # not a bundle name: never read
    other = load_or_create(tmp_path / "other-board")
    scanner.drop("bangtin-provision-other.json", bundle(tmp_path, serial=7, board_key=other.public_b64), folder=stick)
    started = time.monotonic()
    assert scanner.scan() is False and time.monotonic() - started < 2
    assert scanner.last_refusal is not None
    assert {r.kind for r in [*scanner.said] if r is not None} <= {"unreadable", "other-board"}
    mine = bundle(tmp_path, serial=8, board_key=scanner.identity.public_b64)
    scanner.drop(f"bangtin-provision-{DEVICE}.json", mine, folder=stick)
    assert scanner.scan() is True and scanner.restarts == [8]  # the stick's other bundles do not stop it
    assert (stick / f"bangtin-provision-{DEVICE}.json").exists()  # a stick is read, never written
    assert load_config(scanner.config_path).device.id == DEVICE


def test_a_file_still_being_copied_waits_whatever_its_clock_says(tmp_path: Path, board_dir: Path,
                                                                 public_key_b64: str) -> None:
    scanner = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64])
    path = scanner.drop("copying.json", bundle(tmp_path)[:100])
    assert scanner.look() is False and scanner.said == []  # first sight: maybe still being copied
    path.write_bytes(bundle(tmp_path))  # it grew: still being copied
    assert scanner.look() is False and scanner.said == []
    # A FAT stick written in Vietnam carries local times: seven hours "in the future" for the board.
    ahead = time.time() + 7 * 3600
    os.utime(path, (ahead, ahead))
    assert scanner.look() is False
    assert scanner.look() is True  # looked the same twice: taken


def enrolled_board(tmp_path: Path, board_dir: Path, public_key_b64: str) -> Scanner:
    """A board enrolled by its own bound bundle, then started again with the config it wrote."""
    first = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64])
    first.drop("mine.json", bundle(tmp_path, serial=100, board_key=first.identity.public_b64, token="token-of-x"))
    assert first.scan() is True
    return Scanner(first.config_path, [public_key_b64])


def test_an_enrolled_board_takes_only_bundles_bound_to_its_key(tmp_path: Path, board_dir: Path,
                                                              public_key_b64: str) -> None:
    board = enrolled_board(tmp_path, board_dir, public_key_b64)
    before = load_config(board.config_path)
    # Another board's bundle "for any board", newer (serials are times): a stick left in a drawer.
    board.drop("stray.json", bundle(tmp_path, serial=200, device="xa-y", url="https://other.example/api"))
    assert board.scan() is False and board.restarts == []
    assert board.said[-1] is not None and board.said[-1].kind == "unbound"
    assert f"takes only bundles bound to its key {board.identity.fingerprint}" in str(board.said[-1])
    assert load_config(board.config_path).device == before.device
    (board.storage / "provision" / "stray.json").unlink()
    # Its own, bound, newer, without the token (rotating the content key): the token stays.
    board.drop("rotate.json", bundle(tmp_path, serial=300, board_key=board.identity.public_b64, token=None,
                                     manifest_keys=(public_key_b64,)))
    assert board.scan() is True
    after = load_config(board.config_path)
    assert after.token() == "token-of-x" and after.security.manifest_keys == (public_key_b64,)


def test_a_bundle_that_would_leave_the_board_without_its_token_is_refused(tmp_path: Path, board_dir: Path,
                                                                         public_key_b64: str) -> None:
    board = enrolled_board(tmp_path, board_dir, public_key_b64)
    (board_dir / "agent.d" / TOKEN_NAME).unlink()  # the token now comes from agent.yaml, say
    config = yaml.safe_load((board_dir / "agent.yaml").read_text())
    config["source"] = {"token": "token-in-agent-yaml"}
    (board_dir / "agent.yaml").write_text(yaml.safe_dump(config))
    dropin = board_dir / "agent.d" / DROPIN_NAME
    written = yaml.safe_load(dropin.read_text())
    for key in ("token", "token_file"):
        written["source"].pop(key)
    dropin.write_text(yaml.safe_dump(written))
    board = Scanner(board.config_path, [public_key_b64])
    assert load_config(board.config_path).token() == "token-in-agent-yaml"
    board.drop("null.json", bundle(tmp_path, serial=400, board_key=board.identity.public_b64, token=None,
                                   settings=("source.token=null",)))
    assert board.scan() is False and board.said[-1] is not None
    assert "would be left without its device token" in str(board.said[-1])


def test_several_bundles_for_any_board_are_refused_together(tmp_path: Path, board_dir: Path,
                                                           public_key_b64: str) -> None:
    stick = tmp_path / "media" / "usb0"
    scanner = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64], usb_roots=[tmp_path / "media"])
    for board in ("xa-a", "xa-b"):
        scanner.drop(f"bangtin-provision-{board}.json", bundle(tmp_path, device=board), folder=stick)
    assert scanner.scan() is False and scanner.said[-1] is not None and scanner.said[-1].kind == "ambiguous"
    assert not (board_dir / "agent.d").exists()


def test_a_stick_for_a_whole_commune_finds_this_boards_bundle_and_says_nothing_of_the_others(
        tmp_path: Path, board_dir: Path, public_key_b64: str) -> None:
    stick = tmp_path / "media" / "usb0"
    scanner = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64], usb_roots=[tmp_path / "media"])
    for n in range(30):
        other = load_or_create(tmp_path / f"other-{n}")
        scanner.drop(f"bangtin-provision-a{n:02d}.json", bundle(tmp_path, device=f"xa-{n}", board_key=other.public_b64),
                     folder=stick)
    assert scanner.scan() is False
    assert str(scanner.said[-1]) == f"30 bundles, none for this board (key {scanner.identity.fingerprint})"
    scanner.drop("bangtin-provision-z-mine.json", bundle(tmp_path, board_key=scanner.identity.public_b64), folder=stick)
    assert scanner.scan() is True  # the 31st, sorted last
    again = Scanner(scanner.config_path, [public_key_b64], usb_roots=[tmp_path / "media"])  # after the restart
    assert again.scan() is False and again.said == []  # the other boards' bundles are not this one's business


def test_a_refusal_caused_by_the_board_is_looked_at_again_once_it_is_fixed(tmp_path: Path, board_dir: Path,
                                                                          public_key_b64: str) -> None:
    scanner = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64])
    (board_dir / "agent.d").write_text("not a folder")  # the board's own mistake: agent.d cannot be made
    scanner.drop("b.json", bundle(tmp_path))
    assert scanner.scan() is False and scanner.said[-1] is not None and scanner.said[-1].kind == "not-written"
    (board_dir / "agent.d").unlink()
    assert scanner.scan() is True


def test_a_stick_cannot_forge_log_lines_or_errors(tmp_path: Path, board_dir: Path, public_key_b64: str) -> None:
    stick = tmp_path / "media" / "usb0"
    scanner = Scanner(bare_config(board_dir, [public_key_b64]), [public_key_b64], usb_roots=[tmp_path / "media"])
    scanner.drop("bangtin-provision-\n2026 WARNING agent.provision: bundle serial 99 applied.json", b"{}", folder=stick)
    assert scanner.scan() is False and scanner.said[-1] is not None
    assert "\n" not in str(scanner.said[-1]) and "\\n2026" in str(scanner.said[-1])


def test_a_damaged_provisioning_record_takes_no_bundle(tmp_path: Path, board_dir: Path, public_key_b64: str) -> None:
    board = enrolled_board(tmp_path, board_dir, public_key_b64)
    (board_dir / "agent.d" / "provision.json").write_text("{torn")
    board.drop("older.json", bundle(tmp_path, serial=50, board_key=board.identity.public_b64))
    assert board.scan() is False and board.said[-1] is not None and board.said[-1].kind == "state"
    assert "provision.json cannot be read" in str(board.said[-1])


def test_enrolment_qr_carries_the_board_key(tmp_path: Path) -> None:
    identity = load_or_create(tmp_path / "state")
    text = qr_text(identity.fingerprint, identity.public_b64)
    assert identity.fingerprint in text and public_key_from_qr(text) == identity.public_b64
    with pytest.raises(ValueError, match="not a bangtin board code"):
        public_key_from_qr("https://example.com")


# --- the real agent -------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    srv = ReferenceServer(("127.0.0.1", 0), SourceState(base_path=BASE, token="tok-from-bundle")).start()
    yield srv
    srv.stop()


def decode_qr(shot: pygame.Surface) -> list[str]:
    width, height = shot.get_size()
    grey = pygame.image.tobytes(shot, "RGB")[1::3]  # the green channel: black and white either way
    return [found.data.decode() for found in pyzbar.decode((grey, width, height))]


def test_an_empty_board_shows_its_enrolment_screen_and_a_dropped_bundle_makes_it_a_board(
        tmp_path: Path, board_dir: Path, server: ReferenceServer, private_key: Ed25519PrivateKey,
        public_key_b64: str, agent_factory) -> None:
    config_path = bare_config(board_dir, [public_key_b64])
    agent: RunningAgent = agent_factory(config_path).start()
    status = agent.status()
    assert status["device"] == "" and status["sync"] == {"state": "not enrolled", "missing": ["device.id", "source.url"]}
    identity = status["identity"]
    shot = agent.screenshot()
    assert decode_qr(shot) == [qr_text(identity["fingerprint"], identity["public_key"])]
    assert not near(shot.get_at((600, 300)), (0, 0, 0))  # never black

    manifest = base_manifest(3, items=[{"id": "t1", "type": "text", "title": "Xin chào", "body": "Bảng tin mới",
                                        "duration_s": 30}])
    server.publish(DEVICE, sign_manifest(manifest, private_key))
    out = tmp_path / "bangtin-provision.json"
    made = subprocess.run(
        [sys.executable, "-m", "refsource", "provision", "--key", str(KEY_FILE), "--device", DEVICE, "--url",
         server.base_url, "--token", "tok-from-bundle", "--group", "angiang", "--manifest-key", public_key_b64,
         "--board-key", qr_text(identity["fingerprint"], identity["public_key"]), "--out", str(out),
         "--set", "report.heartbeat_interval_s=10"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert f"bound to board key {identity['public_key']}" in made.stdout
    dropped = time.monotonic()
    (board_dir / "state" / "provision" / "bundle.json").write_bytes(out.read_bytes())
    # PROTOCOL.md §12: applied within 5 s of the drop (then one sync).
    wait_for(lambda: agent.status()["device"] == DEVICE, timeout=5, what="the board enrolled by the bundle")
    enrolled_after = time.monotonic() - dropped
    wait_for(lambda: agent.status()["current_item"] == "t1", timeout=20, what="the province's content on screen")
    print(f"bundle dropped → enrolled {enrolled_after:.1f} s → content {time.monotonic() - dropped:.1f} s")
    status = agent.status()
    assert status["identity"] == identity and status["errors"] == []
    wait_for(lambda: server.state.heartbeats, timeout=20, what="a signed heartbeat")
    assert server.state.board_keys.keys[DEVICE] == identity["public_key"]
    assert not (board_dir / "state" / "provision" / "bundle.json").exists()
    assert agent.stop() == 0


def test_a_bundle_signed_by_another_key_changes_nothing_and_says_why_on_screen(
        tmp_path: Path, board_dir: Path, public_key_b64: str, agent_factory) -> None:
    agent: RunningAgent = agent_factory(bare_config(board_dir, [public_key_b64])).start()
    before = agent.screenshot()
    keygen(tmp_path / "stranger.json")
    (board_dir / "state" / "provision" / "bundle.json").write_bytes(bundle(tmp_path, key=tmp_path / "stranger.json"))
    wait_for(lambda: any("provisioning bundle refused" in e for e in agent.status()["errors"]), timeout=10,
             what="the refusal in errors")
    assert any("signature not valid for any trusted key" in e for e in agent.status()["errors"])

    def refusal_band() -> bool:
        shot = agent.screenshot()
        return sum(near(shot.get_at((x, y)), (176, 0, 0), 20) for x in range(330, 630, 10)
                   for y in range(200, 360, 10)) > 20

    wait_for(refusal_band, timeout=10, what="the refusal on the enrolment screen")
    assert agent.status()["device"] == "" and not (board_dir / "agent.d").exists()
    assert decode_qr(before) == decode_qr(agent.screenshot())  # the board's code is still there to read
    assert agent.stop() == 0

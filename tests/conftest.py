"""Shared fixtures: test vectors, signing with the TEST-ONLY key, content folders, a running agent."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.ctlsocket import ControlUnavailable, request
from agent.envelope import MANIFEST_PAYLOAD_TYPE, sign_envelope
from refsource.server import ReferenceServer, SourceState

VECTORS = Path(__file__).parent / "vectors"
ROOT = Path(__file__).parent.parent

# Every test process draws headless; pygame's banner would only clutter output.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 — retried until the deadline, shown if it never passes
            last_error = exc
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")


@pytest.fixture(scope="session")
def test_key() -> dict[str, str]:
    return json.loads((VECTORS / "test-key.json").read_text())


@pytest.fixture(scope="session")
def private_key(test_key: dict[str, str]) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(test_key["private_seed_b64"]))


@pytest.fixture(scope="session")
def public_key_b64(test_key: dict[str, str]) -> str:
    return test_key["public_key_b64"]


TEST_BOARD = "vinhthuan-ubnd-01"
TEST_AUDIENCE = (TEST_BOARD, "group:angiang")


@pytest.fixture
def keys(public_key_b64: str) -> list[str]:
    """The manifest keys a board trusts: the test key's."""
    return [public_key_b64]


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    """The reference source on a loopback port (tests/test_sync_http.py, tests/test_downloads.py)."""
    srv = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/api/bangtin/v1", token="tok-123")).start()
    yield srv
    srv.stop()


def sign_manifest(manifest: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """Signed for the test board as `refsource publish` does: with an audience unless the test set one."""
    body = manifest if "audience" in manifest else {**manifest, "audience": list(TEST_AUDIENCE)}
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
    return json.dumps(sign_envelope(payload, MANIFEST_PAYLOAD_TYPE, key)).encode()


def media_entry(path: Path, media_id: str, mime: str, url: str | None = None) -> dict[str, Any]:
    data = path.read_bytes()
    return {"id": media_id, "url": url or f"media/{path.name}", "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data), "type": mime}


def base_manifest(serial: int, **changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schema": "bangtin.manifest/1",
        "serial": serial,
        "issued_at": "2026-11-26T08:00:00+07:00",
        "timezone": "Asia/Ho_Chi_Minh",
        "layout": {"header": {"title": "ỦY BAN NHÂN DÂN XÃ VĨNH THUẬN", "clock": True},
                   "theme": {"background": "#0B3D91", "foreground": "#FFFFFF", "accent": "#FFD200"}},
        "media": [],
        "items": [],
    }
    manifest.update(changes)
    return manifest


def write_png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    """A real PNG of one colour (pygame's encoder), for pixel checks on screenshots."""
    import pygame

    surface = pygame.Surface(size)
    surface.fill(colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    pygame.image.save(surface, str(path))
    return path


class ContentFolder:
    """A `file://` source folder a test writes to, as a technician would."""

    def __init__(self, root: Path, key: Ed25519PrivateKey) -> None:
        self.root = root
        self.key = key
        (root / "media").mkdir(parents=True, exist_ok=True)

    def publish(self, manifest: dict[str, Any], signed: bool = True) -> None:
        raw = sign_manifest(manifest, self.key) if signed else json.dumps(manifest).encode()
        temporary = self.root / ".manifest.json.tmp"
        temporary.write_bytes(raw)
        os.replace(temporary, self.root / "manifest.json")

    def write_raw(self, raw: bytes) -> None:
        (self.root / "manifest.json").write_bytes(raw)


@pytest.fixture
def content_folder(tmp_path: Path, private_key: Ed25519PrivateKey) -> ContentFolder:
    return ContentFolder(tmp_path / "content", private_key)


def write_config(path: Path, content_root: Path, storage: Path, keys: list[str], **display: Any) -> Path:
    config = {
        "device": {"id": "vinhthuan-ubnd-01", "groups": ["angiang"]},
        "source": {"url": content_root.resolve().as_uri()},
        "security": {"manifest_keys": keys},
        "storage": {"dir": str(storage)},
        "display": {"width": 640, "height": 360, "fullscreen": False, "fps": 30, **display},
        "control": {"socket": str(path.parent / "ctl.sock")},
    }
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


class RunningAgent:
    """`bangtin-agent run` in a subprocess under the SDL dummy driver, driven over its socket."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        config = yaml.safe_load(config_path.read_text())
        self.socket = Path(config["control"]["socket"])
        self.storage = Path(config["storage"]["dir"])
        self.log_path = config_path.parent / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RunningAgent:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_for(self._answers, timeout=20, what=f"the agent to answer on {self.socket}")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"agent exited with {self.process.returncode}:\n{self.log()}")
        try:
            return bool(request(self.socket, "ping", timeout=2).get("ok"))
        except ControlUnavailable:
            return False

    def ctl(self, command: str, **args: Any) -> Any:
        response = request(self.socket, command, args)
        assert response["ok"], response
        return response["result"]

    def status(self) -> dict[str, Any]:
        return self.ctl("status")  # type: ignore[no-any-return]

    def screenshot(self) -> Any:
        import io

        import pygame

        png = base64.b64decode(self.ctl("screenshot")["png_base64"])
        return pygame.image.load(io.BytesIO(png), "shot.png")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def journal(self) -> list[dict[str, Any]]:
        """Every row of the outbox, showings and events, oldest first (read as a second process would)."""
        db = sqlite3.connect(self.storage / "outbox.sqlite")
        try:
            return [json.loads(body) for (body,) in db.execute("SELECT body FROM records ORDER BY seq")]
        finally:
            db.close()

    def records(self) -> list[dict[str, Any]]:
        """The proof-of-play records (showings), oldest first."""
        return [record for record in self.journal() if record["type"] != "event"]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The journal's events (agent/events.py), oldest first; only those called `name` when given."""
        return [r for r in self.journal() if r["type"] == "event" and (name is None or r["item"] == name)]


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[[Path], RunningAgent]]:
    agents: list[RunningAgent] = []

    def make(config_path: Path) -> RunningAgent:
        agent = RunningAgent(config_path)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait(10)


def near(colour: Any, expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    """A screenshot pixel close to `expected` (scaling and video compression move colours a little)."""
    return all(abs(c - e) <= tolerance for c, e in zip(tuple(colour)[:3], expected, strict=True))

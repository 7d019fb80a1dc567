"""MQTT push with a real mosquitto: signed alerts on screen and acked, replays, expiry, groups,
presence and the last will, a broker restart, bad credentials, screenshots and restart."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from agent.envelope import COMMAND_PAYLOAD_TYPE, sign_envelope
from refsource.server import ReferenceServer, SourceState
from tests.conftest import (
    VECTORS,
    ContentFolder,
    RunningAgent,
    base_manifest,
    media_entry,
    near,
    wait_for,
    write_config,
    write_png,
)

DEVICE = "vinhthuan-ubnd-01"
PREFIX = "bangtin"
ALERT_RED = (176, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """mosquitto on a loopback port with its own config (and optionally a password file)."""

    def __init__(self, work: Path, password: str | None = None, tls: tuple[Path, Path] | None = None) -> None:
        self.work = work
        self.tls = tls  # (certificate, key): an mqtts:// listener whose CA file is the certificate
        self.port = free_port()
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            pytest.fail("mosquitto is not installed: ./scripts/test installs it (apt-get install mosquitto)")
        # Started as root, mosquitto would switch to its own user, which cannot read pytest's 0700 folders.
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", f"log_dest file {work / 'mosquitto.log'}",
                 "log_type all", f"user {getpass.getuser()}"]
        if tls is not None:
            lines += [f"cafile {tls[0]}", f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        if password is None:
            lines.append("allow_anonymous true")
        else:
            subprocess.run(["mosquitto_passwd", "-b", "-c", str(work / "passwd"), DEVICE, password], check=True)
            lines += ["allow_anonymous false", f"password_file {work / 'passwd'}"]
        self.conf = work / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.process = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(self._accepts, timeout=10, what="mosquitto to listen")
        return self

    def _accepts(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def log(self) -> str:
        path = self.work / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Operator:
    """The province's side: publishes commands, watches acks and retained status."""

    def __init__(self, broker: Broker, password: str | None = None) -> None:
        self.acks: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="operator")
        if password is not None:
            self.client.username_pw_set(DEVICE, password)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe([(f"{PREFIX}/devices/{DEVICE}/acks", 1), (f"{PREFIX}/devices/{DEVICE}/status", 1)])
        self.client.loop_start()

    def _message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            target = self.acks if message.topic.endswith("/acks") else self.status
            target.append(json.loads(message.payload))

    def send(self, payload: bytes, topic: str = f"{PREFIX}/devices/{DEVICE}/commands") -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def ack_for(self, command_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [a for a in self.acks if a.get("id") == command_id]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def signed_command(key: Ed25519PrivateKey, command_id: str, command: str, args: dict[str, Any] | None = None, *,
                   issued_at: dt.datetime | None = None, lifetime: dt.timedelta = dt.timedelta(hours=1),
                   audience: tuple[str, ...] | None = (DEVICE, "group:angiang")) -> bytes:
    """A v1.1 command as the province signs it: bound to boards and to a lifetime (§8)."""
    issued = issued_at or dt.datetime.now(dt.UTC)
    body: dict[str, Any] = {"id": command_id, "command": command, "issued_at": issued.isoformat(),
                            "expires_at": (issued + lifetime).isoformat(), "args": args or {}}
    if audience is not None:
        body["audience"] = list(audience)
    return json.dumps(sign_envelope(json.dumps(body, ensure_ascii=False).encode(), COMMAND_PAYLOAD_TYPE, key)).encode()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()



def board_config(tmp_path: Path, folder: ContentFolder, keys: list[str], mqtt_url: str | list[str], **extra: Any) -> Path:
    png = write_png(folder.root / "media" / "blue.png", (160, 90), (20, 20, 220))
    folder.publish(base_manifest(1, media=[media_entry(png, "m1", "image/png")],
                                 items=[{"id": "blue", "type": "image", "media": "m1", "duration_s": 30}]))
    path = write_config(tmp_path / "agent.yaml", folder.root, tmp_path / "state", keys)
    config = yaml.safe_load(path.read_text())
    config["mqtt"] = {"url": mqtt_url, "keepalive_s": 5}
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


@pytest.fixture
def board(tmp_path: Path, content_folder: ContentFolder, public_key_b64: str, broker: Broker,
          agent_factory: Callable[[Path], RunningAgent]) -> RunningAgent:
    agent = agent_factory(board_config(tmp_path, content_folder, [public_key_b64], broker.url)).start()
    wait_for(lambda: agent.status()["mqtt"]["connected"], timeout=15, what="the board connected to the broker")
    return agent


@pytest.fixture
def operator(broker: Broker) -> Iterator[Operator]:
    op = Operator(broker)
    yield op
    op.close()


def test_signed_alert_is_shown_acked_and_a_replay_is_not_run(board: RunningAgent, operator: Operator,
                                                             private_key: Ed25519PrivateKey) -> None:
    raw = signed_command(private_key, "c-20261126-0001", "alert", {"title": "CẢNH BÁO", "body": "Bão", "minutes": 30})
    operator.send(raw)
    wait_for(lambda: operator.ack_for("c-20261126-0001"), timeout=5, what="the ack")
    ack = operator.ack_for("c-20261126-0001")[0]
    assert ack["ok"] is True and ack["result"]["alert"] == "c-20261126-0001"
    status = board.status()
    assert status["alert_active"] and status["current_item"] == "c-20261126-0001"
    assert near(board.screenshot().get_at((3, 200)), ALERT_RED)  # the red margin
    board.ctl("clear_alert")
    operator.send(raw)  # the same command again (a replay, or QoS 1 redelivery)
    wait_for(lambda: len(operator.ack_for("c-20261126-0001")) == 2, timeout=5, what="the duplicate's ack")
    assert operator.ack_for("c-20261126-0001")[1] == {**operator.ack_for("c-20261126-0001")[1], "ok": False,
                                                       "error": "duplicate"}
    assert not board.status()["alert_active"]


def test_expired_refused_unsigned_dropped_group_commands_run(board: RunningAgent, operator: Operator,
                                                             private_key: Ed25519PrivateKey) -> None:
    operator.send(signed_command(private_key, "c-old", "alert", {"title": "CŨ", "body": "x"},
                                 issued_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)))
    wait_for(lambda: operator.ack_for("c-old"), timeout=5, what="the expired command's ack")
    assert operator.ack_for("c-old")[0]["error"] == "expired" and not board.status()["alert_active"]

    unsigned = json.dumps({"id": "c-evil", "command": "screen", "args": {"mode": "off"}}).encode()
    operator.send(unsigned)
    wrong_key = signed_command(Ed25519PrivateKey.generate(), "c-evil2", "screen", {"mode": "off"})
    operator.send(wrong_key)
    wait_for(lambda: any("2 command(s) dropped" in e for e in board.status()["errors"]), timeout=5,
             what="the dropped commands counted")
    assert board.status()["screen_on"] is True
    assert not operator.ack_for("c-evil") and not operator.ack_for("c-evil2")

    operator.send(signed_command(private_key, "c-group", "screen", {"mode": "off"}),
                  topic=f"{PREFIX}/groups/angiang/commands")
    wait_for(lambda: operator.ack_for("c-group"), timeout=5, what="the group command's ack")
    assert operator.ack_for("c-group")[0]["ok"] is True and board.status()["screen_on"] is False
    operator.send(signed_command(private_key, "c-ping", "ping"))
    wait_for(lambda: operator.ack_for("c-ping"), timeout=5, what="ping ack")
    assert operator.ack_for("c-ping")[0]["result"] == {"pong": True}


def test_presence_retained_and_last_will_after_sigkill(board: RunningAgent, broker: Broker) -> None:
    watcher = Operator(broker)  # subscribes after the board connected: gets the retained status
    try:
        # Presence follows what matters: published at connect, again once the manifest is current.
        wait_for(lambda: watcher.status and watcher.status[-1].get("manifest_serial") == 1, timeout=10,
                 what="presence with the manifest")
        online = watcher.status[-1]
        assert online["online"] is True and online["device"] == DEVICE and "current_item" in online
        assert "errors" in online and "outbox_pending" in online
        board.stop(signal.SIGKILL)
        # keepalive 5 s: the broker gives up after 1.5 x that and publishes the will.
        wait_for(lambda: watcher.status[-1] == {"online": False}, timeout=15, what="the last will")
    finally:
        watcher.close()
    late = Operator(broker)  # a console that connects later still sees the board as offline
    try:
        wait_for(lambda: late.status, timeout=5, what="retained status")
        assert late.status[-1] == {"online": False}
    finally:
        late.close()


def test_broker_restart_does_not_disturb_playback_and_the_board_reconnects(
        board: RunningAgent, broker: Broker, private_key: Ed25519PrivateKey) -> None:
    broker.stop()
    wait_for(lambda: not board.status()["mqtt"]["connected"], timeout=10, what="the board to notice")
    frames = board.status()["display"]["frames"]
    wait_for(lambda: board.status()["display"]["frames"] > frames, timeout=5, what="the clock still ticking")
    assert board.status()["current_item"] == "blue" and near(board.screenshot().get_at((320, 200)), (20, 20, 220))
    broker.start()
    wait_for(lambda: board.status()["mqtt"]["connected"], timeout=30, what="the board to reconnect")
    op = Operator(broker)
    try:
        op.send(signed_command(private_key, "c-after", "ping"))
        wait_for(lambda: op.ack_for("c-after"), timeout=5, what="a command after the restart (re-subscribed)")
    finally:
        op.close()


def test_alert_survives_a_restart_until_it_expires(board: RunningAgent, operator: Operator,
                                                   private_key: Ed25519PrivateKey,
                                                   agent_factory: Callable[[Path], RunningAgent]) -> None:
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)).isoformat()
    operator.send(signed_command(private_key, "c-storm", "alert", {"title": "BÃO", "body": "Bão số 3", "until": until}))
    wait_for(lambda: board.status()["alert_active"], timeout=5, what="the alert")
    assert board.stop() == 0
    again = agent_factory(board.config_path).start()
    wait_for(lambda: again.status()["alert_active"], timeout=10, what="the alert after the restart")
    assert again.status()["current_item"] == "c-storm"
    operator.send(signed_command(private_key, "c-storm", "alert", {"title": "BÃO", "body": "again"}))
    wait_for(lambda: len(operator.ack_for("c-storm")) == 2, timeout=10, what="the replay's ack after restart")
    assert operator.ack_for("c-storm")[1]["error"] == "duplicate"  # the executed-ids log is on disk
    again.stop()


def test_bad_credentials_never_disturb_playback_and_are_not_hammered(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str,
        agent_factory: Callable[[Path], RunningAgent]) -> None:
    (tmp_path / "secure").mkdir()
    secure = Broker(tmp_path / "secure", password="right-token").start()
    try:
        config = board_config(tmp_path, content_folder, [public_key_b64], secure.url, source={"token": "wrong-token"})
        agent = agent_factory(config).start()
        wait_for(lambda: "refused" in (agent.status()["mqtt"]["last_error"] or ""), timeout=15, what="the refusal")
        attempts = secure.log().count(f"as bangtin-{DEVICE}")
        wait_for(lambda: agent.status()["current_item"] == "blue", timeout=5, what="playback")
        frames = agent.status()["display"]["frames"]
        wait_for(lambda: agent.status()["display"]["frames"] >= frames + 3, timeout=10, what="three more clock ticks")
        assert secure.log().count(f"as bangtin-{DEVICE}") == attempts  # no retry within those seconds
        assert attempts <= 2  # v5 attempt (and no protocol fallback for an auth failure)
    finally:
        secure.stop()


def test_screenshot_is_posted_to_the_source_and_restart_exits_cleanly(
        tmp_path: Path, private_key: Ed25519PrivateKey, public_key_b64: str, broker: Broker,
        operator: Operator, agent_factory: Callable[[Path], RunningAgent]) -> None:
    from tests.conftest import sign_manifest

    server = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/api", token="tok")).start()
    try:
        server.publish(DEVICE, sign_manifest(base_manifest(1, items=[
            {"id": "t", "type": "text", "title": "THÔNG BÁO", "body": "x", "duration_s": 30}]), private_key))
        path = write_config(tmp_path / "agent.yaml", tmp_path / "unused", tmp_path / "state", [public_key_b64])
        config = yaml.safe_load(path.read_text())
        config["source"] = {"url": server.base_url, "token": "tok"}
        config["mqtt"] = {"url": [f"mqtt://127.0.0.1:{free_port()}", broker.url], "keepalive_s": 5}  # first is down
        path.write_text(yaml.safe_dump(config))
        agent = agent_factory(path).start()
        wait_for(lambda: agent.status()["mqtt"]["connected"], timeout=20, what="the second broker in the list")
        assert agent.status()["mqtt"]["broker"] == broker.url
        operator.send(signed_command(private_key, "c-shot", "screenshot"))
        wait_for(lambda: operator.ack_for("c-shot"), timeout=10, what="the screenshot ack")
        ack = operator.ack_for("c-shot")[0]
        headers, png = server.state.screenshots[-1]
        assert ack["ok"] and ack["result"]["bytes"] == len(png) and png.startswith(b"\x89PNG")
        assert headers["X-Command-Id"] == "c-shot"
        operator.send(signed_command(private_key, "c-restart", "restart"))
        assert agent.process is not None and agent.process.wait(20) == 0  # exits for systemd to restart it
        assert operator.ack_for("c-restart")[0]["ok"] is True
        wait_for(lambda: operator.status and operator.status[-1] == {"online": False}, timeout=5,
                 what="a clean stop says offline itself")
    finally:
        server.stop()


def test_commands_are_bound_to_their_boards_and_lifetimes(board: RunningAgent, operator: Operator,
                                                          private_key: Ed25519PrivateKey) -> None:
    """v1.1 §8: audience and a bounded lifetime on signed commands; retained and oversized messages ignored."""
    group_topic = f"{PREFIX}/groups/angiang/commands"
    for raw, topic in [
        ((VECTORS / "command.alert.signed.json").read_bytes(), None),  # a v1 command: no audience
        (signed_command(private_key, "c-other", "screen", {"mode": "off"}, audience=("other-board",)), group_topic),
        (signed_command(private_key, "c-mine", "screen", {"mode": "off"}, audience=(DEVICE,)), group_topic),
        (signed_command(private_key, "c-long", "screen", {"mode": "off"}, lifetime=dt.timedelta(days=8)), None),
    ]:
        operator.send(raw, topic=topic or f"{PREFIX}/devices/{DEVICE}/commands")
    wait_for(lambda: any("4 command(s) dropped" in e for e in board.status()["errors"]), timeout=5,
             what="four commands dropped")
    errors = " ".join(board.status()["errors"])
    assert "expires_at is more than 7 days after issued_at" in errors
    assert board.status()["screen_on"] is True and not operator.acks
    # Over 64 KiB: under MQTT v5 the broker does not even deliver it (the board's Maximum Packet Size);
    # a 3.1.1 board drops it before parsing (tests/test_commands.py).
    operator.send(signed_command(private_key, "c-big", "screen", {"mode": "off", "pad": "x" * (70 * 1024)}))
    operator.send(signed_command(private_key, "c-after-big", "ping"))
    wait_for(lambda: operator.ack_for("c-after-big"), timeout=5, what="a command after the big one")
    assert not operator.ack_for("c-big") and board.status()["screen_on"] is True


def test_a_retained_command_is_never_run_at_connect(board: RunningAgent, operator: Operator,
                                                    private_key: Ed25519PrivateKey,
                                                    agent_factory: Callable[[Path], RunningAgent]) -> None:
    """A command is live or nothing: one left retained on the topic does not run again at every start."""
    assert board.stop() == 0
    topic = f"{PREFIX}/devices/{DEVICE}/commands"
    operator.client.publish(topic, signed_command(private_key, "c-kept", "screen", {"mode": "off"}), qos=1,
                            retain=True).wait_for_publish(5)
    try:
        again = agent_factory(board.config_path).start()
        wait_for(lambda: again.status()["mqtt"]["connected"], timeout=15, what="the board connected again")
        operator.send(signed_command(private_key, "c-live", "ping"))
        wait_for(lambda: operator.ack_for("c-live"), timeout=5, what="a live command")
        assert not operator.ack_for("c-kept") and again.status()["screen_on"] is True
    finally:
        operator.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)  # clears it

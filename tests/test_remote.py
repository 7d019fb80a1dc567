"""Remote operations (PROTOCOL.md §4 `settings`, §8 `withdraw` and `logs`): what the province may
change on a running board, within which bounds, and what a technician's own file keeps."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import Config, ReportConfig, load_config
from agent.control import CommandError, parse_log_lines, parse_withdraw
from agent.health import Problems
from agent.liveconfig import changed_keys
from agent.logring import LogRing
from agent.manifest import parse_manifest
from agent.models import Manifest
from agent.player import Player
from agent.settings import ConfigInForce, resolve
from agent.withdrawn import Withdrawn, WithdrawnStore
from refsource.server import ReferenceServer, SourceState
from tests.conftest import RunningAgent, base_manifest, sign_manifest, wait_for, write_config
from tests.test_mqtt import DEVICE, Broker, Operator, signed_command

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=7)))


def file_config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "agent.yaml"
    path.write_text("device: {id: b1}\nsource: {url: 'file:///c'}\n" + text)
    return load_config(path)


# --- settings ---------------------------------------------------------------------------------------


def test_settings_apply_where_the_file_is_silent_within_the_boards_bounds(tmp_path: Path) -> None:
    config = file_config(tmp_path, "display: {fps: 12}\n")
    resolved = resolve(config, {"report.heartbeat_interval_s": 900, "display.fps": 25, "source.poll_interval_s": 5,
                                "downloads.windows": [["01:00", "05:00"]], "storage.dir": "/tmp/x",
                                "log_level": "loud"})
    assert resolved.config.report.heartbeat_interval_s == 900
    assert resolved.config.downloads.windows == (("01:00", "05:00"),)
    assert resolved.config.display.fps == 12  # the technician's value wins
    assert resolved.config.source.poll_interval_s == 300 and resolved.config.storage.dir == config.storage.dir
    assert resolved.sources["report.heartbeat_interval_s"] == {"value": 900, "from": "manifest"}
    assert resolved.sources["display.fps"] == {"value": 12, "from": "file", "manifest_asked": 25}
    assert resolved.sources["display.crossfade_ms"] == {"value": 0, "from": "default"}
    problems = "\n".join(resolved.problems)
    assert "source.poll_interval_s: expected a number from 30 to 3600, found 5; kept 300" in problems
    assert "'storage.dir' is not a key the province may set; ignored" in problems
    assert "log_level: expected one of DEBUG, INFO, WARNING, ERROR, found 'loud'" in problems
    assert len(resolved.problems) == 3


def test_config_in_force_takes_file_edits_and_settings_in_one_place(tmp_path: Path) -> None:
    applied: list[set[str]] = []
    reported: list[tuple[str, ...]] = []
    first = file_config(tmp_path, "")
    in_force = ConfigInForce(first, lambda new, changed: applied.append(changed) is None, reported.append, changed_keys)
    in_force.settings_changed({"display.crossfade_ms": 400})
    assert in_force.config.display.crossfade_ms == 400 and applied[-1] == {"display.crossfade_ms"}
    in_force.settings_changed({"display.crossfade_ms": 400})  # the same manifest again: nothing to do
    assert len(applied) == 1
    in_force.file_edited(file_config(tmp_path, "report: {upload_interval_s: 90}\n"))
    assert applied[-1] == {"report.upload_interval_s"}
    assert in_force.config.display.crossfade_ms == 400  # the settings stay laid over the edited file
    in_force.settings_changed(None)  # a manifest without settings: back to the file and defaults
    assert in_force.config.display.crossfade_ms == 0 and applied[-1] == {"display.crossfade_ms"}
    assert reported[-1] == ()


def test_a_non_object_settings_refuses_the_manifest_but_a_wrong_value_does_not() -> None:
    from agent.models import ManifestRejected

    with pytest.raises(ManifestRejected, match="settings: expected an object of config keys"):
        parse_manifest(base_manifest(1, settings=["display.fps", 10]))
    assert parse_manifest(base_manifest(1, settings={"display.fps": "fast"})).settings == {"display.fps": "fast"}


# --- withdraw ---------------------------------------------------------------------------------------


class FakeContent:
    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.version = 0

    def snapshot(self) -> Any:
        from agent.content import Snapshot

        return Snapshot(self.manifest, frozenset(), self.version)


class Records:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def add(self, records: Any) -> None:
        self.records.extend(r for r in records if getattr(r, "type", None) != "event")


def text(item_id: str, duration: int = 30) -> dict[str, Any]:
    return {"id": item_id, "type": "text", "title": item_id.upper(), "body": "…", "duration_s": duration}


def test_withdraw_takes_the_item_off_at_once_and_it_stays_off_until_a_higher_serial() -> None:
    content = FakeContent(parse_manifest(base_manifest(4, items=[text("a"), text("b")],
                                                       ticker=[{"id": "k1", "text": "TIN SAI"},
                                                               {"id": "k2", "text": "Tin đúng"}])))
    records = Records()
    player = Player(content, records, Problems())
    assert player.update(T0, 0.0).item.id == "a"
    found, withdrawn = player.withdraw(["a", "k1", "nope"], T0 + dt.timedelta(seconds=1), 1.0)
    assert found == ["a", "k1"] and withdrawn == Withdrawn(4, frozenset({"a", "k1", "nope"}))
    scene = player.update(T0 + dt.timedelta(seconds=1), 1.0)
    assert scene.item.id == "b" and "TIN SAI" not in scene.ticker_text and "Tin đúng" in scene.ticker_text
    assert [(r.item, r.reason, r.completed) for r in records.records] == [("a", "withdrawn", False)]
    content.manifest = parse_manifest(base_manifest(4, items=[text("a"), text("b")]))  # the same serial again
    for second in range(2, 80):
        assert player.update(T0 + dt.timedelta(seconds=second), float(second)).item.id == "b"
    content.manifest = parse_manifest(base_manifest(5, items=[text("a")]))  # the province's correction
    assert player.update(T0 + dt.timedelta(seconds=90), 90.0).item.id == "a"


def test_an_item_a_new_manifest_drops_leaves_at_once_as_withdrawn() -> None:
    content = FakeContent(parse_manifest(base_manifest(1, items=[text("a"), text("b")])))
    records = Records()
    player = Player(content, records, Problems())
    player.update(T0, 0.0)
    content.manifest = parse_manifest(base_manifest(2, items=[text("b")]))
    assert player.update(T0 + dt.timedelta(seconds=0.5), 0.5).item.id == "b"
    assert [(r.item, r.reason) for r in records.records] == [("a", "withdrawn")]


def test_withdrawn_items_survive_a_restart(tmp_path: Path) -> None:
    written: dict[Path, bytes] = {}
    store = WithdrawnStore(tmp_path / "withdrawn.json", lambda path, data: written.__setitem__(path, data))
    store.save(Withdrawn(4, frozenset({"a", "k1"})))
    (tmp_path / "withdrawn.json").write_bytes(written[tmp_path / "withdrawn.json"])
    assert store.load() == (Withdrawn(4, frozenset({"a", "k1"})), None)
    (tmp_path / "withdrawn.json").write_text("[1, 2")
    held, problem = store.load()
    assert held.ids == frozenset() and problem is not None and "unreadable" in problem


def test_withdraw_and_logs_arguments_are_checked() -> None:
    assert parse_withdraw({"items": ["a", "a", "b"]}) == ["a", "b"]
    for bad in ({}, {"items": []}, {"items": "a"}, {"items": [1]}, {"items": ["x" * 200]}, {"items": ["a"] * 1001}):
        with pytest.raises(CommandError, match=r"withdraw: args\.items"):
            parse_withdraw(bad)
    assert parse_log_lines({}) == 500 and parse_log_lines({"lines": 5000}) == 5000
    for bad_lines in (0, 5001, "10", True, 2.5):
        with pytest.raises(CommandError, match=r"logs: args\.lines: expected a number from 1 to 5000"):
            parse_log_lines({"lines": bad_lines})


# --- logs -------------------------------------------------------------------------------------------


def test_a_line_that_is_not_utf8_never_breaks_the_caller() -> None:
    ring = LogRing()
    logger = logging.getLogger("test.ring.surrogate")
    logger.addHandler(ring)
    try:
        logger.warning("bundle refused: %s", "bangtin-provision-\udcff.json")  # a file name off a stranger's stick
        assert ring.recent(1)[0].endswith("bangtin-provision-\\udcff.json")
    finally:
        logger.removeHandler(ring)


def test_log_ring_is_bounded_and_keeps_secrets_out() -> None:
    ring = LogRing(secrets=["tok-s3cret-value"], max_lines=50, max_bytes=4000)
    logger = logging.getLogger("test.ring")
    logger.addHandler(ring)
    logger.setLevel(logging.INFO)
    try:
        logger.info("connecting with tok-s3cret-value")
        logger.info("header Authorization: Bearer abcdefgh12345678")
        logger.info("password=hunter2hunter2")
        lines = ring.recent(3)
        assert "tok-s3cret-value" not in "\n".join(lines) and "abcdefgh12345678" not in "\n".join(lines)
        assert "hunter2hunter2" not in "\n".join(lines) and lines[0].endswith("connecting with ***")
        for n in range(200):
            logger.info("line %d %s", n, "é" * 30)
        kept = ring.recent(5000)
        assert len(kept) <= 50 and sum(len(x.encode()) + 1 for x in kept) <= 4000
        assert kept[-1].split(" test.ring: ")[1].startswith("line 199")
        logger.info("multi\nline")
        assert ring.recent(2)[-2].endswith("multi") and ring.recent(1) == ["line"]
    finally:
        logger.removeHandler(ring)


# --- end to end: the reference source, a real mosquitto, the agent ---------------------------------


@pytest.fixture
def source() -> Iterator[ReferenceServer]:
    server = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/api", token="tok-s3cret-value")).start()
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def server_knows_the_board(source: ReferenceServer) -> bool:
    return DEVICE in source.state.board_keys.keys


def remote_board(tmp_path: Path, source: ReferenceServer, broker: Broker, key: Ed25519PrivateKey, keys: list[str],
                 agent_factory: Callable[[Path], RunningAgent], **config_extra: Any) -> RunningAgent:
    manifest = base_manifest(7, items=[text("sai", 60), text("dung", 60)],
                             ticker=[{"id": "k-sai", "text": "TIN GIẢ MẠO"}, {"id": "k-dung", "text": "Tin chính thức"}],
                             settings={"report.heartbeat_interval_s": 45, "display.crossfade_ms": 300,
                                       "display.fps": 500, "source.token": "stolen"})
    source.publish(DEVICE, sign_manifest(manifest, key))
    path = write_config(tmp_path / "agent.yaml", tmp_path / "unused", tmp_path / "state", keys)
    config = yaml.safe_load(path.read_text())
    config["source"] = {"url": source.base_url, "token": "tok-s3cret-value", "poll_interval_s": 10}
    config["mqtt"] = {"url": broker.url, "keepalive_s": 5}
    config["display"]["crossfade_ms"] = 0  # the technician's own choice
    config["report"] = {"upload_interval_s": 2}
    for section, values in config_extra.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    agent = agent_factory(path).start()
    wait_for(lambda: agent.status()["current_item"] == "sai", timeout=20, what="the first item on screen")
    wait_for(lambda: agent.status()["mqtt"]["connected"], timeout=15, what="the board on the broker")
    return agent


def test_settings_withdraw_and_logs_end_to_end(tmp_path: Path, source: ReferenceServer, broker: Broker,
                                               private_key: Ed25519PrivateKey, public_key_b64: str,
                                               agent_factory: Callable[[Path], RunningAgent]) -> None:
    agent = remote_board(tmp_path, source, broker, private_key, [public_key_b64], agent_factory)
    settings = wait_for(lambda: agent.status()["settings"]["report.heartbeat_interval_s"]["from"] == "manifest"
                        and agent.status()["settings"], timeout=10, what="the manifest's settings in force")
    assert settings["report.heartbeat_interval_s"] == {"value": 45, "from": "manifest"}
    assert settings["display.crossfade_ms"] == {"value": 0, "from": "file", "manifest_asked": 300}
    assert agent.status()["report"]["heartbeat_interval_s"] == 45  # the reporter runs with it
    errors = "\n".join(agent.status()["errors"])
    assert "manifest settings: display.fps: expected a number from 1 to 60, found 500; kept 30 (and 1 more)" in errors
    assert server_knows_the_board(source)  # learnt from a signed POST although MQTT carries the heartbeats

    operator = Operator(broker)
    try:
        operator.send(signed_command(private_key, "c-withdraw", "withdraw", {"items": ["sai", "k-sai", "missing"]}))
        sent = time.monotonic()
        wait_for(lambda: agent.status()["current_item"] == "dung", timeout=5, interval=0.01,
                 what="the withdrawn item off the screen")
        off_after = time.monotonic() - sent
        ack = wait_for(lambda: operator.ack_for("c-withdraw"), timeout=5, what="the withdraw ack")[0]
        assert ack["ok"] and ack["result"]["items"] == ["sai", "k-sai"] and ack["result"]["not_found"] == ["missing"]
        assert off_after < 1.0, f"withdrawn item still on screen after {off_after:.2f} s"
        record = wait_for(lambda: [r for r in source.state.playlogs.values() if r["item"] == "sai"], timeout=20,
                          what="the cut showing uploaded")[0]
        assert record["reason"] == "withdrawn" and record["completed"] is False

        operator.send(signed_command(private_key, "c-logs", "logs", {"lines": 50}))
        ack = wait_for(lambda: operator.ack_for("c-logs"), timeout=10, what="the logs ack")[0]
        headers, body = source.state.logs[-1]
        assert ack["ok"] and ack["result"]["bytes"] == len(body) and 0 < ack["result"]["lines"] <= 50
        assert headers["X-Command-Id"] == "c-logs" and headers["Content-Type"].startswith("text/plain")
        text_sent = body.decode("utf-8")
        assert "withdrawn until a manifest above serial 7: sai, k-sai, missing" in text_sent
        assert "tok-s3cret-value" not in text_sent
        operator.send(signed_command(private_key, "c-logs-big", "logs", {"lines": 6000}))
        refused = wait_for(lambda: operator.ack_for("c-logs-big"), timeout=10, what="the refused logs ack")[0]
        assert refused["ok"] is False and "1 to 5000" in refused["error"]
        operator.send(signed_command(private_key, "c-logs-again", "logs", {"lines": 10}))
        again = wait_for(lambda: operator.ack_for("c-logs-again"), timeout=10, what="the second logs ack")[0]
        assert again["ok"] is False and "at most one upload a minute" in again["error"]  # a metered SIM
        assert len(source.state.logs) == 1
    finally:
        operator.close()

    lines = agent.ctl("logs", lines=5)["lines"]
    assert len(lines) == 5
    assert agent.ctl("withdraw", items=["dung"])["items"] == ["dung"]
    wait_for(lambda: agent.status()["current_item"] is None, timeout=3, what="nothing left to play: the splash")
    agent.stop()
    restarted = agent_factory(agent.config_path).start()  # a power cut does not bring a withdrawn bulletin back
    wait_for(lambda: restarted.status()["manifest_serial"] == 7, timeout=20, what="the manifest restored")
    assert restarted.status()["current_item"] is None
    source.publish(DEVICE, sign_manifest(base_manifest(8, items=[text("dung", 60)]), private_key))
    restarted.ctl("sync")
    wait_for(lambda: restarted.status()["current_item"] == "dung", timeout=20, what="a higher serial lifts it")
    assert restarted.status()["settings"]["report.heartbeat_interval_s"] == {
        "value": ReportConfig().heartbeat_interval_s, "from": "default"}
    assert restarted.stop() == 0


def test_ctl_reaches_the_board_while_the_config_file_is_broken(tmp_path: Path, content_folder: Any,
                                                                public_key_b64: str,
                                                                agent_factory: Callable[[Path], RunningAgent]) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    content_folder.publish(base_manifest(1, items=[text("a")]))
    path = write_config(tmp_path / "agent.yaml", content_folder.root, tmp_path / "state", [public_key_b64])
    agent = agent_factory(path).start()
    path.write_text(path.read_text() + "display:\n  fps: fast\n")  # a technician's typo, refused live
    wait_for(lambda: any("config edit refused" in e for e in agent.status()["errors"]), timeout=10,
             what="the edit refused")
    result = subprocess.run([sys.executable, "-m", "agent", "ctl", "--config", str(path), "status", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["current_item"] == "a"
    assert "has problems (see check-config); asking the agent on" in result.stderr
    assert agent.stop() == 0

"""Quick unit tests: the command dispatcher, remote commands (with the v1.1 vector) and live-config diffs."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.commands import CommandLog, RemoteCommands
from agent.config import Config, DisplayConfig, DownloadsConfig, MqttConfig, SourceConfig
from agent.control import Actions, Dispatcher
from agent.envelope import COMMAND_PAYLOAD_TYPE, load_trusted_keys, sign_envelope
from agent.liveconfig import LiveTargets, apply_edit, changed_keys
from agent.models import Alert
from tests.conftest import VECTORS

VALID_AT = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=7)))  # inside the v1.1 vector's window


class Screen:
    """What the dispatcher drives, recorded (the display thread's side, run at once)."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.mode = "auto"
        self.syncs = 0
        self.restarts = 0
        self.items = ["i1", "t1"]  # what the current manifest holds
        self.log_lines = [f"line {n}" for n in range(10)]

    def actions(self, now: dt.datetime) -> Actions:
        def on_display(work: Callable[[], Any]) -> concurrent.futures.Future[Any]:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_result(work())
            return future

        def clear(alert_id: str | None) -> int:
            gone = [a for a in self.alerts if alert_id is None or a.id == alert_id]
            self.alerts = [a for a in self.alerts if a not in gone]
            return len(gone)

        return Actions(on_display=on_display, status=lambda: {"alerts": len(self.alerts)},
                       add_alert=self.alerts.append, clear_alerts=clear,
                       set_screen_mode=lambda mode: setattr(self, "mode", mode), screenshot_png=lambda: b"\x89PNG",
                       sync=lambda: setattr(self, "syncs", self.syncs + 1),
                       restart=lambda: setattr(self, "restarts", self.restarts + 1), now=lambda: now,
                       withdraw=lambda ids: [i for i in ids if i in self.items],
                       recent_logs=lambda count: self.log_lines[-count:])


def test_dispatcher_validates_every_request_and_never_raises() -> None:
    screen = Screen()
    dispatcher = Dispatcher(screen.actions(VALID_AT))
    assert dispatcher.handle({"command": "alert", "args": {"title": "BÃO", "body": "Bão số 3", "minutes": 30}})["ok"]
    assert screen.alerts[0].until == VALID_AT + dt.timedelta(minutes=30)
    for request, error in [
        ([1, 2], "expected a JSON object"),
        ({"command": "format-disk"}, "unknown command 'format-disk'"),
        ({"command": "alert", "args": {"title": "", "body": ""}}, "expected a title or a body"),
        ({"command": "alert", "args": {"title": "x", "body": "-" * 4001}}, "limited to 200 and 4000 characters"),
        ({"command": "alert", "args": {"title": "x", "minutes": 10**9}}, "args.minutes: expected a number from 1"),
        ({"command": "alert", "args": {"title": "x", "until": "2099-01-01T00:00:00Z"}}, "more than 7 days away"),
        ({"command": "screen", "args": {"mode": "x" * 500}}, "expected on, off or auto"),
        ({"command": "clear_alert", "args": {"alert": 5}}, "expected a command id"),
    ]:
        response = dispatcher.handle(request)
        assert response["ok"] is False and error in response["error"], (request, response)
        assert len(response["error"]) < 300
    assert dispatcher.handle({"command": "screen", "args": {"mode": "off"}})["result"] == {"mode": "off"}
    assert screen.mode == "off"
    assert dispatcher.handle({"command": "clear_alert"})["result"] == {"cleared": 1}
    assert dispatcher.handle({"command": "status"})["result"] == {"alerts": 0}


@pytest.fixture
def command_log(tmp_path: Path) -> CommandLog:
    log = CommandLog(tmp_path / "commands.sqlite")
    log.open()
    return log


def remote(command_log: CommandLog, public_key_b64: str, now: dt.datetime, device: str = "vinhthuan-ubnd-01",
           groups: tuple[str, ...] = ("angiang",)) -> tuple[RemoteCommands, Screen, list[str]]:
    screen = Screen()
    dropped: list[str] = []
    commands = RemoteCommands(Dispatcher(screen.actions(now)), command_log, load_trusted_keys([public_key_b64]),
                              lambda: now, None, lambda count, why: dropped.append(why), device_id=device,
                              groups=groups)
    return commands, screen, dropped


def test_the_v11_vector_runs_once_on_its_board_only(command_log: CommandLog, public_key_b64: str) -> None:
    raw = (VECTORS / "command.alert.v11.signed.json").read_bytes()
    commands, screen, _dropped = remote(command_log, public_key_b64, VALID_AT)
    ack = commands.handle(raw, "bangtin/devices/vinhthuan-ubnd-01/commands")
    assert ack is not None and ack["ok"] is True and len(screen.alerts) == 1
    again = commands.handle(raw, "bangtin/devices/vinhthuan-ubnd-01/commands")
    assert again is not None and again["error"] == "duplicate" and len(screen.alerts) == 1
    other, other_screen, other_dropped = remote(command_log, public_key_b64, VALID_AT, device="other-board",
                                                groups=("cantho",))
    assert other.handle(raw, "bangtin/devices/other-board/commands") is None and not other_screen.alerts
    assert "names neither this board ('other-board') nor its groups" in other_dropped[-1]


def test_a_command_outside_its_lifetime_or_from_v1_is_not_run(command_log: CommandLog, public_key_b64: str) -> None:
    raw = (VECTORS / "command.alert.v11.signed.json").read_bytes()
    late, screen, _ = remote(command_log, public_key_b64, VALID_AT + dt.timedelta(hours=12))
    ack = late.handle(raw, "t")
    assert ack is not None and ack["error"] == "expired" and not screen.alerts
    v1, screen, dropped = remote(command_log, public_key_b64, VALID_AT)
    assert v1.handle((VECTORS / "command.alert.signed.json").read_bytes(), "t") is None and not screen.alerts
    assert "has no audience" in dropped[-1]


def test_executed_ids_outlive_the_longest_command_lifetime(tmp_path: Path) -> None:
    """A command may live 7 days; its id must be remembered past that across restarts (a replay is
    refused as a duplicate while it could still be in its lifetime, and by expiry after)."""
    clock = [1_800_000_000.0]
    log_file = tmp_path / "commands.db"
    first = CommandLog(log_file, now=lambda: clock[0])
    first.open()
    first.remember("cmd-1")
    first.close()
    clock[0] += 8 * 86400  # past any command's lifetime, after a restart
    again = CommandLog(log_file, now=lambda: clock[0])
    again.open()
    assert again.seen("cmd-1")
    again.close()
    clock[0] += 40 * 86400  # long after: forgotten, the table stays small
    later = CommandLog(log_file, now=lambda: clock[0])
    later.open()
    assert not later.seen("cmd-1")
    later.close()


def test_group_topics_require_the_group_in_the_audience(command_log: CommandLog, public_key_b64: str,
                                                        private_key: Any) -> None:
    def command(command_id: str, audience: list[str]) -> bytes:
        body = {"id": command_id, "command": "ping", "audience": audience, "issued_at": VALID_AT.isoformat(),
                "expires_at": (VALID_AT + dt.timedelta(hours=1)).isoformat()}
        return json.dumps(sign_envelope(json.dumps(body).encode(), COMMAND_PAYLOAD_TYPE, private_key)).encode()

    commands, _, dropped = remote(command_log, public_key_b64, VALID_AT)
    assert commands.handle(command("c1", ["group:angiang"]), "g", topic_group="angiang") is not None
    assert commands.handle(command("c2", ["vinhthuan-ubnd-01"]), "g", topic_group="angiang") is None
    assert "came on the topic of group 'angiang', which its audience does not list" in dropped[-1]
    assert commands.handle(b"{" * 70_000, "g") is None and "over the limit of 65536" in dropped[-1]


def test_changed_keys_and_which_edits_apply_live() -> None:
    old = Config(source=SourceConfig(url="file:///c"))
    hot = dataclasses.replace(old, display=DisplayConfig(fps=15), mqtt=MqttConfig(url="mqtt://b:1883"))
    cold = dataclasses.replace(old, display=DisplayConfig(width=800))
    assert changed_keys(old, hot) == {"display.fps", "mqtt.url"}
    assert changed_keys(old, cold) == {"display.width"}
    calls: list[str] = []
    targets = LiveTargets(
        poll_interval=lambda s: calls.append(f"poll {s}"), report=lambda *a: calls.append("report"),
        outbox_limits=lambda *a: calls.append("outbox"), display=lambda fps, *a: calls.append(f"fps {fps}"),
        power_commands=lambda *a: calls.append("power"), mqtt=lambda new: calls.append(f"mqtt {new.mqtt.url}"),
        restart_in_place=lambda keys: calls.append(f"restart {sorted(keys)}"),
        log_level=lambda level: calls.append(f"log {level}"),
        downloads=lambda windows, small_mb: calls.append(f"downloads {list(windows)} {small_mb:g}"))
    assert apply_edit(targets, hot, changed_keys(old, hot)) is True
    assert "log INFO" in calls
    quieter = dataclasses.replace(old, log_level="WARNING")
    assert changed_keys(old, quieter) == {"log_level"} and apply_edit(targets, quieter, {"log_level"}) is True
    assert "log WARNING" in calls
    night = dataclasses.replace(old, downloads=DownloadsConfig(windows=(("23:00", "05:00"),), small_mb=0.5))
    assert changed_keys(old, night) == {"downloads.windows", "downloads.small_mb"}
    assert apply_edit(targets, night, changed_keys(old, night)) is True
    assert "downloads [('23:00', '05:00')] 0.5" in calls
    assert "fps 15" in calls and "mqtt mqtt://b:1883" in calls and not any(c.startswith("restart") for c in calls)
    calls.clear()
    assert apply_edit(targets, cold, changed_keys(old, cold)) is False
    assert calls == ["restart ['display.width']"]

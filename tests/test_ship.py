"""Shipping on a Pi: the unit file, the install scripts, sd_notify, live config, screen power, logs."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from agent.cli import JournaldFormatter
from agent.config import Config
from agent.systemd import Notifier
from tests.conftest import ROOT, ContentFolder, RunningAgent, base_manifest, media_entry, wait_for, write_config, write_png

UNIT = ROOT / "systemd" / "bangtin-agent.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_file_is_hardened_and_matches_the_config_defaults() -> None:
    unit = unit_settings()
    expected = {"Type": "notify", "WatchdogSec": "30", "Restart": "always", "StartLimitIntervalSec": "0",
                "User": "bangtin", "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
                "StateDirectory": "bangtin", "RuntimeDirectory": "bangtin"}
    for key, value in expected.items():
        assert unit[key] == [value], key
    assert set(unit["SupplementaryGroups"][0].split()) == {"video", "render"}  # no input: nothing is read from it
    assert "PrivateDevices" not in unit  # it would hide /dev/dri, and the screen with it
    assert unit["DevicePolicy"] == ["closed"] and "char-drm rw" in unit["DeviceAllow"]
    assert unit["CapabilityBoundingSet"] == [""] and "@system-service" in unit["SystemCallFilter"]
    assert "SDL_VIDEODRIVER=kmsdrm" in unit["Environment"]
    defaults = Config()
    assert defaults.storage.dir == "/var/lib/bangtin" and defaults.control.socket.startswith("/run/bangtin/")
    assert unit["ExecStart"] == ["/opt/bangtin/launcher/bangtin-launch run --config /etc/bangtin/agent.yaml"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # ExecStart points where install.sh puts the agent; verify it with a binary that exists here.
    copy = tmp_path / "bangtin-agent.service"
    copy.write_text(UNIT.read_text().replace("/opt/bangtin/launcher/bangtin-launch", "/usr/bin/env bangtin-launch"))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_exposure_is_ok_for_systemd_analyze_security() -> None:
    """v1.1 hardening: an exposure of at most 2.0 ("OK") while the screen still works (DRM, CEC allowed)."""
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)], capture_output=True,
                            text=True, timeout=60)
    line = next(line for line in result.stdout.splitlines() if "Overall exposure level" in line)
    score = float(line.split(":", 1)[1].split()[0])
    assert score <= 2.0, line


@pytest.mark.parametrize("script", ["scripts/install.sh", "scripts/uninstall.sh", "scripts/bootstrap.sh", "scripts/test",
                                    "scripts/demo", "scripts/catalogue", "launcher/bangtin-agent"])
def test_scripts_parse_and_pass_shellcheck(script: str) -> None:
    path = ROOT / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", "-x", str(path)], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_install_dry_run_changes_nothing_and_never_overwrites_the_config(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.yaml").write_text("device: {id: kept}\n")
    (etc / "token").write_text("secret")
    env = dict(os.environ, BANGTIN_PREFIX=str(tmp_path / "opt"), BANGTIN_ETC=str(etc),
               BANGTIN_UNIT=str(tmp_path / "unit.service"))
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--dry-run", "--token-file", "/dev/null"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{etc}/agent.yaml exists: kept as it is" in out and f"{etc}/token exists: kept as it is" in out
    assert "+ systemctl enable bangtin-agent.service" in out
    assert "-m pip download -q -d" in out and f"-c {tmp_path}/opt/src/constraints.txt" in out
    assert "pip install -q --no-index --find-links" in out  # release 0 from exactly the wheels it keeps
    assert f"{tmp_path}/opt/launcher/bangtin-launch" in out
    assert "--no-same-owner" in out and f"+ chown -R root:root {tmp_path}/opt/src.new" in out
    assert f"+ chmod -R go-w {tmp_path}/opt/src.new" in out
    assert not (tmp_path / "opt").exists() and not (tmp_path / "unit.service").exists()
    assert (etc / "agent.yaml").read_text() == "device: {id: kept}\n"
    fresh = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--dry-run"], capture_output=True, text=True,
                           env=dict(env, BANGTIN_ETC=str(tmp_path / "new-etc")), timeout=60)
    assert f"agent.example.yaml {tmp_path}/new-etc/agent.yaml" in fresh.stdout
    gone = subprocess.run(["bash", str(ROOT / "scripts" / "uninstall.sh"), "--dry-run"], capture_output=True, text=True)
    assert gone.returncode == 0 and "kept: /etc/bangtin" in gone.stdout
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --frobnicate" in bad.stderr


def test_notifier_speaks_to_abstract_sockets_and_respects_watchdog_pid() -> None:
    name = f"bangtin-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "10000000"})
        assert notifier.watchdog_interval_s == 5.0
        notifier.watchdog(now=99.0)  # before READY: nothing
        notifier.ready("up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up"
        notifier.watchdog(now=100.0)
        notifier.watchdog(now=101.0)  # within half the interval: no second ping
        notifier.watchdog(now=105.0)
        assert [sock.recv(100), sock.recv(100)] == [b"WATCHDOG=1", b"WATCHDOG=1"]
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "10", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert not Notifier({}).enabled


def test_journald_lines_carry_priority_and_no_timestamp() -> None:
    formatter = JournaldFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("agent.x", logging.WARNING, __file__, 1, "disk %s", ("full",), None)
    assert formatter.format(record) == "<4>agent.x: disk full"
    record.levelno = logging.INFO
    assert formatter.format(record).startswith("<6>")


def folder_with_image(folder: ContentFolder) -> None:
    png = write_png(folder.root / "media" / "img.png", (160, 90), (20, 160, 20))
    folder.publish(base_manifest(1, media=[media_entry(png, "m1", "image/png")],
                                 items=[{"id": "img", "type": "image", "media": "m1", "duration_s": 30}]))


def test_sd_notify_ready_watchdog_status_and_stopping(tmp_path: Path, content_folder: ContentFolder,
                                                      public_key_b64: str,
                                                      agent_factory: Callable[[Path], RunningAgent]) -> None:
    folder_with_image(content_folder)
    config = write_config(tmp_path / "agent.yaml", content_folder.root, tmp_path / "state", [public_key_b64])
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.2)
        os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"] = address, "1000000"  # ping every 0.5 s
        try:
            agent = agent_factory(config).start()
        finally:
            del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
        messages: list[str] = []

        def receive() -> list[str]:
            try:
                while True:
                    messages.append(sock.recv(1000).decode())
            except TimeoutError:
                return messages

        wait_for(lambda: sum(m == "WATCHDOG=1" for m in receive()) >= 4, timeout=10, what="periodic WATCHDOG=1")
        assert messages[0].startswith("READY=1\nSTATUS=")
        wait_for(lambda: any(m.startswith("STATUS=serial 1, img") for m in receive()), timeout=5, what="a STATUS line")
        # A cold edit restarts in place: the unit stays active (#16.2): no STOPPING=1, READY=1 again.
        config.write_text(config.read_text().replace("vinhthuan-ubnd-01", "anbinh-ubnd-02"))
        wait_for(lambda: sum(m.startswith("READY=1") for m in receive()) >= 2, timeout=20,
                 what="READY=1 again after the restart in place")
        assert agent.status()["device"] == "anbinh-ubnd-02"
        assert not any("STOPPING=1" in m for m in messages)
        assert agent.stop() == 0
        receive()
        assert "STOPPING=1" in messages


def test_live_config_hot_edit_invalid_edit_and_restart_edit(tmp_path: Path, public_key_b64: str,
                                                            agent_factory: Callable[[Path], RunningAgent]) -> None:
    empty = tmp_path / "empty"  # no manifest: the splash shows display.splash_title in the header
    empty.mkdir()
    config_path = write_config(tmp_path / "agent.yaml", empty, tmp_path / "state", [public_key_b64])
    agent = agent_factory(config_path).start()
    pid = agent.process.pid if agent.process else 0
    header_before = agent.screenshot().subsurface((0, 0, 400, 35)).copy()
    config = yaml.safe_load(config_path.read_text())
    config["display"]["splash_title"] = "XÃ AN BÌNH"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    wait_for(lambda: "config applied without a restart" in agent.log(), timeout=10, what="the hot edit applied")
    import pygame

    wait_for(lambda: pygame.image.tobytes(agent.screenshot().subsurface((0, 0, 400, 35)), "RGB")
             != pygame.image.tobytes(header_before, "RGB"), timeout=5, what="the new title on screen")

    (tmp_path / "agent.yaml").write_text(config_path.read_text().replace("fps: 30", "fps: 0"))
    wait_for(lambda: any("config edit refused" in e for e in agent.status()["errors"]), timeout=10,
             what="the invalid edit refused")
    assert "display.fps: expected a number from 1 to 120, found 0" in agent.log()
    assert agent.process is not None and agent.process.poll() is None  # still playing the old config

    config["device"]["id"] = "anbinh-ubnd-02"  # a new identity: a clean restart in place
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    wait_for(lambda: agent.status()["device"] == "anbinh-ubnd-02", timeout=20, what="the agent restarted in place")
    assert agent.process.pid == pid and agent.process.poll() is None  # same PID: systemd keeps tracking it
    assert agent.stop() == 0


def test_screen_power_hook_follows_the_screen_and_alerts_wake_it(
        tmp_path: Path, content_folder: ContentFolder, public_key_b64: str,
        agent_factory: Callable[[Path], RunningAgent]) -> None:
    folder_with_image(content_folder)
    log_file = tmp_path / "cec.log"
    fake = tmp_path / "fake-cec"  # stands in for cec-ctl, which needs a TV on the other end
    fake.write_text(f"#!/bin/sh\necho \"$1\" >> {log_file}\n")
    fake.chmod(0o755)
    config = write_config(tmp_path / "agent.yaml", content_folder.root, tmp_path / "state", [public_key_b64],
                          power_on_command=f"{fake} on", power_off_command=f"{fake} off")
    agent = agent_factory(config).start()

    def calls() -> list[str]:
        return log_file.read_text().split() if log_file.exists() else []

    wait_for(lambda: calls() == ["on"], timeout=10, what="the screen powered on at start")
    agent.ctl("screen", mode="off")
    wait_for(lambda: calls() == ["on", "off"], timeout=10, what="standby")
    agent.ctl("alert", title="KHẨN", body="Lũ", minutes=1)
    wait_for(lambda: calls() == ["on", "off", "on"], timeout=10, what="the alert waking the screen")
    agent.ctl("clear_alert")
    wait_for(lambda: calls() == ["on", "off", "on", "off"], timeout=10, what="back to forced off")
    agent.ctl("screen", mode="auto")
    wait_for(lambda: calls()[-1] == "on", timeout=10, what="back on")
    assert agent.stop(signal.SIGTERM) == 0

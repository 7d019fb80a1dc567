"""Hardware readings for the heartbeat, from files laid out as a Raspberry Pi has them."""

from __future__ import annotations

from pathlib import Path

from agent import hardware


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_readings_from_a_pi_like_root(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "51540\n")
    write(tmp_path, "proc/meminfo", "MemTotal:        3884096 kB\nMemFree:  100 kB\nMemAvailable:    3012345 kB\n")
    write(tmp_path, "proc/net/route", "Iface\tDestination\tGateway\tFlags\n"
                                      "wlan0\t0000A8C0\t00000000\t0001\nwwan0\t00000000\t0101A8C0\t0003\n")
    write(tmp_path, "proc/net/wireless", "Inter-| sta-|   Quality\n face | tus | link level noise\n"
                                         " wlan0: 0000   54.  -56.  -256        0      0\n")
    assert hardware.cpu_temp_c(tmp_path) == 51.5
    assert hardware.mem_available_bytes(tmp_path) == 3012345 * 1024
    assert hardware.default_route_interface(tmp_path) == "wwan0"
    assert hardware.interface_type("wwan0", tmp_path) == "cellular"
    assert hardware.interface_type("eth0", tmp_path) == "ethernet"
    assert hardware.interface_type("wlan0", tmp_path) == "wifi"
    assert hardware.wifi_signal_dbm("wlan0", tmp_path) == -56


def test_missing_files_mean_absent_fields(tmp_path: Path) -> None:
    assert hardware.cpu_temp_c(tmp_path) is None
    assert hardware.mem_available_bytes(tmp_path) is None
    assert hardware.default_route_interface(tmp_path) is None
    assert hardware.wifi_signal_dbm("wlan0", tmp_path) is None


def test_throttle_flags_decode() -> None:
    # 0x50005: under-voltage now, throttled now; under-voltage and throttling have occurred since boot
    assert hardware.decode_throttled(0x50005) == ["under_voltage", "throttled", "under_voltage_occurred",
                                                  "throttling_occurred"]
    assert hardware.decode_throttled(0) == []


# --- screen health (heartbeat `display`) -------------------------------------------------------------

CEC_REPLY = """Transmit from Playback Device 1 to TV (4 to 0):
CEC_MSG_GIVE_DEVICE_POWER_STATUS (0x8f)
\tSequence: 12 Tx Timestamp: 12345.678s Rx Timestamp: 12345.912s
\tReceived from TV (0):
CEC_MSG_REPORT_POWER_STATUS (0x90):
\tpwr-state: standby (0x01)
"""


def drm_tree(root: Path, **connectors: tuple[str, str]) -> None:
    for name, (status, modes) in connectors.items():
        folder = root / "sys/class/drm" / f"card1-{name}"
        folder.mkdir(parents=True)
        (folder / "status").write_text(status + "\n")
        (folder / "modes").write_text(modes)
    (root / "sys/class/drm/card1").mkdir(parents=True, exist_ok=True)  # the card itself is no connector
    (root / "sys/class/drm/version").write_text("drm 1.1.0 20060810\n")


def test_screen_health_reads_connectors_cec_and_frames(tmp_path: Path) -> None:
    from agent.health import Problems
    from agent.screenhealth import ScreenHealth

    drm_tree(tmp_path, **{"HDMI-A-1": ("connected", "1920x1080\n1280x720\n"), "HDMI-A-2": ("disconnected", ""),
                          "Writeback-1": ("unknown", "")})
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "cec0").write_text("")
    frames = [100]
    asked: list[list[str]] = []
    problems = Problems()
    clock = [0.0]
    health = ScreenHealth(lambda: frames[0], problems, root=tmp_path,
                          run=lambda command: asked.append(command) or CEC_REPLY, mono=lambda: clock[0])
    frames[0] = 130
    beat = health.read(since_last=True)
    assert beat == {"frames": 30, "cec_power": "standby",
                    "connectors": [{"name": "HDMI-A-1", "status": "connected", "mode": "1920x1080"},
                                   {"name": "HDMI-A-2", "status": "disconnected", "mode": None}]}
    assert asked == [["cec-ctl", "--to", "0", "--give-device-power-status"]]
    frames[0] = 135
    assert health.read(since_last=False)["frames"] == 5 and health.read(since_last=True)["frames"] == 5
    assert len(asked) == 1  # the TV is asked again only after CEC_EVERY_S
    clock[0] = 301.0
    health.read(since_last=True)
    assert len(asked) == 2
    assert problems.current() == []

    (tmp_path / "sys/class/drm/card1-HDMI-A-1/status").write_text("disconnected\n")  # the cable pulled
    health.read(since_last=True)
    assert problems.current() == ["screen disconnected: no display on HDMI-A-1 (disconnected), "
                                  "HDMI-A-2 (disconnected)"]
    (tmp_path / "sys/class/drm/card1-HDMI-A-1/status").write_text("connected\n")
    health.read(since_last=True)
    assert problems.current() == []


def test_a_board_without_drm_or_cec_says_only_its_frames(tmp_path: Path) -> None:
    from agent.health import Problems
    from agent.screenhealth import ScreenHealth

    health = ScreenHealth(lambda: 7, Problems(), root=tmp_path, run=lambda command: CEC_REPLY)
    assert health.read(since_last=True) == {"frames": 0}

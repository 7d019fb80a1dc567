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

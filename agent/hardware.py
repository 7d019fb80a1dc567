"""What the board's hardware tells, for the heartbeat's optional fields (PROTOCOL.md §6).

Each reading is cheap (a file in /proc or /sys, or `vcgencmd` on a Raspberry Pi) and absent when the
machine does not offer it: the heartbeat then simply leaves the field out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

THROTTLE_BITS = {
    0: "under_voltage", 1: "arm_frequency_capped", 2: "throttled", 3: "soft_temperature_limit",
    16: "under_voltage_occurred", 17: "arm_frequency_capping_occurred", 18: "throttling_occurred",
    19: "soft_temperature_limit_occurred",
}


def cpu_temp_c(root: Path = Path("/")) -> float | None:
    try:
        return round(int((root / "sys/class/thermal/thermal_zone0/temp").read_text().strip()) / 1000, 1)
    except (OSError, ValueError):
        return None


def mem_available_bytes(root: Path = Path("/")) -> int | None:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def decode_throttled(value: int) -> list[str]:
    """Names of the flags set in `vcgencmd get_throttled`'s bit field."""
    return [name for bit, name in THROTTLE_BITS.items() if value >> bit & 1]


def throttled() -> dict[str, Any] | None:
    """Raspberry Pi under-voltage and throttling flags from `vcgencmd get_throttled`."""
    tool = shutil.which("vcgencmd")
    if tool is None:
        return None
    try:
        output = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=2, check=False).stdout
        value = int(output.strip().split("=", 1)[1], 16)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None
    return {"raw": hex(value), "flags": decode_throttled(value)}


def default_route_interface(root: Path = Path("/")) -> str | None:
    try:
        for line in (root / "proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 1 and fields[1] == "00000000":
                return fields[0]
    except OSError:
        return None
    return None


def interface_type(name: str, root: Path = Path("/")) -> str:
    if (root / f"sys/class/net/{name}/wireless").exists() or name.startswith(("wl", "wlan")):
        return "wifi"
    if name.startswith(("wwan", "ppp", "usb", "rmnet", "cdc")):
        return "cellular"  # 3G/4G/5G modems and USB dongles
    if name.startswith(("eth", "en")):
        return "ethernet"
    return "other"


def wifi_signal_dbm(name: str, root: Path = Path("/")) -> int | None:
    try:
        for line in (root / "proc/net/wireless").read_text().splitlines()[2:]:
            if line.split(":", 1)[0].strip() == name:
                return int(float(line.split()[3].rstrip(".")))
    except (OSError, ValueError, IndexError):
        return None
    return None


def readings() -> dict[str, Any]:
    """The optional heartbeat fields this machine can tell, and only those."""
    values: dict[str, Any] = {}
    temperature = cpu_temp_c()
    if temperature is not None:
        values["cpu_temp_c"] = temperature
    try:
        values["load_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    memory = mem_available_bytes()
    if memory is not None:
        values["mem_available_bytes"] = memory
    flags = throttled()
    if flags is not None:
        values["throttled"] = flags
    interface = default_route_interface()
    if interface is not None:
        network: dict[str, Any] = {"interface": interface, "type": interface_type(interface)}
        signal = wifi_signal_dbm(interface) if network["type"] == "wifi" else None
        if signal is not None:
            network["signal_dbm"] = signal
        values["network"] = network
    return values

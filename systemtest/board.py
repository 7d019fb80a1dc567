"""A booted board under test: the VM plus what a technician would ask it (systemctl, journalctl,
`bangtin-agent ctl`), and the screen read back from the device."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from systemtest.image import ROOT, Image
from systemtest.screen import Look, Screen
from systemtest.source import BASE_PATH, DEVICE, Source
from systemtest.util import StepFailed, log, wait_for
from systemtest.vm import SOURCE_IP, SOURCE_PORT, GuestError, Vm, VmOptions, new_overlay

UNIT = "bangtin-agent"
CONFIG = "/etc/bangtin/agent.yaml"
STORAGE = "/var/lib/bangtin"
GUEST_SRC = "/root/bangtin-agent"
CTL_STATUS = """import json, socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect("/run/bangtin/control.sock")
s.sendall(json.dumps({"command": "status", "args": {}}).encode() + b"\\n")
data = b""
while not data.endswith(b"\\n"):
    chunk = s.recv(65536)
    assert chunk, "the agent closed the socket"
    data += chunk
print(data.decode())
"""


# --break NAME: a deliberate defect in the checkout the board installs; the run must fail naming the step.
BREAKAGES: dict[str, tuple[str, bytes, bytes]] = {  # name -> (file, text, replaced by)
    # A unit that cannot start the agent: a typo in ExecStart's subcommand.
    "unit": ("systemd/bangtin-agent.service", b"bangtin-agent run --config", b"bangtin-agent rnu --config"),
    # An installer that asks apt for a package the board's sources do not have.
    "install": ("scripts/install.sh", b"PACKAGES=(python3 ", b"PACKAGES=(python3 bangtin-no-such-package "),
    # A launcher that never rolls a failed release back (the update part must fail).
    "rollback": ("launcher/bangtin_launch.py", b'point(self.update / "current", Path(previous) if previous else None)',
                 b"pass  # systemtest --break rollback"),
    # An installer without the USB automount rule (the usb part must fail).
    "usb": ("scripts/install.sh", b'run install -m 0644 "$SRC/systemd/80-bangtin-usb.rules"',
            b'echo skipped "$SRC/systemd/80-bangtin-usb.rules"'),
}


def checkout_files() -> list[str]:
    """The checkout as a technician's `git clone` has it: tracked and new files, no .git/.venv."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    return [name for name in sorted({n.decode() for n in listed if n}) if (ROOT / name).is_file()]


def project_tar(breakage: str | None = None) -> bytes:
    """The checkout (`checkout_files`) as a tar, optionally with a deliberate breakage for the negative check."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in checkout_files():
            path = ROOT / name
            data = path.read_bytes()
            if breakage is not None and name == BREAKAGES[breakage][0]:
                old, new = BREAKAGES[breakage][1:]
                if old not in data:
                    raise StepFailed("install: copy the checkout", f"--break {breakage}: {old!r} is not in {name} any more")
                data = data.replace(old, new, 1)
            info = tarfile.TarInfo(f"bangtin-agent/{name}")
            info.size = len(data)
            info.mode = path.stat().st_mode & 0o777
            info.mtime = int(path.stat().st_mtime)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def agent_config(source: Source, sections: dict[str, dict[str, Any]] | None = None, **display: Any) -> str:
    """/etc/bangtin/agent.yaml as the technician fills it in (README "Point a board at the provincial source"),
    with `sections`' keys added (e.g. {"update": {"health_s": 30}})."""
    config: dict[str, dict[str, Any]] = {
        "device": {"id": DEVICE},
        "source": {"url": f"http://{SOURCE_IP}:{SOURCE_PORT}{BASE_PATH}", "token_file": "/etc/bangtin/token",
                   "poll_interval_s": 10},
        "security": {"manifest_keys": [source.key["public_key_b64"]]},
        "report": {"heartbeat_interval_s": 30, "upload_interval_s": 5},
        "display": {"width": 1280, "height": 720, "fullscreen": True, "power_on_command": None,
                    "power_off_command": None, **display},
    }
    for section, keys in (sections or {}).items():
        config.setdefault(section, {}).update(keys)
    return json.dumps(config, ensure_ascii=False, indent=2) + "\n"  # JSON is YAML


@dataclass
class Board:
    image: Image
    workdir: Path
    source: Source
    look: Look
    overlay: Path = field(init=False)
    vm: Vm | None = None
    boots: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    cycles: int = 20  # power cuts
    crashes: int = 4  # crash-loop

    def __post_init__(self) -> None:
        self.overlay = new_overlay(self.image, self.workdir / f"board-{self.image.arch}.qcow2")

    def power_on(self, options: VmOptions | None = None, boot_timeout: float = 240) -> float:
        """Start QEMU and wait for the guest agent; returns seconds from power-on."""
        assert self.vm is None or not self.vm.alive(), "one VM at a time"
        self.boots += 1
        options = options or VmOptions(arch=self.image.arch)
        self.vm = Vm(self.image, self.overlay, self.workdir, f"boot{self.boots:02d}", self.source.port, options)
        self.vm.start()
        return self.vm.wait_guest(boot_timeout)

    @property
    def v(self) -> Vm:
        assert self.vm is not None and self.vm.alive(), "the board is not powered on"
        return self.vm

    # --- technician's view ---------------------------------------------------------------------

    def unit(self, *props: str) -> dict[str, str]:
        names = props or ("ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "Result")
        out = self.v.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in names), timeout=30)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, since_boot: bool = True, priority: str | None = None, output: str = "short-monotonic") -> str:
        args = f"-u {UNIT} --no-pager -o {output}" + (" -b" if since_boot else "") + (f" -p {priority}" if priority else "")
        return self.v.sh(f"journalctl {args}", timeout=60)

    def ctl_status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(self.v.sh(f"bangtin-agent ctl --config {CONFIG} status --json", timeout=60))
        return status

    def status(self) -> dict[str, Any]:
        """`status` straight over the control socket (PROTOCOL.md §9): works while agent.yaml holds a
        refused edit (`ctl` itself needs a valid config to find the socket) and costs no CLI start-up."""
        self.v.write("/tmp/ctlstatus.py", CTL_STATUS.encode())
        answer = json.loads(self.v.sh("python3 /tmp/ctlstatus.py", timeout=60))
        if not answer.get("ok"):
            raise GuestError(f"status over the control socket: {answer}")
        result: dict[str, Any] = answer["result"]
        return result

    def screen(self, keep: str | None = None) -> Screen:
        return self.v.screendump(keep)

    def wait_ready(self, timeout: float) -> dict[str, str]:
        """ActiveState=active with a StatusText (sent with READY=1 and after): the unit reached READY."""
        first = self.unit()

        def ready() -> dict[str, str] | None:
            state = self.unit()
            if state.get("ActiveState") == "failed":
                raise GuestError(f"unit failed: {state}")
            if int(state.get("NRestarts") or 0) - int(first.get("NRestarts") or 0) >= 3 and not state.get("StatusText"):
                raise StepFailed("unit reaches READY", f"the unit restarted 3 times without READY: {state}")
            return state if state.get("ActiveState") == "active" and state.get("StatusText") else None

        return wait_for(ready, timeout, f"{UNIT} to reach READY", interval=0.5)

    def wait_content(self, timeout: float, keep: str | None = None) -> tuple[float, str]:
        """Until the device's pixels show header, an item and the ticker; returns (host monotonic, item)."""
        last: list[Screen] = []

        def content() -> tuple[float, str] | None:
            screen = self.screen()
            last[:] = [screen]
            item = self.look.content(screen)
            return (time.monotonic(), item) if item else None

        try:
            found = wait_for(content, timeout, "header, content and ticker on the device's screen", interval=0.2)
        except TimeoutError as exc:
            detail = self.look.describe(last[0]) if last else "no screendump"
            raise TimeoutError(f"{exc}; last screen: {detail}") from None
        if keep:
            self.screen(keep)
        return found

    def install_source(self, breakage: str | None = None) -> None:
        """Put the checkout where a technician's `git clone` would."""
        self.v.write("/root/bangtin-agent.tar.gz", project_tar(breakage))
        self.v.sh(f"rm -rf {GUEST_SRC} && tar -C /root -xzf /root/bangtin-agent.tar.gz && rm /root/bangtin-agent.tar.gz",
                  what="unpack the checkout in the guest")

    def note(self, message: str) -> None:
        log(f"board: {message}")

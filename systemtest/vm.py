"""One QEMU board: TCG, a virtio disk (qcow2 overlay, cache=writeback: the guest's flushes reach the
host file), virtio-gpu, QMP for screendump, the serial console to a log, a virtio-serial port for
the guest agent, and user networking restricted to the test's own server on the host's loopback.

SIGKILL to the QEMU process is the power cut: the guest's RAM (page cache, unsynced writes) is lost;
what QEMU already wrote to the overlay stays, as on a card that had acknowledged it.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from systemtest.image import Image
from systemtest.screen import Screen, read_ppm
from systemtest.util import StepFailed, log, wait_for

SOURCE_IP = "10.0.2.100"  # where the guest sees the test's reference source
SOURCE_PORT = 8080
SCREEN = (1280, 720)


@dataclass
class Throttle:
    iops_total: int
    bps_total: int


@dataclass
class VmOptions:
    arch: str = "amd64"
    memory_mb: int = 2048
    cpus: int = 2
    throttle: Throttle | None = None
    pcap: Path | None = None  # every frame on the guest's NIC, for bytes on the wire
    usb: bool = False  # an XHCI controller, so USB sticks can be plugged in (`Vm.plug_stick`)


class QmpError(Exception):
    pass


class Qmp:
    """A minimal QMP client (one command at a time)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self._lock = threading.Lock()
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise QmpError("QMP connection closed")
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:
                return message

    def execute(self, command: str, **arguments: Any) -> Any:
        with self._lock:
            self.file.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
            self.file.flush()
            answer = self._read()
        if "error" in answer:
            raise QmpError(f"{command}: {answer['error'].get('desc')}")
        return answer.get("return")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class GuestError(Exception):
    pass


@dataclass
class RunResult:
    rc: int
    out: str
    err: str
    dur: float
    guest_time: float
    timed_out: bool = False

    def check(self, what: str) -> RunResult:
        if self.rc != 0:
            raise GuestError(f"{what} exited {self.rc}{' (timed out)' if self.timed_out else ''}:\n"
                             f"{(self.out + self.err).strip()[-3000:]}")
        return self


class GuestChannel:
    """Host side of systemtest/guestd.py over the virtio-serial chardev socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.hello: dict[str, Any] | None = None
        self.hello_mono: float | None = None  # host monotonic time the guest agent first answered
        self._reader = threading.Thread(target=self._read, name="guest-channel", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    message: dict[str, Any] = json.loads(line)
                except ValueError:
                    continue
                if message.get("event") == "hello" or self.hello is None:
                    self.hello = self.hello or message
                    self.hello_mono = self.hello_mono or time.monotonic()
                request_id = message.get("id")
                with self._lock:
                    future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
                if future is not None:
                    future.set_result(message)
        self._closed = True
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(GuestError("the VM is gone (power cut or QEMU exit)"))

    def request(self, op: str, wait: float = 60, **args: Any) -> dict[str, Any]:
        if self._closed:
            raise GuestError("the VM is gone")
        request_id = next(self._ids)
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[request_id] = future
        self.sock.sendall(json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n")
        try:
            answer = future.result(wait)
        except TimeoutError:
            with self._lock:
                self._pending.pop(request_id, None)
            raise GuestError(f"guest agent did not answer {op} within {wait:.0f} s") from None
        if not answer.get("ok"):
            raise GuestError(f"guest {op}: {answer.get('error')}")
        return answer

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@dataclass
class Vm:
    """A running QEMU. `start()` returns at once; `wait_guest()` waits for the guest agent."""

    image: Image
    overlay: Path
    workdir: Path
    name: str
    source_port: int  # the host's loopback port of the reference source
    options: VmOptions = field(default_factory=VmOptions)
    process: subprocess.Popen[bytes] | None = None
    started_mono: float = 0.0
    qmp: Qmp | None = None
    guest: GuestChannel | None = None
    serial_log: Path | None = None
    _shots: itertools.count[int] = field(default_factory=itertools.count)
    # One screendump at a time: QMP writes the file, we read it back (a screen watcher thread and a
    # part's own waits both take pictures).
    _screen_lock: threading.Lock = field(default_factory=threading.Lock)

    def command(self) -> list[str]:
        work = self.workdir
        drive = f"file={self.overlay},if=none,id=disk0,format=qcow2,cache=writeback,discard=unmap"
        if self.options.throttle is not None:
            drive += (f",throttling.iops-total={self.options.throttle.iops_total}"
                      f",throttling.bps-total={self.options.throttle.bps_total}")
        relay = f"{sys.executable} {Path(__file__).parent / 'relay.py'} 127.0.0.1 {self.source_port}"
        netdev = f"user,id=net0,restrict=on,guestfwd=tcp:{SOURCE_IP}:{SOURCE_PORT}-cmd:{relay}"
        if self.options.arch == "arm64":
            base = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72"]
            console = "ttyAMA0"
        else:
            base = ["qemu-system-x86_64", "-M", "q35", "-cpu", "max"]
            console = "ttyS0"
        command = [
            *base, "-accel", "tcg", "-smp", str(self.options.cpus), "-m", str(self.options.memory_mb),
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", f"root=/dev/vda rw console={console} net.ifnames=0 panic=-1 loglevel=4 "
                       "systemd.show_status=auto",
            "-drive", drive, "-device", "virtio-blk-pci,drive=disk0",
            "-device", f"virtio-gpu-pci,xres={SCREEN[0]},yres={SCREEN[1]}",
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0",
            "-chardev", f"socket,id=ga,path={work / (self.name + '.ga.sock')},server=on,wait=off",
            "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=ga,name=org.bangtin.systemtest",
            "-qmp", f"unix:{work / (self.name + '.qmp.sock')},server=on,wait=off",
            "-serial", f"file:{self.serial_log}",
            "-rtc", "base=utc",
        ]
        if self.options.pcap is not None:
            command += ["-object", f"filter-dump,id=dump0,netdev=net0,file={self.options.pcap}"]
        if self.options.usb:
            command += ["-device", "qemu-xhci,id=xhci"]
        return command

    def start(self) -> Vm:
        for suffix in (".ga.sock", ".qmp.sock"):
            (self.workdir / (self.name + suffix)).unlink(missing_ok=True)
        self.serial_log = self.workdir / f"{self.name}.serial.log"
        command = self.command()
        (self.workdir / f"{self.name}.cmdline").write_text(" ".join(command) + "\n")
        qemu_log = (self.workdir / f"{self.name}.qemu.log").open("ab")
        self.started_mono = time.monotonic()
        self.process = subprocess.Popen(command, stdout=qemu_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        qemu_log.close()

        def sockets_up() -> bool:
            self._check_alive()
            return all((self.workdir / (self.name + s)).exists() for s in (".ga.sock", ".qmp.sock"))

        wait_for(sockets_up, 30, "QEMU's QMP and guest-agent sockets", interval=0.05)
        self.qmp = Qmp(self.workdir / f"{self.name}.qmp.sock")
        self.guest = GuestChannel(self.workdir / f"{self.name}.ga.sock")
        return self

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = (self.workdir / f"{self.name}.qemu.log").read_text(errors="replace")[-2000:]
            raise StepFailed("qemu", f"QEMU exited with {self.process.returncode}: {tail}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_guest(self, timeout: float = 180) -> float:
        """Until the guest agent answers; returns seconds since power-on."""
        assert self.guest is not None

        def answered() -> bool:
            self._check_alive()
            try:
                self.guest.request("ping", wait=1.0)  # type: ignore[union-attr]
            except GuestError:
                return False
            return True

        wait_for(answered, timeout, "the guest agent to answer (boot)", interval=0.05)
        return time.monotonic() - self.started_mono

    # --- guest commands ----------------------------------------------------------------------

    def run(self, sh: str, timeout: float = 60, stdin: bytes | None = None, env: dict[str, str] | None = None,
            ) -> RunResult:
        assert self.guest is not None
        args: dict[str, Any] = {"sh": sh, "timeout": timeout}
        if stdin is not None:
            args["stdin_b64"] = base64.b64encode(stdin).decode()
        if env:
            args["env"] = env
        answer = self.guest.request("run", wait=timeout + 30, **args)
        return RunResult(answer["rc"], base64.b64decode(answer["out_b64"]).decode(errors="replace"),
                         base64.b64decode(answer["err_b64"]).decode(errors="replace"), answer.get("dur", 0.0),
                         answer["time"], bool(answer.get("timed_out")))

    def sh(self, sh: str, timeout: float = 60, what: str | None = None) -> str:
        """Run and return stdout; fail naming `what` (or the command) when it exits non-zero."""
        return self.run(sh, timeout).check(what or sh).out

    def write(self, path: str, data: bytes, mode: str = "0644") -> None:
        assert self.guest is not None
        self.guest.request("write", path=path, data_b64=base64.b64encode(data).decode(), mode=mode)

    def read(self, path: str) -> bytes:
        assert self.guest is not None
        return base64.b64decode(self.guest.request("read", path=path)["data_b64"])

    def clock_offset(self) -> float:
        """Guest wall clock minus host wall clock (s), from one round trip."""
        assert self.guest is not None
        before = time.time()
        answer = self.guest.request("ping", wait=10)
        after = time.time()
        return float(answer["time"]) - (before + after) / 2

    def mono_offset(self) -> float:
        """Host monotonic minus guest CLOCK_MONOTONIC (s), from one round trip: turns the journal's
        monotonic timestamps into the host's time line."""
        assert self.guest is not None
        before = time.monotonic()
        answer = self.guest.request("ping", wait=10)
        after = time.monotonic()
        return (before + after) / 2 - float(answer["mono"])

    # --- screen ------------------------------------------------------------------------------

    def screendump(self, keep: str | None = None) -> Screen:
        """The pixels the virtio-gpu scanout shows now (not the agent's own screenshot)."""
        assert self.qmp is not None
        target = self.workdir / (f"{self.name}.{keep}.ppm" if keep else f"{self.name}.screen.ppm")
        with self._screen_lock:
            self.qmp.execute("screendump", filename=str(target))
            return read_ppm(target.read_bytes())

    # --- USB ---------------------------------------------------------------------------------

    def plug_stick(self, image: Path, name: str) -> None:
        """Hot-plug a USB stick holding `image` (a raw filesystem image) into the XHCI controller,
        write-protected, as a technician plugs one into the board."""
        assert self.qmp is not None and self.options.usb, "boot the board with VmOptions(usb=True)"
        self.qmp.execute("blockdev-add", **{"driver": "raw", "node-name": name, "read-only": True,
                                            "file": {"driver": "file", "filename": str(image), "read-only": True}})
        self.qmp.execute("device_add", driver="usb-storage", bus="xhci.0", drive=name, id=name, removable=True)

    def unplug_stick(self, name: str, timeout: float = 30) -> None:
        """Pull the stick out: the guest sees the device go; its image is let go once it has."""
        assert self.qmp is not None
        self.qmp.execute("device_del", id=name)

        def released() -> bool:
            assert self.qmp is not None
            self.qmp.execute("blockdev-del", **{"node-name": name})  # fails while the device still holds it
            return True

        wait_for(released, timeout, f"USB stick {name} to be released by the guest", interval=0.2)

    # --- power -------------------------------------------------------------------------------

    def power_cut(self) -> None:
        """SIGKILL QEMU: the board loses power mid-whatever."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self._disconnect()

    def wait_exit(self, timeout: float) -> int:
        """The guest powered itself off (or rebooted: -no-reboot makes that an exit)."""
        assert self.process is not None
        code = self.process.wait(timeout)
        self._disconnect()
        return code

    def shutdown(self, timeout: float = 120) -> None:
        """A clean power-off from inside the guest; a power cut if it does not finish in time."""
        if not self.alive():
            self._disconnect()
            return
        try:
            self.run("systemctl poweroff --no-block", timeout=20)
            self.wait_exit(timeout)
        except (GuestError, subprocess.TimeoutExpired):
            log(f"{self.name}: clean power-off did not finish in {timeout:.0f} s; cutting power")
            self.power_cut()

    def _disconnect(self) -> None:
        if self.guest is not None:
            self.guest.close()
        if self.qmp is not None:
            self.qmp.close()
        self.guest, self.qmp = None, None


def new_overlay(image: Image, path: Path) -> Path:
    """A per-run qcow2 on top of the cached raw disk (which stays untouched)."""
    path.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk), str(path)],
                   check=True)
    return path


def require_tools(arch: str) -> None:
    binary = "qemu-system-aarch64" if arch == "arm64" else "qemu-system-x86_64"
    missing = [tool for tool in (binary, "qemu-img", "mmdebstrap", "mkfs.ext4", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise StepFailed("host tools", f"missing {', '.join(missing)} (scripts/systemtest installs them with apt)")

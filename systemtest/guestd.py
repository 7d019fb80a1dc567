"""The guest agent: runs inside the board under test, answers the host over a virtio-serial port.

Baked into the image as /usr/local/lib/systemtest/guestd.py (started by systemtest-guestd.service,
early in boot). It is the host's only way in: no SSH, no network, so shaping the guest's link with
`tc netem` never cuts the test's own control channel, and a power cut loses nothing but the VM.

Protocol: one JSON object per line each way. The host sends {"id", "op", ...}; the guest answers
{"id", "ok", ...} plus "time" (its wall clock) and "mono" (its CLOCK_MONOTONIC). Requests run on
their own threads, so a long command (install.sh) never blocks a status poll. On start the guest
says {"event": "hello", "boot_id", "uptime_s"}.

Ops: ping; run (argv or sh, timeout, stdin_b64) → rc, out_b64, err_b64; write (path, data_b64, mode);
read (path) → data_b64. Stdlib only: this runs on the stock Debian python3 before anything is installed.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PORT_NAME = "org.bangtin.systemtest"
MAX_LINE = 64 * 1024 * 1024


def find_port() -> str:
    """/dev/vportNpM whose name is ours (udev's /dev/virtio-ports symlink may not exist yet)."""
    for entry in sorted(Path("/sys/class/virtio-ports").glob("vport*")):
        try:
            if (entry / "name").read_text().strip() == PORT_NAME:
                return f"/dev/{entry.name}"
        except OSError:
            continue
    raise FileNotFoundError(PORT_NAME)


class Channel:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self.lock:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self.fd, view)
                except BlockingIOError:
                    select.select([], [self.fd], [], 1.0)
                    continue
                except OSError:
                    return  # host gone (power cut of the test, or a reconnect): the answer is lost
                view = view[written:]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def handle(request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "ping":
        return {"boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                "uptime_s": float(Path("/proc/uptime").read_text().split()[0])}
    if op == "run":
        argv = request.get("argv") or ["/bin/sh", "-c", request["sh"]]
        stdin = base64.b64decode(request["stdin_b64"]) if request.get("stdin_b64") else None
        started = time.monotonic()
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=request.get("timeout", 60),
                                  env={**os.environ, **request.get("env", {})}, check=False)
        except subprocess.TimeoutExpired as exc:
            return {"rc": -1, "timed_out": True, "out_b64": b64(exc.stdout or b""), "err_b64": b64(exc.stderr or b""),
                    "dur": time.monotonic() - started}
        return {"rc": done.returncode, "out_b64": b64(done.stdout), "err_b64": b64(done.stderr),
                "dur": time.monotonic() - started}
    if op == "write":
        path = Path(request["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".guestd-tmp")
        temporary.write_bytes(base64.b64decode(request["data_b64"]))
        os.chmod(temporary, int(request.get("mode", "0644"), 8))
        os.replace(temporary, path)
        return {"size": path.stat().st_size}
    if op == "read":
        return {"data_b64": b64(Path(request["path"]).read_bytes())}
    raise ValueError(f"unknown op {op!r}")


def serve(channel: Channel, request: dict[str, Any]) -> None:
    try:
        answer = {"ok": True, **handle(request)}
    except Exception as exc:  # noqa: BLE001 — reported to the host, never kills the agent
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    channel.send({"id": request.get("id"), "time": time.time(), "mono": time.monotonic(), **answer})


def main() -> int:
    while True:  # the port appears when virtio_console binds; boot goes on meanwhile
        try:
            path = find_port()
            break
        except FileNotFoundError:
            time.sleep(0.1)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    channel = Channel(fd)
    hello = handle({"op": "ping"})
    channel.send({"event": "hello", "time": time.time(), "mono": time.monotonic(), **hello})
    print(f"guestd: listening on {path}", file=sys.stderr, flush=True)
    buffer = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        events = poller.poll(1000)
        if not events:
            continue
        if events[0][1] & select.POLLHUP and not events[0][1] & select.POLLIN:
            time.sleep(0.1)  # no host on the other end: it connects again after a restart of the test
            continue
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            time.sleep(0.1)
            continue
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
            except ValueError:
                continue  # a fragment from before a reconnect
            threading.Thread(target=serve, args=(channel, request), daemon=True).start()
        if len(buffer) > MAX_LINE:
            buffer = b""


if __name__ == "__main__":
    sys.exit(main())

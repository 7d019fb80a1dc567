"""Figures for the attack classes of issue 10: what each costs the board now (peak memory, seconds
blocked, exit codes), measured on the real agent process; `--agent-root` runs another checkout
(e.g. the commit before the fix) through the same attacks for before/after figures.

    python bench/bench_hostile.py [--agent-root DIR]

Attacks on the running agent (a `file://` folder, SDL dummy driver, 1280x720): a manifest with
`speed_px_s: Infinity`; one with a 205,000-character ticker line; a 16000×16000 PNG; an 8192×8192
H.264 file; an alert body of 6000 '-' (and 4000, the most an alert may carry now); a 30 MB message
published retained on the command topic (mosquitto, when installed). In-process: 40,000
signatures, a 3 MB payloadType, 50,000 nested brackets, a server that drips one byte every 0.5 s.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from agent.ctlsocket import ControlUnavailable, request  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def huge_png(path: Path, side: int) -> None:
    row = b"\x00" + b"\x00" * (side // 8)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(row * side, 9)) + chunk(b"IEND", b""))


def huge_video(path: Path, side: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame(side, side, "yuv420p")
        for plane in frame.planes:
            plane.update(b"\x80" * plane.buffer_size)
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


class Board:
    """The agent under test, on a folder we write to as an attacker with the signing key would."""

    def __init__(self, root: Path, work: Path, mqtt_port: int | None) -> None:
        self.root, self.work = root, work
        self.folder = work / "content"
        (self.folder / "media").mkdir(parents=True)
        config: dict[str, Any] = {"device": {"id": "bench-board"}, "source": {"url": self.folder.as_uri()},
                                  "storage": {"dir": str(work / "state")}, "control": {"socket": str(work / "ctl.sock")},
                                  "display": {"width": 1280, "height": 720, "fullscreen": False}}
        if mqtt_port:
            config["mqtt"] = {"url": f"mqtt://127.0.0.1:{mqtt_port}"}
        (work / "agent.yaml").write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    def publish(self, serial: int, **changes: Any) -> None:
        manifest = {"schema": "bangtin.manifest/1", "serial": serial, "issued_at": "2026-11-26T08:00:00+07:00",
                    "items": [{"id": "t", "type": "text", "title": "THÔNG BÁO", "body": "Nội dung", "duration_s": 600}],
                    **changes}
        (self.folder / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))

    def media(self, path: Path, kind: str, mime: str) -> dict[str, Any]:
        import hashlib

        data = path.read_bytes()
        target = self.folder / "media" / path.name
        target.write_bytes(data)
        return {"id": "m1", "url": f"media/{path.name}", "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data), "type": mime}

    def start(self) -> None:
        env = dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
        self.process = subprocess.Popen([sys.executable, "-m", "agent", "--log-level", "WARNING", "run", "--config",
                                         str(self.work / "agent.yaml")], cwd=self.root, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            response = request(self.work / "ctl.sock", "status", timeout=timeout)
        except (ControlUnavailable, OSError, ValueError):
            return None
        return response.get("result")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def settle(board: Board, seconds: float) -> dict[str, Any]:
    """Watch the board for `seconds`: is it alive, does it answer, how long did one answer take at most."""
    slowest, answered = 0.0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and board.alive():
        asked = time.monotonic()
        if board.status(timeout=30) is not None:
            answered += 1
        slowest = max(slowest, time.monotonic() - asked)
        time.sleep(0.2)
    return {"alive": board.alive(), "answers": answered, "slowest_answer_s": round(slowest, 2)}


def attack(root: Path, name: str, setup: Any, seconds: float = 8.0, mqtt_port: int | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        board = Board(root, Path(tmp), mqtt_port)
        board.publish(1)
        board.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and board.alive() and not (board.status() or {}).get("current_item"):
            time.sleep(0.1)
        setup(board)
        figures = settle(board, seconds)
        status = board.status() or {}
        figures["peak_rss_mb"] = peak_rss_mb(board.process.pid) if board.alive() else None  # type: ignore[union-attr]
        figures["errors"] = [e[:120] for e in status.get("errors", [])][:3]
        figures["exit_code"] = board.stop()
        print(f"{name}: {json.dumps(figures, ensure_ascii=False)}", file=sys.stderr)
        return figures


def in_process() -> dict[str, Any]:
    """Parser attacks in this process, with whichever agent this script's checkout has."""
    from agent.manifest import accept_manifest

    try:
        from agent.envelope import MANIFEST_PAYLOAD_TYPE, load_trusted_keys
        from agent.models import ManifestRejected as Refused
    except ImportError:  # an agent from before envelope.py (for before/after figures)
        from agent.manifest import MANIFEST_PAYLOAD_TYPE, load_trusted_keys  # type: ignore[attr-defined,no-redef]
        from agent.manifest import ManifestError as Refused  # type: ignore[attr-defined,no-redef]

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    keys = load_trusted_keys([base64.b64encode(public).decode()])
    # A well-formed signature by another key: each one costs a full verification to refuse.
    wrong = base64.b64encode(Ed25519PrivateKey.generate().sign(b"something else")).decode()
    results: dict[str, Any] = {}
    for name, raw in [
        ("40000_signatures", json.dumps({"payloadType": MANIFEST_PAYLOAD_TYPE, "payload": "e30=",
                                         "signatures": [{"sig": wrong}] * 40_000}).encode()),
        ("3MB_payloadType", json.dumps({"payloadType": "x" * 3_000_000, "payload": "", "signatures": []}).encode()),
        ("50000_nested_brackets", b"[" * 50_000 + b"]" * 50_000),
    ]:
        started = time.process_time()
        try:
            accept_manifest(raw, keys=keys, device_id="b", groups=(), last_serial=None)
            outcome = "accepted"
        except Refused as exc:
            outcome = f"refused ({len(str(exc))} chars): {str(exc)[:80]}"
        except Exception as exc:  # noqa: BLE001 — a bench reports whatever happens
            outcome = f"{type(exc).__name__} escaped"
        results[name] = {"cpu_s": round(time.process_time() - started, 3), "outcome": outcome}
    results["drip_one_byte_per_0.5_s"] = drip()
    return results


def drip() -> dict[str, Any]:
    """Seconds a source thread is held by a server that sends one byte every 0.5 s (manifest deadline 2 s)."""
    from agent.sync.client import ClientSettings, HttpClient, SourceError

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def serve() -> None:
        connection, _ = server.accept()
        connection.recv(4096)
        body = b"x" * 200
        try:
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
            for byte in body:
                connection.sendall(bytes([byte]))
                time.sleep(0.5)
        except OSError:
            pass
        connection.close()

    threading.Thread(target=serve, daemon=True).start()
    client = HttpClient(ClientSettings(f"http://127.0.0.1:{port}/api", None, None, "bench", read_timeout_s=5))
    started = time.monotonic()
    outcome = "read it all"
    try:
        with client.get(f"http://127.0.0.1:{port}/api/x", {}, 2.0, kind="manifest") as reply:
            client.read_limited(reply, 10_000, time.monotonic() + 2.0)
    except SourceError as exc:
        outcome = str(exc)
    return {"held_s": round(time.monotonic() - started, 2), "would_take_s": 100, "outcome": outcome}


def mosquitto() -> tuple[subprocess.Popen[bytes], int] | None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = Path(tempfile.mkdtemp()) / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # mosquitto has no readiness signal; only this benchmark waits like this
    return process, port


def retained_30mb(port: int) -> Any:
    def setup(board: Board) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="attacker")
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.publish("bangtin/devices/bench-board/commands", b"{" + b" " * (30 * 1024 * 1024) + b"}", qos=1,
                       retain=True).wait_for_publish(30)
        client.loop_stop()
        client.disconnect()
        board.stop()  # and it is delivered again at every start: restart once to see that
        board.start()
        time.sleep(3)
    return setup


def main() -> None:
    parser = argparse.ArgumentParser(description="figures for issue 10's attack classes")
    parser.add_argument("--agent-root", type=Path, default=ROOT)
    args = parser.parse_args()
    root = args.agent_root.resolve()
    results: dict[str, Any] = {"agent": str(root)}
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        huge_png(files / "bomb.png", 16_000)
        huge_video(files / "bomb.mp4", 8192)

        def manifest_attack(**changes: Any) -> Any:
            def setup(board: Board) -> None:
                board.publish(2, **changes)
                time.sleep(3)
                board.stop()  # the restored manifest at the next start is where it used to loop
                board.start()
            return setup

        def media_attack(name: str, mime: str, kind: str) -> Any:
            def setup(board: Board) -> None:
                entry = board.media(files / name, kind, mime)
                board.publish(2, media=[entry], items=[{"id": "x", "type": kind, "media": "m1", "duration_s": 30}])
            return setup

        def alert_attack(body: str) -> Any:
            def setup(board: Board) -> None:
                try:
                    answer = request(board.work / "ctl.sock", "alert", {"title": "KHẨN", "body": body, "minutes": 5},
                                     timeout=60)
                    print(f"  alert answer: {str(answer)[:120]}", file=sys.stderr)
                except ControlUnavailable as exc:
                    print(f"  alert: {exc}", file=sys.stderr)
            return setup

        results["speed_px_s_Infinity"] = attack(root, "Infinity", manifest_attack(
            layout={"ticker": {"speed_px_s": float("inf")}}, ticker=[{"id": "k", "text": "x"}]))
        results["ticker_line_205000_chars"] = attack(root, "ticker", manifest_attack(
            ticker=[{"id": "k", "text": "Bão " * 51_250}]))
        results["png_16000x16000"] = attack(root, "png", media_attack("bomb.png", "image/png", "image"))
        results["h264_8192x8192"] = attack(root, "h264", media_attack("bomb.mp4", "video/mp4", "video"))
        results["alert_body_6000_dashes"] = attack(root, "alert6000", alert_attack("-" * 6000), seconds=12)
        results["alert_body_4000_dashes"] = attack(root, "alert4000", alert_attack("-" * 4000), seconds=12)
        broker = mosquitto()
        if broker is not None:
            try:
                results["retained_30MB_command"] = attack(root, "retained", retained_30mb(broker[1]), mqtt_port=broker[1])
            finally:
                broker[0].terminate()
                broker[0].wait()
    results["in_process"] = in_process()
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

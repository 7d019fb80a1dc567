"""MQTT alert latency: from publishing a signed alert to the first frame showing it. Prints figures.

    python bench/bench_mqtt.py [--alerts 20]

Runs mosquitto on a loopback port and the real agent (SDL dummy driver, 1920x1080). The agent notes
when a new scene's first frame is presented on CLOCK_MONOTONIC, which is system-wide, so publish and
frame times compare directly without polling screenshots.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
import yaml  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.ctlsocket import request  # noqa: E402
from agent.envelope import COMMAND_PAYLOAD_TYPE, MANIFEST_PAYLOAD_TYPE, sign_envelope  # noqa: E402
from bench.benchkit import free_port, wait  # noqa: E402

DEVICE = "bench-board"


def alert_frame_after(sock: Path, sent: float) -> float | None:
    """When the alert's first frame was presented, once it has been (CLOCK_MONOTONIC)."""
    status = request(sock, "status")["result"]
    shown = status["display"]["scene_shown_mono"]
    return shown if status["alert_active"] and shown is not None and shown >= sent else None


def main() -> None:
    parser = argparse.ArgumentParser(description="MQTT alert latency")
    parser.add_argument("--alerts", type=int, default=20)
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                             f"user {os.environ.get('USER', 'root')}\n")
        broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        content = work / "content"
        content.mkdir()
        manifest = {"schema": "bangtin.manifest/1", "serial": 1, "issued_at": "2026-11-26T08:00:00+07:00",
                    "audience": [DEVICE],
                    "items": [{"id": "t", "type": "text", "title": "THÔNG BÁO", "body": "Nội dung", "duration_s": 3600}],
                    "ticker": [{"id": "k", "text": "Người dân chủ động phòng chống bão"}]}
        payload = json.dumps(manifest, ensure_ascii=False).encode()
        (content / "manifest.json").write_text(json.dumps(sign_envelope(payload, MANIFEST_PAYLOAD_TYPE, key)))
        config = {"device": {"id": DEVICE}, "source": {"url": content.as_uri()}, "security": {"manifest_keys": [public]},
                  "mqtt": {"url": f"mqtt://127.0.0.1:{port}"}, "storage": {"dir": str(work / "state")},
                  "display": {"width": 1920, "height": 1080, "fullscreen": False},
                  "control": {"socket": str(work / "ctl.sock")}}
        (work / "agent.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
        env = dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
        agent = subprocess.Popen([sys.executable, "-m", "agent", "--log-level", "WARNING", "run", "--config",
                                  str(work / "agent.yaml")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        sock = work / "ctl.sock"
        try:
            wait(lambda: request(sock, "status")["result"]["mqtt"]["connected"], 30, "the agent on MQTT", interval=0.005)
            wait(lambda: request(sock, "status")["result"]["current_item"] == "t", 30, "the item on screen", interval=0.005)
            operator = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-operator")
            operator.connect("127.0.0.1", port)
            operator.loop_start()
            latencies = []
            for n in range(args.alerts):
                issued = dt.datetime.now(dt.UTC)
                body = {"id": f"bench-{n}-{hashlib.sha1(os.urandom(8)).hexdigest()[:8]}", "command": "alert",
                        "audience": [DEVICE], "issued_at": issued.isoformat(),
                        "expires_at": (issued + dt.timedelta(minutes=10)).isoformat(),
                        "args": {"title": "CẢNH BÁO KHẨN CẤP", "body": f"Bão số {n}", "minutes": 5}}
                envelope = json.dumps(sign_envelope(json.dumps(body, ensure_ascii=False).encode(), COMMAND_PAYLOAD_TYPE, key))
                sent = time.monotonic()
                operator.publish(f"bangtin/devices/{DEVICE}/commands", envelope, qos=1)
                shown = wait(lambda sent=sent: alert_frame_after(sock, sent), 10, "the alert on screen", interval=0.005)
                latencies.append((shown - sent) * 1000)
                request(sock, "clear_alert")
                time.sleep(0.3)  # let the item come back before the next alert
            operator.loop_stop()
            operator.disconnect()
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
            broker.terminate()
            broker.wait(10)
    latencies.sort()
    print(json.dumps({"alerts": len(latencies), "publish_to_first_frame_ms": {
        "median": round(latencies[len(latencies) // 2], 1),
        "p95": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
        "max": round(latencies[-1], 1)}, "display": "dummy 1920x1080", "broker": "mosquitto on loopback"}, indent=2))


if __name__ == "__main__":
    main()

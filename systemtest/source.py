"""The project's reference source (refsource) on the host's loopback, with the switches the system
test needs: refuse uploads (records must pend on the board), a bandwidth cap on media (so a power cut
can land mid-download), and an honest count of the media bytes handed to the kernel per request.

The guest reaches it as http://10.0.2.100:8080 through QEMU's guestfwd (see vm.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from refsource.cli import keygen, load_site, publish
from refsource.server import Handler, ReferenceServer, SourceState, strong_etag

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "xa-thu-nghiem-01"
TOKEN = "systemtest-token-7f3a"
BASE_PATH = "/api/bangtin/v1"


@dataclass
class Switches:
    refuse_uploads: bool = False  # 503 to playlogs: records pend in the board's outbox
    media_rate_bps: float | None = None  # cap per media response, bytes per second
    sent_per_media: dict[str, int] = field(default_factory=dict)  # url path -> body bytes written to the socket
    media_requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # path, Range, status
    uploads_refused: int = 0
    active: set[str] = field(default_factory=set)  # media paths with a response being written now


class SystemTestHandler(Handler):
    """refsource's handler plus the switches above; everything else is the reference behaviour."""

    server: SystemTestServer

    def setup(self) -> None:
        # A small send buffer, so bytes "sent" are close to bytes that left the host (a cut link
        # strands at most this much in the kernel), and the bandwidth cap paces the wire.
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        super().setup()

    def do_POST(self) -> None:
        switches = self.server.switches
        if switches.refuse_uploads and self.path.endswith("/playlogs"):
            self.state.wire.received += len(self.requestline)
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            with self.state.lock:
                switches.uploads_refused += 1
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"uploads refused by the test", {"Retry-After": "5"})
            return
        super().do_POST()

    def _media(self, file: Path) -> None:
        switches = self.server.switches
        data = file.read_bytes()
        total = len(data)
        etag = strong_etag(data)
        start, status = 0, HTTPStatus.OK
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        range_header, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        path = self.path.split("?")[0]
        if range_header and (if_range is None or if_range == etag) and range_header.startswith("bytes="):
            start = int(range_header[6:].split("-")[0])
            if start >= total:
                self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", {"Content-Range": f"bytes */{total}"})
                return
            data = data[start:]
            status = HTTPStatus.PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{total - 1}/{total}"
        with self.state.lock:
            switches.media_requests.append((path, range_header, int(status)))
        self._head(status, {"Content-Length": str(len(data)), **headers})
        sent = 0
        chunk = 16 * 1024
        began = time.monotonic()
        with self.state.lock:
            switches.active.add(path)
        try:
            while sent < len(data):
                if switches.media_rate_bps:
                    due = began + sent / switches.media_rate_bps
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)  # the bandwidth cap itself, not a synchronisation
                piece = data[sent:sent + chunk]
                self.wfile.write(piece)
                sent += len(piece)
                with self.state.lock:
                    switches.sent_per_media[path] = switches.sent_per_media.get(path, 0) + len(piece)
        except OSError:
            self.close_connection = True  # the board went away (power cut, link down): it resumes later
            return
        finally:
            with self.state.lock:
                switches.active.discard(path)
        self._record(status, sent)


class SystemTestServer(ReferenceServer):
    def __init__(self, address: tuple[str, int], state: SourceState) -> None:
        super().__init__(address, state)
        self.RequestHandlerClass = SystemTestHandler
        self.switches = Switches()


class Source:
    """A site on disk (content folder -> signed manifest), served on 127.0.0.1:<port>."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.key_path = workdir / "province-key.json"
        self.key = keygen(self.key_path)
        # Kept apart as a province keeps them (PROTOCOL.md §11, §12): a leaked content key installs no
        # code and enrols no board.
        self.release_key_path = workdir / "release-key.json"
        self.release_key = keygen(self.release_key_path)
        self.provision_key_path = workdir / "provision-key.json"
        self.provision_key = keygen(self.provision_key_path)
        self.content = workdir / "content"
        self.site = workdir / "site"
        self.content.mkdir(parents=True, exist_ok=True)
        self.state = SourceState(base_path=BASE_PATH, token=TOKEN)
        self.server = SystemTestServer(("127.0.0.1", 0), self.state)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="refsource", daemon=True)
        self._thread.start()

    @property
    def switches(self) -> Switches:
        return self.server.switches

    def publish(self, manifest: dict[str, Any], files: dict[str, Path], *, release: Path | None = None,
                device: str = DEVICE) -> int:
        """Sign `manifest` (media urls name keys of `files`) for `device` and serve it; returns the
        serial. With `release` (a release document) it is the province's own command line,
        `python -m refsource publish --release`, as docs/updates.md tells a province to run it."""
        for name, path in files.items():
            target = self.content / name
            if not target.exists():
                shutil.copyfile(path, target)
        (self.content / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
        if release is None:
            serial = int(publish(self.content, self.site, device, self.key_path)["serial"])
        else:
            out = _refsource("publish", "--content", self.content, "--site", self.site, "--device", device,
                             "--key", self.key_path, "--release", release)
            serial = int(out.split()[2])  # "published serial N for …"
        with self.state.lock:
            load_site(self.site, self.state)
        return serial

    def release(self, wheels: Path, version: str, serial: int, device: str = DEVICE) -> Path:
        """`python -m refsource release`: sign release `serial` of every wheel in `wheels` into the
        site, addressed to `device`; returns the release document to `publish` with."""
        _refsource("release", "--wheels", wheels, "--key", self.release_key_path, "--version", version,
                   "--site", self.site, "--serial", str(serial), "--device", device)
        with self.state.lock:
            load_site(self.site, self.state)
        return self.site / "releases" / f"release-{serial}.json"

    def sent_under(self, prefix: str) -> dict[str, int]:
        """Body bytes the source handed the board, per path under `prefix` (e.g. the releases)."""
        with self.state.lock:
            return {path: sent for path, sent in self.switches.sent_per_media.items() if path.startswith(prefix)}

    def media_url(self, path: Path) -> str:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return f"{BASE_PATH}/media/{sha}{path.suffix.lower()}"

    def records(self) -> dict[str, dict[str, Any]]:
        with self.state.lock:
            return dict(self.state.playlogs)

    def heartbeats(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return list(self.state.heartbeats)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _refsource(*arguments: str | Path) -> str:
    """Run the reference source's command line (the tool a province runs); its stdout."""
    done = subprocess.run([sys.executable, "-m", "refsource", *map(str, arguments)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"python -m refsource {arguments[0]}: {(done.stderr or done.stdout).strip()[-1500:]}")
    return done.stdout

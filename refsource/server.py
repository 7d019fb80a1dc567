"""The reference source: the server side of the device protocol (PROTOCOL.md §2), for tests and
development. Not part of the agent (the agent never imports it).

Serves per-device manifests with strong ETags and 304s, media with `Range`/`If-Range` (206/416),
and keeps heartbeats, playlogs (de-duplicated by record id) and screenshots. `Faults` switches
make it misbehave the ways a provincial server and a 3G link do, and `wire` counts every byte
that crosses the socket, for the benchmark.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from refsource import uploads
from refsource.boards import BoardKeys

RANGE_PATTERN = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Faults:
    """Misbehaviour switches. Counters (`*_times`) apply to that many matching requests, then stop."""

    cut_media_after_bytes: int | None = None  # close the connection after sending this many body bytes
    cut_times: int = 0
    stall_s: float = 0.0  # sleep before sending any body byte
    stall_times: int = 0
    unavailable_times: int = 0  # answer 503 this many times
    retry_after_s: int | None = None  # with 503 (and 429)
    wrong_media_bytes: bool = False  # flip bytes of every media body
    extra_media_bytes: int = 0  # send this many more bytes than the file has (declared size is exceeded)
    date_offset_s: float = 0.0  # shift the Date header (a board with a wrong clock sees the difference)
    drip_interval_s: float = 0.0  # send the body one byte at a time, this far apart (defeats per-read timeouts)
    drip_times: int = 0
    drip_headers: bool = False  # drip the status line and headers too, not only the body
    apply_to: str = "media"  # "media", "manifest" or "all": which requests cut/stall/unavailable touch
    only_path: str | None = None  # and, when set, only requests whose path contains this


@dataclass
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]
    status: int
    body_bytes_sent: int
    at: float = field(default_factory=time.monotonic)
    peer_port: int = 0  # the client's port: which connection carried it (a benchmark's proxy knows its ports)
    tls_resumed: bool | None = None  # None: plain HTTP
    records: int = 0  # playlog records in the batch


@dataclass
class Wire:
    """Bytes that crossed the socket in each direction (headers and bodies)."""

    received: int = 0
    sent: int = 0

    def reset(self) -> None:
        self.received = 0
        self.sent = 0


@dataclass
class SourceState:
    base_path: str  # e.g. "/api/bangtin/v1"
    token: str | None = None
    manifests: dict[str, bytes] = field(default_factory=dict)  # device id → body
    media: dict[str, Path] = field(default_factory=dict)  # url path → file
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    playlogs: dict[str, dict[str, Any]] = field(default_factory=dict)  # record id → record
    playlog_batches: int = 0
    screenshots: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    logs: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    board_keys: BoardKeys = field(default_factory=BoardKeys)
    requests: list[RequestRecord] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    wire: Wire = field(default_factory=Wire)
    lock: threading.Lock = field(default_factory=threading.Lock)
    site: Path | None = None  # when set, playlogs and heartbeats are kept there too (refsource/uploads.py)


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class _CountingWriter:
    def __init__(self, raw: Any, wire: Wire) -> None:
        self._raw = raw
        self._wire = wire

    def write(self, data: bytes) -> int:
        self._wire.sent += len(data)
        return int(self._raw.write(data))

    def flush(self) -> None:
        self._raw.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class Handler(BaseHTTPRequestHandler):
    server: ReferenceServer
    protocol_version = "HTTP/1.1"  # keep-alive, as a real source (and the agent's Session) would use

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `state.requests` instead of stderr

    _batch_records = 0

    def setup(self) -> None:
        super().setup()
        self.wfile = _CountingWriter(self.wfile, self.server.state.wire)  # type: ignore[assignment]

    # --- helpers ---------------------------------------------------------------------------------

    @property
    def state(self) -> SourceState:
        return self.server.state

    def _take(self, counter: str) -> bool:
        """Consume one use of a fault counter that applies to this request."""
        faults = self.state.faults
        kind = "manifest" if self.path.endswith("/manifest") else "media"
        if faults.apply_to not in ("all", kind):
            return False
        if faults.only_path is not None and faults.only_path not in self.path:
            return False
        with self.state.lock:
            remaining = getattr(faults, counter)
            if remaining > 0:
                setattr(faults, counter, remaining - 1)
                return True
        return False

    def _record(self, status: int, sent: int) -> None:
        resumed = getattr(self.connection, "session_reused", None)
        with self.state.lock:
            self.state.requests.append(RequestRecord(self.command, self.path, dict(self.headers.items()), status, sent,
                                                     peer_port=self.client_address[1], tls_resumed=resumed,
                                                     records=self._batch_records))

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The `Date` header http.server sends, shifted by the fault switch."""
        return email.utils.formatdate((timestamp or time.time()) + self.state.faults.date_offset_s, usegmt=True)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        if self._take("drip_times"):
            self._drip(status, body, {"Content-Length": str(len(body)), **(headers or {})})
            return
        # Recorded before answering: a client that has the answer can rely on the record being there.
        self._record(status, len(body))
        self._head(status, {"Content-Length": str(len(body)), **(headers or {})})
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _drip(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        """A hostile or broken server: one byte, a pause, one byte… until the client gives up."""
        interval = self.state.faults.drip_interval_s
        head = f"HTTP/1.1 {status} OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        raw = head.encode() + body if self.state.faults.drip_headers else body
        if not self.state.faults.drip_headers:
            self._head(status, headers)
            self.wfile.flush()
        sent = 0
        try:
            for byte in raw:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                sent += 1
                time.sleep(interval)
        except OSError:
            pass  # the client cut it: what a board must do
        self.close_connection = True
        self._record(status, sent)

    def _authorised(self) -> bool:
        token = self.state.token
        if token is None or self.headers.get("Authorization") == f"Bearer {token}":
            return True
        self._send(HTTPStatus.UNAUTHORIZED, b'{"error": "bad token"}', {"Content-Type": "application/json"})
        return False

    def _unavailable(self) -> bool:
        if not self._take("unavailable_times"):
            return False
        headers = {"Retry-After": str(self.state.faults.retry_after_s)} if self.state.faults.retry_after_s else {}
        self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"busy", headers)
        return True

    def _relative(self) -> str | None:
        path = urlsplit(self.path).path
        base = self.state.base_path.rstrip("/")
        return path[len(base) + 1:] if path.startswith(base + "/") else None

    def _read_body(self) -> tuple[bytes, bytes]:
        """(the bytes as sent, the body decoded)."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        self.state.wire.received += length
        return raw, gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw

    # --- GET -------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self.state.wire.received += len(self.requestline) + sum(len(k) + len(v) + 4 for k, v in self.headers.items()) + 4
        if not self._authorised() or self._unavailable():
            return
        relative = self._relative()
        match = re.fullmatch(r"devices/([^/]+)/manifest", relative or "")
        if match:
            self._manifest(match.group(1))
            return
        path = urlsplit(self.path).path
        if path in self.state.media:
            self._media(self.state.media[path])
            return
        self._send(HTTPStatus.NOT_FOUND, b"not found")

    def _manifest(self, device: str) -> None:
        body = self.state.manifests.get(device)
        if body is None:
            self._send(HTTPStatus.NOT_FOUND, b"no manifest for this device")
            return
        etag = strong_etag(body)
        if self.headers.get("If-None-Match") == etag:
            self._send(HTTPStatus.NOT_MODIFIED, b"", {"ETag": etag})
            return
        if self._take("stall_times"):
            time.sleep(self.state.faults.stall_s)
        self._send(HTTPStatus.OK, body, {"ETag": etag, "Content-Type": "application/vnd.bangtin.manifest+json"})

    def _media(self, file: Path) -> None:
        data = file.read_bytes()
        faults = self.state.faults
        if faults.wrong_media_bytes:
            data = bytes(b ^ 0x5A for b in data)
        data += b"\0" * faults.extra_media_bytes
        total = len(data)
        etag = strong_etag(data)
        start, status = 0, HTTPStatus.OK
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if range_header and (if_range is None or if_range == etag):
            match = RANGE_PATTERN.match(range_header)
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
                if start >= len(data):
                    self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                data = data[start:end + 1]
                status = HTTPStatus.PARTIAL_CONTENT
                headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{total}"
        if self._take("stall_times"):
            time.sleep(faults.stall_s)
        if self._take("drip_times"):
            self._drip(status, data, {"Content-Length": str(len(data)), **headers})
            return
        cut = faults.cut_media_after_bytes if self._take("cut_times") else None
        self._head(status, {"Content-Length": str(len(data)), **headers})
        body = data if cut is None else data[:cut]
        self.wfile.write(body)
        self._record(status, len(body))
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True  # the link drops mid-file

    # --- POST ------------------------------------------------------------------------------------

    def do_POST(self) -> None:
        self.state.wire.received += len(self.requestline) + sum(len(k) + len(v) + 4 for k, v in self.headers.items()) + 4
        if not self._authorised():
            return
        raw, body = self._read_body()
        if self._unavailable():
            return
        match = re.fullmatch(r"devices/([^/]+)/(heartbeat|playlogs|screenshots|logs)", self._relative() or "")
        if not match:
            self._send(HTTPStatus.NOT_FOUND, b"not found")
            return
        device, kind = match.group(1), match.group(2)
        if kind in ("screenshots", "logs"):
            with self.state.lock:
                (self.state.screenshots if kind == "screenshots" else self.state.logs).append(
                    (dict(self.headers.items()), body))
            self._send(HTTPStatus.NO_CONTENT)
            return
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            self._send(HTTPStatus.BAD_REQUEST, b"expected a JSON object")
            return
        if document.get("device", device) != device:  # a body for another board, posted under this one's name
            self._send(HTTPStatus.BAD_REQUEST, b"the body's device is not the one in the URL")
            return
        claimed = document.get("board_key") if isinstance(document.get("board_key"), str) else None
        refusal = self.state.board_keys.check(device, self.headers.get("X-Bangtin-Signature"), raw, claimed)
        if refusal is not None:
            self._send(HTTPStatus.CONFLICT, refusal.encode())
            return
        with self.state.lock:
            if kind == "heartbeat":
                self.state.heartbeats.append(document)
                if self.state.site is not None:
                    uploads.save_heartbeat(self.state.site, device, document)
            else:
                new = [r for r in document.get("records", []) if isinstance(r, dict)
                       and str(r.get("id")) not in self.state.playlogs]
                for record in new:
                    self.state.playlogs[str(record.get("id"))] = record
                if self.state.site is not None:
                    uploads.append_records(self.state.site, device, new)  # before the 2xx: acknowledged means kept
                self.state.playlog_batches += 1
        records = document.get("records") if kind == "playlogs" else None
        self._batch_records = len(records) if isinstance(records, list) else 0
        self._send(HTTPStatus.NO_CONTENT)
        self._batch_records = 0


class ReferenceServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: SourceState, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(address, Handler)
        self.state = state
        self._tls = tls
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host!s}:{port}{self.state.base_path}"

    def start(self) -> ReferenceServer:
        self._thread = threading.Thread(target=self.serve_forever, name="refsource", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # --- content ---------------------------------------------------------------------------------

    def publish(self, device: str, body: bytes, media: dict[str, Path] | None = None) -> None:
        """Serve `body` as the device's manifest and `media` (url path → file)."""
        with self.state.lock:
            self.state.manifests[device] = body
            self.state.media.update(media or {})

    def requests_to(self, suffix: str) -> list[RequestRecord]:
        with self.state.lock:
            return [r for r in self.state.requests if urlsplit(r.path).path.endswith(suffix)]

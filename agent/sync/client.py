"""The HTTP client shared by the source (polls, downloads) and the reporter (heartbeats, playlogs).

One `requests.Session`, so connections stay alive between requests (on 3G a TLS handshake costs
more than a heartbeat). Every request has connect and read timeouts and an overall deadline that
holds even against a server that sends one byte at a time: when it passes, the request's socket is
shut down from a timer, whatever phase it is in (headers or body). The device token goes to the
source's own origin only and never appears in a message; TLS verifies with the configured CA
file; only the source's own answers set the clock offset (PROTOCOL.md §7).
"""

from __future__ import annotations

import email.utils
import gzip
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from urllib3.connection import HTTPConnection

from agent.limits import clip
from agent.sync.connections import Deadline, Hooks, ResumingContext, tracking_adapter
from agent.wire import Reading, SocketGauge, TcpCounters, TrafficKind, tcp_counters

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 10.0
BACKOFF_CAP_S = 15 * 60.0
RETRY_AFTER_CAP_S = 3600.0  # §2: honoured up to an hour, so a mistaken header cannot silence a board for days
CHUNK = 64 * 1024
PERMANENT_STATUSES = {400, 401, 403, 404, 410}
GZIP_MIN_BYTES = 512  # smaller bodies gain less than gzip's own ~20 bytes of framing
POST_ANSWER_LIMIT = 64 * 1024


class SourceError(Exception):
    """A request failed; `retry_after` is the server's wish (seconds), `permanent` means retrying won't help."""

    def __init__(self, message: str, *, retry_after: float | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


class Backoff:
    """Exponential with "equal jitter": half fixed, half random, so a fleet does not retry in step."""

    def __init__(self, rng: random.Random, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> None:
        self._rng = rng
        self._base_s = base_s
        self._cap_s = cap_s
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.failures += 1
        ceiling = min(self._cap_s, self._base_s * 2 ** (self.failures - 1))
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP_S))
        return delay

    def reset(self) -> None:
        self.failures = 0


class HostBackoff:
    """Back-off per origin: a failing CDN waits on its own, never delaying requests to other hosts (§2)."""

    def __init__(self, rng: random.Random, mono: Callable[[], float] = time.monotonic) -> None:
        self._rng = rng
        self._mono = mono
        self._hosts: dict[tuple[str, str | None, int | None], tuple[Backoff, float]] = {}

    def wait_s(self, url: str) -> float:
        """Seconds before `url`'s host may be asked again (0: now)."""
        entry = self._hosts.get(origin_of(url))
        return max(0.0, entry[1] - self._mono()) if entry else 0.0

    def failed(self, url: str, retry_after: float | None) -> float:
        key = origin_of(url)
        backoff = self._hosts[key][0] if key in self._hosts else Backoff(self._rng)
        delay = backoff.next_delay(retry_after)
        self._hosts[key] = (backoff, self._mono() + delay)
        return delay

    def succeeded(self, url: str) -> None:
        self._hosts.pop(origin_of(url), None)

    def earliest_s(self) -> float | None:
        """Seconds until the first waiting host may be asked again (None: none waits)."""
        if not self._hosts:
            return None
        return max(0.0, min(until for _, until in self._hosts.values()) - self._mono())


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value[:12])
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class ClientSettings:
    base_url: str
    token: str | None
    ca_file: str | None
    user_agent: str
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0


@dataclass
class Reply:
    """A streamed answer and its deadline; use it in a `with` block (closing it frees the connection)."""

    response: requests.Response
    url: str
    _guard: Deadline
    answer: bytes = b""  # a POST's drained answer: a refusal's reason, for the board's errors
    _meter: Callable[[], None] = lambda: None  # counts what the connection carried so far (data meter)

    @property
    def status_code(self) -> int:
        return int(self.response.status_code)

    @property
    def headers(self) -> Any:
        return self.response.headers

    @property
    def reason(self) -> str:
        return clip(self.response.reason or "", 60)

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._meter()
        self._guard.cancel()
        raw = self.response.raw
        if raw.length_remaining == 0 and not raw.closed:
            # Nothing left to read (a 304, a 204, a body read to its end): the connection goes back to
            # the pool. Closing the answer would close the connection too, and the next request would
            # pay a new TCP and TLS handshake on the SIM. A body cut short still closes it.
            raw.drain_conn()
        self.response.close()


class HttpClient:
    """Thread-safe enough for its two users: urllib3's pool hands each request its own connection."""

    def __init__(self, settings: ClientSettings, set_clock_offset: Callable[[float], None] = lambda offset: None,
                 signer: Callable[[bytes], str] | None = None,
                 count: Callable[[TrafficKind, Reading], None] = lambda kind, reading: None,
                 tcp_read: TcpCounters = tcp_counters) -> None:
        self.settings = settings
        self._set_clock_offset = set_clock_offset
        self._signer = signer  # the board's identity: X-Bangtin-Signature over each POST's body (§12)
        self._count = count  # the data meter: bytes on the wire of every request, by what it was for
        self._connections: dict[int, HTTPConnection] = {}
        self._kinds: dict[int, TrafficKind] = {}
        self._session = requests.Session()
        self._tls = ResumingContext()
        adapter = tracking_adapter(Hooks(self._connections, self._kinds, tcp_read, self._sample, self._tls))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # Every byte of every request is paid for: no "Accept: */*", no "Connection: keep-alive"
        # (HTTP/1.1 keeps connections open anyway), one compression the source may use for answers.
        self._session.headers.clear()
        self._session.headers.update({"User-Agent": settings.user_agent, "Accept-Encoding": "gzip"})
        # Passed on every request: a Session-level `verify` loses to REQUESTS_CA_BUNDLE in the environment.
        self._verify: str | bool = settings.ca_file or True
        self._origin = origin_of(settings.base_url)
        self._lock = threading.Lock()
        self._network_io: dict[int, int] = {}  # thread id → nesting depth of blocking network calls

    def close(self) -> None:
        self._session.close()

    def blocked_in_network_io(self, thread_id: int) -> bool:
        with self._lock:
            return self._network_io.get(thread_id, 0) > 0

    def _enter_io(self) -> None:
        with self._lock:
            ident = threading.get_ident()
            self._network_io[ident] = self._network_io.get(ident, 0) + 1

    def _leave_io(self) -> None:
        with self._lock:
            self._network_io[threading.get_ident()] -= 1

    def redact(self, text: str) -> str:
        """Messages never carry the token, whatever a library put into them."""
        token = self.settings.token
        return text.replace(token, "***") if token else text

    def _auth(self, url: str, headers: dict[str, str]) -> dict[str, str]:
        request_headers = dict(headers)
        if self.settings.token and origin_of(url) == self._origin:
            # The device token goes to the province's source only, never to a third-party media host.
            request_headers["Authorization"] = f"Bearer {self.settings.token}"
        return request_headers

    def get(self, url: str, headers: dict[str, str], deadline_s: float, *, kind: TrafficKind) -> Reply:
        """A streamed GET; read the body with `chunks` inside `with reply:`; the deadline covers it all.
        `kind` says what the bytes are for, in the data meter."""
        return self._send("GET", url, self._auth(url, headers), None, deadline_s, kind)

    def post(self, url: str, body: bytes, content_type: str, deadline_s: float,
             headers: dict[str, str] | None = None, *, kind: TrafficKind = "reports") -> Reply:
        """A POST whose body is gzipped when that saves bytes (the source accepts Content-Encoding: gzip)."""
        request_headers = self._auth(url, {"Content-Type": content_type, **(headers or {})})
        if len(body) >= GZIP_MIN_BYTES and content_type != "image/png":  # PNG is compressed already
            body = gzip.compress(body, mtime=0)
            request_headers["Content-Encoding"] = "gzip"
        if self._signer is not None:
            request_headers["X-Bangtin-Signature"] = self._signer(body)  # the exact bytes sent
        deadline = time.monotonic() + deadline_s
        with self._send("POST", url, request_headers, body, deadline_s, kind) as reply:
            reply.answer = self.read_limited(reply, POST_ANSWER_LIMIT, deadline)  # drain: keep the connection
        return reply

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
              deadline_s: float, kind: TrafficKind) -> Reply:
        thread = threading.get_ident()
        guard = Deadline(self._connections, thread)
        guard.arm(deadline_s)
        self._kinds[thread] = kind
        self._enter_io()
        try:
            response = self._session.request(
                method, url, headers=headers, data=body, stream=True, verify=self._verify,
                timeout=(self.settings.connect_timeout_s, min(self.settings.read_timeout_s, max(1.0, deadline_s))))
        except requests.exceptions.SSLError as exc:
            self._sample_thread(kind)
            guard.cancel()
            raise SourceError(f"TLS verification failed for {url}: {self.redact(_short(exc))}") from None
        except (requests.RequestException, ValueError) as exc:  # ValueError: a header value requests refuses
            self._sample_thread(kind)
            guard.cancel()
            why = "deadline passed" if guard.expired else self.redact(_short(exc))
            raise SourceError(f"cannot reach {clip(url, 120)}: {why}") from None
        finally:
            self._leave_io()
        if origin_of(url) == self._origin:
            self._note_clock(response)  # §7: a media host or CDN never sets the clock
        return Reply(response, url, guard, _meter=_ReplyMeter(self, response, self._connections.get(thread), kind))

    # --- the data meter ---------------------------------------------------------------------------

    def _sample(self, connection: HTTPConnection, kind: TrafficKind) -> None:
        """Count what `connection`'s socket carried since its last reading, under `kind`."""
        gauge = getattr(connection, "gauge", None)
        if gauge is None:
            return
        reading = gauge.take(connection.sock)
        if reading.total:
            self._count(kind, reading)
            self._tls.remember(connection.sock)  # the freshest session (and tickets) for the next connection

    def _sample_thread(self, kind: TrafficKind) -> None:
        connection = self._connections.get(threading.get_ident())
        if connection is not None:
            self._sample(connection, kind)

    def _note_clock(self, response: requests.Response) -> None:
        date = response.headers.get("Date")
        if not date:
            return
        try:
            source_time = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        self._set_clock_offset(source_time - time.time())

    def chunks(self, reply: Reply, deadline: float, stop: threading.Event | None = None) -> Iterator[bytes]:
        """The body as it arrives. A dropped link ends the iteration early instead of raising, so
        every byte already received is kept (requests' iter_content would drop its buffer); the
        caller compares what it got with the declared size."""
        raw = reply.response.raw
        raw.enforce_content_length = False
        try:
            while True:
                self._enter_io()
                try:
                    chunk = raw.read(CHUNK, decode_content=True)
                finally:
                    self._leave_io()
                if chunk:
                    reply._meter()  # a long download shows in the meter as it goes, not only at its end
                    yield chunk
                if reply._guard.expired or time.monotonic() > deadline:
                    raise SourceError("transfer too slow: cut at its deadline; will resume")
                if not chunk:
                    break
                if stop is not None and stop.is_set():
                    raise SourceError("stopping")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if reply._guard.expired:
                raise SourceError("transfer too slow: cut at its deadline; will resume") from None
            raise SourceError(f"transfer interrupted: {self.redact(_short(exc))}") from None

    def read_limited(self, reply: Reply, limit: int, deadline: float) -> bytes:
        body = bytearray()
        for chunk in self.chunks(reply, deadline):
            body.extend(chunk)
            if len(body) > limit:
                raise SourceError(f"answer larger than {limit} bytes")
        return bytes(body)

    @staticmethod
    def http_error(reply: Reply, what: str) -> SourceError:
        retry_after = parse_retry_after(reply.headers.get("Retry-After"), time.time()) \
            if reply.status_code in (429, 503) else None
        prefix = f"{what}: " if what else ""
        # A source's one-line reason for a refusal (409: "board key conflict ...") says what to fix.
        why = reply.answer.decode("utf-8", "replace") if 400 <= reply.status_code < 500 and reply.answer else ""
        return SourceError(f"{prefix}HTTP {reply.status_code} {reply.reason}{': ' + clip(why, 160) if why else ''}",
                           retry_after=retry_after, permanent=reply.status_code in PERMANENT_STATUSES)


class _ReplyMeter:
    """Counts one answer's bytes: the socket's reading, and, for where the kernel cannot count, the
    status line, headers and body bytes as they came off the socket (before gzip is undone)."""

    def __init__(self, client: HttpClient, response: requests.Response, connection: HTTPConnection | None,
                 kind: TrafficKind) -> None:
        self._client = client
        self._response = response
        self._connection = connection
        self._kind = kind
        self._gauge: SocketGauge | None = getattr(connection, "gauge", None)
        self._body_seen = 0
        if self._gauge is not None:
            raw = response.raw
            self._gauge.stream_received += len(f"HTTP/1.1 {response.status_code} {response.reason or ''}\r\n") + sum(
                len(name) + len(value) + 4 for name, value in raw.headers.items()) + 2

    def __call__(self) -> None:
        if self._connection is None or self._gauge is None:
            return
        read = int(self._response.raw.tell())
        self._gauge.stream_received += read - self._body_seen
        self._body_seen = read
        self._client._sample(self._connection, self._kind)


def origin_of(url: str) -> tuple[str, str | None, int | None]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ("", None, None)
    return parts.scheme, parts.hostname, port or {"http": 80, "https": 443}.get(parts.scheme)


def _short(exc: Exception) -> str:
    """requests' messages nest; the innermost reason is what a technician needs."""
    text = str(exc)
    for marker in ("Failed to resolve", "Connection refused", "timed out", "Name or service not known",
                   "Network is unreachable", "No route to host"):
        if marker in text:
            return marker.lower()
    return clip(text, 160)

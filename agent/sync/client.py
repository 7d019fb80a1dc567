"""The HTTP client shared by the source (polls, downloads) and the reporter (heartbeats, playlogs).

One `requests.Session`, so connections stay alive between requests (on 3G a TLS handshake costs
more than a heartbeat). Every request has connect and read timeouts; bodies are read against an
overall deadline; the device token goes to the source's own origin only; TLS verifies with the
configured CA file; every answer's `Date` header updates the clock offset (PROTOCOL.md §7).
"""

from __future__ import annotations

import email.utils
import gzip
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3

BACKOFF_BASE_S = 10.0
BACKOFF_CAP_S = 15 * 60.0
RETRY_AFTER_CAP_S = 24 * 3600.0
CHUNK = 64 * 1024
PERMANENT_STATUSES = {400, 401, 403, 404, 410}
GZIP_MIN_BYTES = 512  # smaller bodies gain less than gzip's own ~20 bytes of framing


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


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
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


class HttpClient:
    """Thread-safe enough for its two users: urllib3's pool hands each request its own connection."""

    def __init__(self, settings: ClientSettings, set_clock_offset: Callable[[float], None] = lambda offset: None) -> None:
        self.settings = settings
        self._set_clock_offset = set_clock_offset
        self._session = requests.Session()
        # Every byte of every request is paid for: no "Accept: */*", no "Connection: keep-alive"
        # (HTTP/1.1 keeps connections open anyway), one compression the source may use for answers.
        self._session.headers.clear()
        self._session.headers.update({"User-Agent": settings.user_agent, "Accept-Encoding": "gzip"})
        # Passed on every request: a Session-level `verify` loses to REQUESTS_CA_BUNDLE in the environment.
        self._verify: str | bool = settings.ca_file or True
        self._origin = _origin(settings.base_url)
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

    def _auth(self, url: str, headers: dict[str, str]) -> dict[str, str]:
        request_headers = dict(headers)
        if self.settings.token and _origin(url) == self._origin:
            # The device token goes to the province's source only, never to a third-party media host.
            request_headers["Authorization"] = f"Bearer {self.settings.token}"
        return request_headers

    def get(self, url: str, headers: dict[str, str], deadline_s: float) -> requests.Response:
        """A streamed GET; the caller reads the body with `chunks` and closes the response."""
        return self._send("GET", url, self._auth(url, headers), None, deadline_s)

    def post(self, url: str, body: bytes, content_type: str, deadline_s: float,
             headers: dict[str, str] | None = None) -> requests.Response:
        """A POST whose body is gzipped when that saves bytes (the source accepts Content-Encoding: gzip)."""
        request_headers = self._auth(url, {"Content-Type": content_type, **(headers or {})})
        if len(body) >= GZIP_MIN_BYTES and content_type != "image/png":  # PNG is compressed already
            body = gzip.compress(body, mtime=0)
            request_headers["Content-Encoding"] = "gzip"
        response = self._send("POST", url, request_headers, body, deadline_s)
        with response:
            self._read_limited(response, 64 * 1024, time.monotonic() + deadline_s)  # drain: keep the connection
        return response

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
              deadline_s: float) -> requests.Response:
        self._enter_io()
        try:
            response = self._session.request(
                method, url, headers=headers, data=body, stream=True, verify=self._verify,
                timeout=(self.settings.connect_timeout_s, min(self.settings.read_timeout_s, max(1.0, deadline_s))))
        except requests.exceptions.SSLError as exc:
            raise SourceError(f"TLS verification failed for {url}: {exc}") from None
        except requests.RequestException as exc:
            raise SourceError(f"cannot reach {url}: {_short(exc)}") from None
        finally:
            self._leave_io()
        self._note_clock(response)
        return response

    def _note_clock(self, response: requests.Response) -> None:
        date = response.headers.get("Date")
        if not date:
            return
        try:
            source_time = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return
        self._set_clock_offset(source_time - time.time())

    def chunks(self, response: requests.Response, deadline: float, stop: threading.Event | None = None) -> Iterator[bytes]:
        """The body as it arrives. A dropped link ends the iteration early instead of raising, so
        every byte already received is kept (requests' iter_content would drop its buffer); the
        caller compares what it got with the declared size."""
        raw = response.raw
        raw.enforce_content_length = False
        try:
            while True:
                self._enter_io()
                try:
                    chunk = raw.read(CHUNK, decode_content=True)
                finally:
                    self._leave_io()
                if not chunk:
                    break
                yield chunk
                if time.monotonic() > deadline:
                    raise SourceError("transfer too slow: cut at its deadline; will resume")
                if stop is not None and stop.is_set():
                    raise SourceError("stopping")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise SourceError(f"transfer interrupted: {_short(exc)}") from None

    def _read_limited(self, response: requests.Response, limit: int, deadline: float) -> bytes:
        body = bytearray()
        for chunk in self.chunks(response, deadline):
            body.extend(chunk)
            if len(body) > limit:
                raise SourceError(f"answer larger than {limit} bytes")
        return bytes(body)

    def read_limited(self, response: requests.Response, limit: int, deadline: float) -> bytes:
        return self._read_limited(response, limit, deadline)

    @staticmethod
    def http_error(response: requests.Response, what: str) -> SourceError:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time()) \
            if response.status_code in (429, 503) else None
        return SourceError(f"{what}: HTTP {response.status_code} {response.reason}",
                           retry_after=retry_after, permanent=response.status_code in PERMANENT_STATUSES)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _short(exc: Exception) -> str:
    """requests' messages nest; the innermost reason is what a technician needs."""
    text = str(exc)
    for marker in ("Failed to resolve", "Connection refused", "timed out", "Name or service not known",
                   "Network is unreachable", "No route to host"):
        if marker in text:
            return marker.lower()
    return text if len(text) < 160 else text[:157] + "..."

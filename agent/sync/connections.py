"""urllib3's connections as the HTTP client needs them: each knows the thread using it (so an
overall deadline can shut its socket from a timer, whatever a dripping server does), what its
request is for and a gauge of its bytes on the wire (the data meter), and TLS sessions are offered
again to the same server (a resumed handshake costs about a kilobyte less on a SIM). The client
that uses them is agent/sync/client.py.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from agent.wire import SocketGauge, TcpCounters, TrafficKind


@dataclass
class Deadline:
    """Shuts the request's socket when its overall deadline passes (a drip cannot outlast it)."""

    connections: dict[int, HTTPConnection]
    thread_id: int
    timer: threading.Timer | None = None
    expired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arm(self, seconds: float) -> None:
        self.timer = threading.Timer(max(0.05, seconds), self._expire)
        self.timer.name = "http-deadline"
        self.timer.daemon = True
        self.timer.start()

    def _expire(self) -> None:
        with self.lock:
            self.expired = True
            connection = self.connections.get(self.thread_id)
        if connection is not None:
            shut_down(connection)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            self.connections.pop(self.thread_id, None)


def shut_down(connection: HTTPConnection) -> None:
    """Wake a thread blocked on this connection's socket: reads return at once with an error or EOF."""
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    try:
        # The plain socket's shutdown, also for TLS: the SSL object stays intact for the reader.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Tracked(HTTPConnection):
    """What the client adds to urllib3's connections (HTTP and HTTPS alike): which thread uses the
    connection (so a deadline can find the socket), what the request is for, and a gauge of the
    socket's bytes for the data meter. Configured per client by `tracking_adapter`."""

    hooks: Hooks
    gauge: SocketGauge | None = None
    meter_kind: TrafficKind = "reports"

    def _track(self) -> None:
        self.hooks.connections[threading.get_ident()] = self
        self.meter_kind = self.hooks.kinds.get(threading.get_ident(), self.meter_kind)

    def connect(self) -> None:
        self._track()
        self.gauge = SocketGauge(self.hooks.tcp_read)  # the kernel counts from the connect: handshakes included
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._track()
        super().request(*args, **kwargs)

    def send(self, data: Any) -> None:
        if self.gauge is not None and isinstance(data, (bytes, bytearray, memoryview)):
            self.gauge.stream_sent += len(data)  # only used where the kernel cannot count
        super().send(data)

    def close(self) -> None:
        self.hooks.sample(self, self.meter_kind)  # what came since the last reading (a server's close_notify)
        super().close()


class TrackedHTTPSConnection(Tracked, HTTPSConnection):
    def connect(self) -> None:
        if self.ssl_context is None:
            self.ssl_context = self.hooks.tls  # offers the server the session of the last connection
        super().connect()


class ResumingContext(ssl.SSLContext):
    """The client's TLS context: it offers each server the session of the last connection to it, so
    a new connection (the server closed the idle one) resumes instead of paying a full handshake —
    no certificate chain, no key exchange signature: about a kilobyte less on the SIM each time
    (bench/bench_report.py). urllib3 wraps its sockets through `wrap_socket` and knows nothing of
    sessions, so they are kept here, per server name and port. A resumed session is one this context
    verified; a change of CA file makes a new client, and a new context."""

    def __new__(cls) -> ResumingContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self) -> None:
        # As urllib3's own context, less OP_NO_TICKET: the tickets are the point.
        self.minimum_version = ssl.TLSVersion.TLSv1_2
        self.hostname_checks_common_name = False
        self._sessions: dict[tuple[str | None, int], ssl.SSLSession] = {}
        self._lock = threading.Lock()

    def wrap_socket(self, sock: Any, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        name = server_hostname.decode() if isinstance(server_hostname, bytes) else server_hostname
        if session is None and not server_side:
            with self._lock:
                session = self._sessions.get((name, peer_port(sock)))
        return super().wrap_socket(sock, server_side, do_handshake_on_connect, suppress_ragged_eofs, server_hostname,
                                   session)

    def remember(self, sock: Any) -> None:
        """Keep `sock`'s session (with TLS 1.3, its tickets arrive after the handshake: call this
        after an answer has been read)."""
        if not isinstance(sock, ssl.SSLSocket) or sock.server_side:
            return
        try:
            session = sock.session
        except (OSError, ValueError):
            return
        if session is not None and (session.has_ticket or session.id):
            with self._lock:
                self._sessions[(sock.server_hostname, peer_port(sock))] = session


def peer_port(sock: Any) -> int:
    try:
        return int(sock.getpeername()[1])
    except (OSError, IndexError, TypeError):
        return 0


@dataclass
class Hooks:
    connections: dict[int, HTTPConnection]
    kinds: dict[int, TrafficKind]  # thread id → what its request in flight is for
    tcp_read: TcpCounters
    sample: Callable[[HTTPConnection, TrafficKind], None]
    tls: ResumingContext


def tracking_adapter(hooks: Hooks) -> HTTPAdapter:
    """An adapter whose connections are `Tracked` with this client's hooks."""

    class TrackedHTTP(Tracked):
        pass

    class TrackedHTTPS(TrackedHTTPSConnection):
        pass

    TrackedHTTP.hooks = TrackedHTTPS.hooks = hooks

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = TrackedHTTP

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = TrackedHTTPS

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

    return Adapter()

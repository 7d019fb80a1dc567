"""A counting TCP proxy: what a board's link carries, byte for byte, per connection (benchmarks, tests).

Put between the board and the source (or the broker), it forwards bytes unchanged and records, for
every connection, the bytes each way with a timeline of the reads, so TLS handshakes, records and
headers are counted as a SIM counts them (TCP/IP headers aside: it sees payload; the kernel's
segment counts of the board-side socket are kept for an estimate). It can also close connections
that stay idle, as a province's web server does (nginx `keepalive_timeout`, 75 s by default), so
a benchmark sees the reconnects the board would pay for.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

SEGS_OUT_AT, SEGS_IN_AT = 136, 140  # struct tcp_info: tcpi_segs_out, tcpi_segs_in (u32)
CHUNK = 65536


@dataclass
class Flow:
    """One proxied connection. `up` = board to server, `down` = server to board."""

    number: int
    opened_at: float
    board_port: int  # the board's local port, as the proxy sees it
    upstream_port: int  # the proxy's local port towards the server (the server's view of the peer)
    up: int = 0
    down: int = 0
    events: list[tuple[float, str, int]] = field(default_factory=list)  # (monotonic, "up" | "down", bytes)
    closed_at: float | None = None
    closed_by: str | None = None  # "board", "server" or "idle"
    segments: int = 0  # TCP segments both ways on the board-side socket (SYN, ACKs and FIN included)

    @property
    def total(self) -> int:
        return self.up + self.down


class CountingProxy:
    def __init__(self, upstream: tuple[str, int], *, idle_close_s: float | None = None,
                 name: str = "proxy") -> None:
        self.upstream = upstream
        self.idle_close_s = idle_close_s
        self.name = name
        self.flows: list[Flow] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> CountingProxy:
        thread = threading.Thread(target=self._accept, name=f"{self.name}-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def snapshot(self) -> list[Flow]:
        with self._lock:
            return [Flow(f.number, f.opened_at, f.board_port, f.upstream_port, f.up, f.down, list(f.events),
                         f.closed_at, f.closed_by, f.segments) for f in self.flows]

    def totals(self) -> tuple[int, int]:
        """(bytes up, bytes down) over every connection so far."""
        with self._lock:
            return sum(f.up for f in self.flows), sum(f.down for f in self.flows)

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                board, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                board.close()
                continue
            with self._lock:
                flow = Flow(len(self.flows) + 1, time.monotonic(), board.getpeername()[1], server.getsockname()[1])
                self.flows.append(flow)
            thread = threading.Thread(target=self._pump, args=(flow, board, server), name=f"{self.name}-{flow.number}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, flow: Flow, board: socket.socket, server: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(board, selectors.EVENT_READ, ("up", server))
            selector.register(server, selectors.EVENT_READ, ("down", board))
            last = time.monotonic()
            closed_by = None
            while closed_by is None and not self._stop.is_set():
                timeout = 0.2 if self.idle_close_s is None else max(0.0, min(0.2, last + self.idle_close_s - time.monotonic()))
                ready = selector.select(timeout)
                if not ready and self.idle_close_s is not None and time.monotonic() - last >= self.idle_close_s:
                    closed_by = "idle"
                for key, _ in ready:
                    direction, other = key.data
                    try:
                        data = key.fileobj.recv(CHUNK)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if not data:
                        closed_by = "board" if direction == "up" else "server"
                        break
                    last = time.monotonic()
                    with self._lock:  # counted before it is passed on: whoever has the bytes sees them counted
                        flow.events.append((last, direction, len(data)))
                        if direction == "up":
                            flow.up += len(data)
                        else:
                            flow.down += len(data)
                    try:
                        other.sendall(data)
                    except OSError:
                        # The other side is gone: what arrived still crossed this side's link, and counts.
                        closed_by = "server" if direction == "up" else "board"
                        break
        segments = _segments(board)
        for sock in (board, server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        with self._lock:
            flow.closed_at, flow.closed_by, flow.segments = time.monotonic(), closed_by or "proxy stopped", segments


def _segments(sock: socket.socket) -> int:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        out, into = struct.unpack_from("=II", raw, SEGS_OUT_AT)
    except (OSError, AttributeError, struct.error):
        return 0
    return int(out) + int(into)

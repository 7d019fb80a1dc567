"""Bytes on the wire of one socket, as the kernel counts them: what a metered SIM is billed for.

Linux keeps, for every TCP socket, the bytes received and the bytes sent (`TCP_INFO`, u64 fields:
`tcpi_bytes_received` at offset 128 since 4.1; `tcpi_bytes_sent` at 200 since 4.19, which counts
retransmissions too, as the SIM bills them; on older kernels `tcpi_bytes_acked` at 120, which
counts each byte once, when acknowledged). Read after each exchange, their growth counts what the
program's own byte counts would miss: TLS records and handshakes, HTTP headers, MQTT framing. Not
in them: TCP/IP headers (about 52 bytes a packet).

Where the kernel does not tell (another OS, an older kernel, a socket that is not TCP), the socket's
owner counts the bytes it passes through it (`stream_sent`, `stream_received`) and the reading
says so: those miss TLS framing and handshakes.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

# What the bytes were for, as the data meter shows them (docs/metered.md).
TrafficKind = Literal["manifest", "media", "reports", "mqtt", "update"]
KINDS: tuple[TrafficKind, ...] = ("manifest", "media", "reports", "mqtt", "update")

TCP_INFO_LENGTH = 256  # more than any kernel's struct tcp_info needs for these fields
BYTES_ACKED_AT = 120
BYTES_RECEIVED_AT = 128
BYTES_SENT_AT = 200
SYN_BYTES = 1  # bytes_acked counts a connecting socket's SYN as one byte; it carries no payload

TcpCounters = Callable[[Any], "tuple[int, int] | None"]


def tcp_counters(sock: Any) -> tuple[int, int] | None:
    """(bytes sent and acknowledged, bytes received) so far on a TCP socket; None where the kernel
    does not tell (no TCP_INFO, a short struct, a closed socket)."""
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, TCP_INFO_LENGTH)
    except (OSError, ValueError):
        return None
    if len(raw) < BYTES_RECEIVED_AT + 8:
        return None  # a kernel older than 4.1: the struct ends before these fields
    acked, received = struct.unpack_from("=QQ", raw, BYTES_ACKED_AT)  # host byte order, as the kernel fills it
    if len(raw) >= BYTES_SENT_AT + 8:
        # Sent, not only acknowledged: the last bytes before a close are paid for even if their ACK
        # is still on its way when the socket is read.
        (sent,) = struct.unpack_from("=Q", raw, BYTES_SENT_AT)
        return int(sent), int(received)
    return max(0, int(acked) - SYN_BYTES), int(received)


@dataclass(frozen=True)
class Reading:
    """Bytes since the previous reading of the same socket; `kernel` False: counted by the program."""

    sent: int
    received: int
    kernel: bool

    @property
    def total(self) -> int:
        return self.sent + self.received


class SocketGauge:
    """One connected socket's traffic, read as deltas. Make one per socket, right after it connects
    (the kernel's counters start at the connect, so the handshakes are in the first reading).

    The method is chosen at the first reading and kept: a socket the kernel counted is never
    switched to program counts when it closes (a closed socket reads as no change)."""

    def __init__(self, read: TcpCounters = tcp_counters) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._kernel: bool | None = None
        self._seen = (0, 0)
        self._stream_seen = (0, 0)
        self.stream_sent = 0  # bumped by the owner for every byte it writes (used when the kernel cannot tell)
        self.stream_received = 0

    def take(self, sock: Any) -> Reading:
        """What `sock` carried since the last call (any thread; readings never overlap)."""
        with self._lock:
            counters = self._read(sock) if self._kernel is not False else None
            if self._kernel is None:
                self._kernel = counters is not None
            if self._kernel:
                if counters is None:
                    return Reading(0, 0, True)
                sent, received = max(0, counters[0] - self._seen[0]), max(0, counters[1] - self._seen[1])
                self._seen = (max(counters[0], self._seen[0]), max(counters[1], self._seen[1]))
                return Reading(sent, received, True)
            now = (self.stream_sent, self.stream_received)
            sent, received = now[0] - self._stream_seen[0], now[1] - self._stream_seen[1]
            self._stream_seen = now
            return Reading(sent, received, False)

"""QEMU guestfwd helper: relay one guest connection (our stdin/stdout) to a TCP port on the host.

slirp runs `cmd:` once per connection the guest opens to the forwarded address, so the guest reaches
the test's reference source on the host's loopback and nothing else (`restrict=on`).
Stdlib only, started by the host's python3: `relay.py HOST PORT`.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    upstream = socket.create_connection((host, port), timeout=10)
    upstream.settimeout(None)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "guest")
    selector.register(upstream, selectors.EVENT_READ, "host")
    open_sides = 2
    while open_sides:
        for key, _ in selector.select():
            if key.data == "guest":
                data = os.read(0, 65536)
                if not data:
                    selector.unregister(0)
                    open_sides -= 1
                    try:
                        upstream.shutdown(socket.SHUT_WR)
                    except OSError:
                        return 0
                    continue
                upstream.sendall(data)
            else:
                try:
                    data = upstream.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return 0  # the source closed: the guest sees the connection end
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view):]
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, ConnectionError):
        sys.exit(0)

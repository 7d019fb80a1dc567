"""The local control socket (PROTOCOL.md §9): newline-delimited JSON over a Unix socket.

File permissions guard it (0660, owner's group), so requests carry no signatures. The server
thread only parses and answers; the dispatcher does the work.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
CLIENT_TIMEOUT_S = 15.0


class ControlUnavailable(Exception):
    """No agent answers on the socket."""


def agent_answers(path: Path) -> bool:
    """Whether something is listening on `path` (a stale file after a crash answers nothing)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ControlServer:
    def __init__(self, path: Path, handle: Callable[[Any], dict[str, Any]], stop: threading.Event) -> None:
        self.path = path
        self._handle = handle
        self._stop = stop
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Bind now (before playback starts) so a second agent on the same socket is refused."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if agent_answers(self.path):
                raise RuntimeError(f"another agent is already answering on {self.path}")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)  # created 0660: no window in which others could connect
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                connection, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stop.is_set():
                    log.exception("control socket accept failed")
                return
            # One short-lived thread per client: a slow screenshot does not block `status`.
            threading.Thread(target=self._serve_client, args=(connection,), name="control-client", daemon=True).start()

    def _serve_client(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(CLIENT_TIMEOUT_S)
            try:
                line = _read_line(connection)
            except (OSError, ValueError) as exc:
                _send(connection, {"ok": False, "error": f"bad request: {exc}"})
                return
            try:
                request = json.loads(line)
            except ValueError as exc:
                _send(connection, {"ok": False, "error": f"bad request: not JSON ({exc})"})
                return
            _send(connection, self._handle(request))


def _read_line(connection: socket.socket) -> bytes:
    buffer = bytearray()
    while b"\n" not in buffer:
        chunk = connection.recv(4096)
        if not chunk:
            break
        buffer.extend(chunk)
        if len(buffer) > MAX_REQUEST_BYTES:
            raise ValueError(f"request longer than {MAX_REQUEST_BYTES} bytes")
    return bytes(buffer.split(b"\n", 1)[0])


def _send(connection: socket.socket, response: dict[str, Any]) -> None:
    try:
        connection.sendall(json.dumps(response, ensure_ascii=False).encode("utf-8") + b"\n")
    except OSError:
        pass  # the client went away; nothing to tell it


def request(path: Path, command: str, args: dict[str, Any] | None = None, timeout: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to a running agent and return its response object."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise ControlUnavailable(f"no agent answers on {path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps({"command": command, "args": args or {}}).encode("utf-8") + b"\n")
        buffer = bytearray()
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer.extend(chunk)
    except TimeoutError:
        raise ControlUnavailable(f"the agent on {path} did not answer within {timeout:g} s") from None
    finally:
        sock.close()
    if not buffer:
        raise ControlUnavailable(f"the agent on {path} closed the connection without answering")
    response = json.loads(buffer)
    if not isinstance(response, dict):
        raise ControlUnavailable(f"the agent on {path} answered something that is not a JSON object")
    return response

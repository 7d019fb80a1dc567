"""The local control socket (PROTOCOL.md §9): newline-delimited JSON over a Unix socket.

File permissions guard it (0660, owner's group), so requests carry no signatures. The server
thread only parses and answers; the dispatcher does the work.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.i18n import _
from agent.limits import MAX_COMMAND_BYTES, load_json
from agent.models import InputRejected

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = MAX_COMMAND_BYTES  # §10: the same bound as a command from the broker
CLIENT_TIMEOUT_S = 15.0
MAX_CLIENTS = 16  # a local script gone wrong must not spawn threads without end


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
    name = "control-socket"

    def __init__(self, path: Path, handle: Callable[[Any], dict[str, Any]], stop: threading.Event) -> None:
        self.path = path
        self._handle = handle
        self._stop = stop
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)

    def open(self) -> None:
        """Bind now (before playback starts) so a second agent on the same socket is refused."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            found = self.path.lstat()
        except FileNotFoundError:
            found = None
        if found is not None:
            # Only a stale socket of ours is replaced: a file or link planted there is not ours to delete.
            if not stat.S_ISSOCK(found.st_mode):
                raise RuntimeError(f"{self.path} exists and is not a socket: remove it or set control.socket")
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

    def stop(self) -> None:
        """The accept loop sees the shared stop event within its 0.5 s accept timeout."""

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()
            except FileNotFoundError:
                pass

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> dict[str, Any]:
        return {"socket": str(self.path)}

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
            if not self._clients.acquire(blocking=False):
                _send(connection, {"ok": False, "error": f"busy: {MAX_CLIENTS} requests are already being answered"})
                connection.close()
                continue
            # One short-lived thread per client: a slow screenshot does not block `status`.
            threading.Thread(target=self._serve_client, args=(connection,), name="control-client", daemon=True).start()

    def _serve_client(self, connection: socket.socket) -> None:
        try:
            with connection:
                connection.settimeout(CLIENT_TIMEOUT_S)
                _send(connection, self._answer(connection))
        finally:
            self._clients.release()

    def _answer(self, connection: socket.socket) -> dict[str, Any]:
        try:
            line = _read_line(connection)
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        try:
            request = parse_request(line)
        except InputRejected as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        return self._handle(request)


def parse_request(line: bytes) -> Any:
    """One request line → its JSON value, within the same limits as a command (§10)."""
    return load_json(line, max_bytes=MAX_REQUEST_BYTES, what="request")


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
            raise ControlUnavailable(_("no agent answers on {path}: {reason}").format(
                path=path, reason=exc.strerror or exc)) from None
        sock.sendall(json.dumps({"command": command, "args": args or {}}).encode("utf-8") + b"\n")
        buffer = bytearray()
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer.extend(chunk)
    except TimeoutError:
        raise ControlUnavailable(_("the agent on {path} did not answer within {seconds} s").format(
            path=path, seconds=f"{timeout:g}")) from None
    finally:
        sock.close()
    if not buffer:
        raise ControlUnavailable(_("the agent on {path} closed the connection without answering").format(path=path))
    response = json.loads(buffer)
    if not isinstance(response, dict):
        raise ControlUnavailable(_("the agent on {path} answered something that is not a JSON object").format(path=path))
    return response

"""The shape every thread owner shares, and the one place they are started and stopped.

A service starts its own named thread(s), notices the shared stop event (or its own `stop()`),
and is joined in reverse start order. A thread still alive after its join is a bug and is logged
as one, unless it says it is waiting on the network (a stalled 3G read that ends with the process).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


@runtime_checkable
class Service(Protocol):
    name: str

    def start(self) -> None:
        """Start the service's thread(s); returns at once."""

    def stop(self) -> None:
        """Ask it to stop soon (the shared stop event is set too); returns at once."""

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for its thread(s) to end."""

    def is_alive(self) -> bool: ...

    def health(self) -> Mapping[str, Any]:
        """A small JSON-ready mapping for `ctl status` (read from any thread)."""


class Services:
    """Started in order, stopped and joined in reverse; reports what would not end."""

    def __init__(self) -> None:
        self._started: list[Service] = []

    def start(self, service: Service) -> None:
        service.start()
        self._started.append(service)
        log.debug("started %s", service.name)

    def remove(self, service: Service) -> None:
        self._started.remove(service)

    def stop_all(self, timeout: float = JOIN_TIMEOUT_S) -> list[str]:
        """Stop and join everything; returns the names of services whose threads are still alive."""
        for service in reversed(self._started):
            service.stop()
        leftovers = []
        for service in reversed(self._started):
            service.join(timeout)
            if not service.is_alive():
                continue
            if getattr(service, "blocked_in_network_io", lambda: False)():
                log.info("%s is still waiting on the network; it ends with the process", service.name)
            else:
                log.error("bug: thread of %s still alive at exit", service.name)
            leftovers.append(service.name)
        self._started.clear()
        return leftovers

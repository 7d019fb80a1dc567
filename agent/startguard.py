"""Failed starts, counted across restarts (PROTOCOL.md §10 "set aside").

A start counts as failed until the board has shown content for 60 s; a clean stop (SIGTERM, a
restart in place) also ends it well. Three failed starts in a row mean something restored at
start (the manifest, an alert) takes the board down each time, and the next start sets it aside.
The count is a small file fsynced before the risky part of the start, so a crash, a watchdog kill
or an out-of-memory kill each count once.

A power cut is not the content's fault: failures counted in an earlier boot (the kernel's boot id
changed) are forgotten, so a commune whose power flickers during a storm keeps its bulletin.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from agent.files import atomic_write

log = logging.getLogger(__name__)

FAILED_STARTS_TO_SET_ASIDE = 3
HEALTHY_AFTER_S = 60.0


def kernel_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


class StartGuard:
    def __init__(self, path: Path, threshold: int = FAILED_STARTS_TO_SET_ASIDE,
                 boot_id: Callable[[], str] = kernel_boot_id) -> None:
        self.path = path
        self.threshold = threshold
        self._boot_id = boot_id

    def begin(self) -> bool:
        """Count this start as failed until told otherwise; True when the restored state must be set aside."""
        boot = self._boot_id()
        failed, counted_in = self._read()
        if counted_in != boot:
            failed = 0  # those starts ended with the machine (a power cut or a reboot), not by the content
        set_aside = failed >= self.threshold
        if set_aside:
            log.error("%d starts in a row failed before showing content for %.0f s: setting restored content aside",
                      failed, HEALTHY_AFTER_S)
            failed = 0
        self._write(failed + 1, boot)
        return set_aside

    def ended_well(self) -> None:
        """Content was shown for long enough, or the agent stopped cleanly."""
        failed, boot = self._read()
        if failed != 0:
            self._write(0, boot)

    def _read(self) -> tuple[int, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0, ""
        if not isinstance(data, dict):
            return 0, ""
        value, boot = data.get("failed_starts", 0), data.get("boot_id", "")
        return (value if isinstance(value, int) and value >= 0 else 0), (boot if isinstance(boot, str) else "")

    def _write(self, failed: int, boot: str) -> None:
        try:
            atomic_write(self.path, json.dumps({"failed_starts": failed, "boot_id": boot}).encode())
        except OSError as exc:
            log.warning("failed-start count not saved in %s: %s", self.path, exc.strerror or exc)

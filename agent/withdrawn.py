"""Withdrawn items (PROTOCOL.md §8 `withdraw`) stay off across a restart: `storage.dir/withdrawn.json`.

A withdrawn bulletin was wrong or hijacked; a power cut must not bring it back. The ids hold until
a manifest with a higher serial than the one they were withdrawn from is current. Saved through the
disk writer like the alerts; read once at start, bounded like the command that made them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.limits import clip

WITHDRAWN_FILE = "withdrawn.json"
MAX_WITHDRAWN = 2000  # ids kept; a manifest holds at most 1000 items and 1000 ticker lines (§10)
MAX_ID_CHARS = 128
MAX_FILE_BYTES = 512 * 1024


@dataclass(frozen=True)
class Withdrawn:
    serial: int | None  # the manifest serial they were withdrawn from (None: before any manifest)
    ids: frozenset[str]


class WithdrawnStore:
    def __init__(self, path: Path, write: Callable[[Path, bytes], None]) -> None:
        self.path = path
        self._write = write

    def save(self, withdrawn: Withdrawn) -> None:
        self._write(self.path, json.dumps({"serial": withdrawn.serial, "items": sorted(withdrawn.ids)}).encode())

    def load(self) -> tuple[Withdrawn, str | None]:
        """What was withdrawn, and a problem to report (or None)."""
        empty = Withdrawn(None, frozenset())
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return empty, None
        except OSError as exc:
            return empty, f"{WITHDRAWN_FILE} unreadable ({exc.strerror or exc}): withdrawn items may show again"
        try:
            saved = json.loads(raw.decode("utf-8")) if len(raw) <= MAX_FILE_BYTES else None
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return empty, f"{WITHDRAWN_FILE} unreadable ({clip(exc, 80)}): withdrawn items may show again"
        if not isinstance(saved, dict) or not isinstance(saved.get("items"), list):
            return empty, f"{WITHDRAWN_FILE} is not what the board writes: withdrawn items may show again"
        serial = saved.get("serial")
        ids = frozenset(i for i in saved["items"][:MAX_WITHDRAWN] if isinstance(i, str) and len(i) <= MAX_ID_CHARS)
        return Withdrawn(serial if isinstance(serial, int) and not isinstance(serial, bool) else None, ids), None

"""What boards sent, kept in the site folder: the province's report reads it (`python -m refsource report`).

  <site>/devices/<device>/playlogs.jsonl   every record received (§5, events included), one JSON per line,
                                           each once (records are de-duplicated by id: §2)
  <site>/devices/<device>/heartbeat.json   the last heartbeat, with `received_at` (the source's clock)
  <site>/board-conflicts.jsonl             bodies refused because another key signed them (PROTOCOL.md §12):
                                           a cloned SD card or a stolen token

Appends are flushed before the 2xx goes back, so an acknowledged record is in the file. Device ids
come from the URL, so only well-formed ones name a folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

DEVICE_ID = re.compile(r"[a-z0-9._-]{1,64}")
PLAYLOGS = "playlogs.jsonl"
CONFLICTS = "board-conflicts.jsonl"
HEARTBEAT = "heartbeat.json"


def device_dir(site: Path, device: str) -> Path | None:
    if not DEVICE_ID.fullmatch(device) or device in (".", ".."):
        return None
    return site / "devices" / device


def append_records(site: Path, device: str, records: Iterable[dict[str, Any]]) -> None:
    folder = device_dir(site, device)
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records]
    if folder is None or not lines:
        return
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / PLAYLOGS).open("a", encoding="utf-8") as out:
        out.write("".join(lines))
        out.flush()
        os.fsync(out.fileno())


def save_heartbeat(site: Path, device: str, heartbeat: dict[str, Any]) -> None:
    folder = device_dir(site, device)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    body = {**heartbeat, "received_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    temporary = folder / f".{HEARTBEAT}.tmp"
    temporary.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, folder / HEARTBEAT)


def read_records(folder: Path) -> Iterator[dict[str, Any]]:
    """A device's records, each id once; a torn last line (the server killed mid-append) is skipped."""
    seen: set[str] = set()
    try:
        handle = (folder / PLAYLOGS).open(encoding="utf-8")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("item"), str) and record.get("id") not in seen:
                seen.add(str(record.get("id")))
                yield record


def read_heartbeat(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / HEARTBEAT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def devices(site: Path) -> list[Path]:
    """Every board the site knows: published to, or heard from."""
    root = site / "devices"
    return sorted(p for p in root.iterdir() if p.is_dir() and DEVICE_ID.fullmatch(p.name)) if root.is_dir() else []


def append_conflict(site: Path, conflict: dict[str, Any]) -> None:
    with (site / CONFLICTS).open("a", encoding="utf-8") as out:
        out.write(json.dumps(conflict, ensure_ascii=False) + "\n")


def read_conflicts(site: Path) -> list[dict[str, Any]]:
    try:
        lines = (site / CONFLICTS).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if isinstance(entry, dict):
            found.append(entry)
    return found

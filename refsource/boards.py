"""Which key each board signs with (PROTOCOL.md §12), as the province's source keeps it.

A board's key is learnt from its first signed heartbeat (`board_key`, checked against the signature)
or read from a registry file the province keeps (`{"<device id>": "<base64 public key>"}`). After
that, a body signed by another key for the same device id is refused (409) and kept as a conflict:
two boards with one id are a cloned SD card, or a stolen token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("refsource.boards")

MAX_CONFLICTS_KEPT = 1000


def keyid(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class BoardKeys:
    keys: dict[str, str] = field(default_factory=dict)  # device id → base64 public key
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    registry: Path | None = None
    on_conflict: Callable[[dict[str, Any]], None] | None = None  # e.g. kept in the site for the report
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_registry(cls, path: Path | None) -> BoardKeys:
        board_keys = cls(registry=path)
        if path is not None and path.exists():
            board_keys.keys.update(json.loads(path.read_text()))
        return board_keys

    def check(self, device: str, header: str | None, raw_body: bytes, claimed_key: str | None) -> str | None:
        """None when the body may be taken; else why not (the board's key is another one)."""
        if header is None:
            with self.lock:
                has_key = device in self.keys
            return "unsigned body from a board whose key is known" if has_key else None
        fingerprint, _, signature_b64 = header.partition(":")
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            return "X-Bangtin-Signature is not <keyid>:<base64>"
        with self.lock:
            known = self.keys.get(device)
        key_b64 = known or claimed_key
        if key_b64 is None:
            return None  # a playlog before the first heartbeat: its key is learnt from that heartbeat
        try:
            raw_key = base64.b64decode(key_b64, validate=True)
            Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, raw_body)
        except (binascii.Error, ValueError, InvalidSignature):
            return self._conflict(device, fingerprint, "signature does not verify with the board's key")
        if keyid(raw_key) != fingerprint:
            return self._conflict(device, fingerprint, "signed by another key than the board's")
        if known is None:
            with self.lock:
                self.keys[device] = key_b64
            self._save()
        elif claimed_key is not None and claimed_key != known:
            return self._conflict(device, keyid(base64.b64decode(claimed_key)), "heartbeat carries another board_key")
        return None

    def _conflict(self, device: str, fingerprint: str, why: str) -> str:
        entry = {"device": device, "keyid": fingerprint, "why": why, "at": time.time()}
        with self.lock:
            self.conflicts.append(entry)
            del self.conflicts[:-MAX_CONFLICTS_KEPT]  # in memory; the file keeps them all
            if self.registry is not None:  # the province's record of clones, beside its registry
                with self.registry.with_suffix(".conflicts.jsonl").open("a") as handle:
                    handle.write(json.dumps(entry) + "\n")
        if self.on_conflict is not None:
            self.on_conflict(entry)
        message = f"board key conflict for {device}: {why} (a cloned SD card?)"
        log.warning("%s; key %s", message, fingerprint)
        return message

    def _save(self) -> None:
        if self.registry is not None:
            with self.lock:
                data = json.dumps(self.keys, indent=1, sort_keys=True)
                temporary = self.registry.with_name(f".{self.registry.name}.new")
                temporary.write_text(data)
                temporary.replace(self.registry)

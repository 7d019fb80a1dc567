"""The board's identity (PROTOCOL.md §12): an Ed25519 key pair made on first start, never sent anywhere.

The public key is shown on the enrolment screen, in `ctl status` and in every heartbeat
(`board_key`); every heartbeat and playlog POST carries `X-Bangtin-Signature: <keyid>:<signature>`
over the exact body bytes sent (after any Content-Encoding), so the province can prove a record came
from this board — and a cloned SD card shows up as a second board using the same id.

`storage.dir/identity.key` holds the 32-byte seed, base64, mode 0600, owned like `storage.dir`
(so `sudo bangtin-agent identity` makes a key the service can read).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.envelope import keyid_of

IDENTITY_FILE = "identity.key"
SIGNATURE_HEADER = "X-Bangtin-Signature"


class IdentityError(Exception):
    """The identity file exists but cannot be used; str() says why (it is never replaced silently)."""


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode("ascii")

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of SHA-256 of the public key (the keyid of §3)."""
        return keyid_of(self.public_raw)

    def signature_header(self, body: bytes) -> str:
        return f"{self.fingerprint}:{base64.b64encode(self.private_key.sign(body)).decode('ascii')}"


def load_or_create(storage_dir: Path) -> Identity:
    """The board's key, made (0600) on first use. A damaged or readable-by-others file is an error:
    replacing it would change the board's identity, which the province would take for a clone."""
    path = storage_dir / IDENTITY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create(storage_dir, path)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode & 0o777
        text = handle.read(200)
    if mode & 0o077:
        raise IdentityError(f"{path} has mode {mode:04o}: the board's private key must be 0600 (chmod 600 {path})")
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise IdentityError(f"{path} is not a board key (expected 32 bytes of base64); move it away to make a new one "
                            "(the province will see a new board key)")
    return Identity(Ed25519PrivateKey.from_private_bytes(seed))


def _create(storage_dir: Path, path: Path) -> Identity:
    storage_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    data = base64.b64encode(key.private_bytes_raw()) + b"\n"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")  # one per maker
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
        owner = os.stat(storage_dir)
        if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
            os.fchown(handle.fileno(), owner.st_uid, owner.st_gid)  # made by root for the service's user
    try:
        os.link(temporary, path)  # never over a key made meanwhile by another process
    except FileExistsError:
        temporary.unlink()
        return load_or_create(storage_dir)
    temporary.unlink()
    return Identity(key)

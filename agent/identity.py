"""The board's identity (PROTOCOL.md §12): an Ed25519 key pair made on first start, never sent anywhere.

The public key is shown on the enrolment screen, in `ctl status` and in every heartbeat
(`board_key`); every heartbeat and playlog POST carries `X-Bangtin-Signature: <keyid>:<signature>`
over the exact body bytes sent (after any Content-Encoding), so the province can prove a record came
from this board.

`storage.dir/identity.key` holds the 32-byte seed, base64, mode 0600, owned like `storage.dir` (so
`sudo bangtin-agent identity` makes a key the service can read), and the machine it was made on.
The key lives on the SD card, so a byte-for-byte copy of the card would sign like the original: the
machine line ties the key to the board's hardware (a Raspberry Pi's serial number). Started on
another machine, the board keeps the old key aside (`identity.key.from-<machine>`) and makes a new
one; the province then sees a second key for the same device id — the copied card shows up as a
conflict. (An SD card moved to a new Pi after a repair shows up the same way, as it should: the
province confirms the new key.)
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.envelope import keyid_of
from agent.files import fsync_dir

IDENTITY_FILE = "identity.key"
SIGNATURE_HEADER = "X-Bangtin-Signature"
MACHINE_LINE = re.compile(r"machine ([0-9a-zA-Z:._-]{1,128})")
MAX_FILE_BYTES = 512


class IdentityError(Exception):
    """The identity file exists but cannot be used; str() says why (it is never replaced silently)."""


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    replaced: str | None = None  # why a new key was made at this start (a copied card), for errors

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


def machine_id(root: Path = Path("/")) -> str | None:
    """The hardware's own serial number where the machine has one the service may read: a Raspberry
    Pi's (device tree, or /proc/cpuinfo). None elsewhere (a PC's DMI UUID is root-only): no binding."""
    for relative in ("proc/device-tree/serial-number", "sys/firmware/devicetree/base/serial-number"):
        try:
            serial = (root / relative).read_bytes()[:64].rstrip(b"\0\n ").decode("ascii")
        except (OSError, UnicodeDecodeError):
            continue
        if serial and MACHINE_LINE.fullmatch(f"machine {serial}"):
            return serial
    try:
        for line in (root / "proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Serial" and value.strip().strip("0"):
                serial = value.strip()
                return serial if MACHINE_LINE.fullmatch(f"machine {serial}") else None
    except OSError:
        pass
    return None


def load_or_create(storage_dir: Path, machine: str | None = None) -> Identity:
    """The board's key, made (0600) on first use. A damaged or readable-by-others file is an error:
    replacing it would change the board's identity, which the province would take for a clone. A
    key made on another machine (`machine`, from `machine_id()`) is set aside and a new one made."""
    path = storage_dir / IDENTITY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return _create(storage_dir, path, machine)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot open ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        found = os.fstat(handle.fileno())
        if not stat.S_ISREG(found.st_mode):
            raise IdentityError(f"{path} is not a regular file")
        text = handle.read(MAX_FILE_BYTES).decode("ascii", "replace")
    mode = found.st_mode & 0o777
    if mode & 0o077:
        raise IdentityError(f"{path} has mode {mode:04o}: the board's private key must be 0600 (chmod 600 {path})")
    lines = text.split("\n")
    try:
        seed = base64.b64decode(lines[0].strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise IdentityError(f"{path} is not a board key (expected 32 bytes of base64); move it away to make a new one "
                            "(the province will see a new board key)")
    made_on = next((m.group(1) for line in lines[1:] if (m := MACHINE_LINE.fullmatch(line.strip()))), None)
    if machine is not None and made_on is not None and made_on != machine:
        kept = path.with_name(f"{IDENTITY_FILE}.from-{made_on[-12:]}")
        os.replace(path, kept)
        fsync_dir(storage_dir)
        fresh = _create(storage_dir, path, machine)
        return Identity(fresh.private_key, replaced=(
            f"{path} was made on another machine ({made_on}, this one is {machine}): a copied SD card? A new board "
            f"key was made (the old one is kept as {kept.name}); the province will see a second key for this board"))
    if machine is not None and made_on is None:
        _write(storage_dir, path, seed, machine, replace=True)  # a key from before the binding: bound from now on
    return Identity(Ed25519PrivateKey.from_private_bytes(seed))


def _create(storage_dir: Path, path: Path, machine: str | None) -> Identity:
    storage_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    if not _write(storage_dir, path, key.private_bytes_raw(), machine, replace=False):
        return load_or_create(storage_dir, machine)  # another process made one meanwhile: that one it is
    return Identity(key)


def _write(storage_dir: Path, path: Path, seed: bytes, machine: str | None, *, replace: bool) -> bool:
    """Write the key file through a temporary of our own; False when `replace` is off and a key
    appeared meanwhile (never written over)."""
    data = base64.b64encode(seed) + b"\n" + (f"machine {machine}\n".encode() if machine else b"")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")  # one per maker
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            owner = os.stat(storage_dir)
            if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
                os.fchown(handle.fileno(), owner.st_uid, owner.st_gid)  # made by root for the service's user
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # never over a key made meanwhile by another process
            except FileExistsError:
                return False
        fsync_dir(storage_dir)  # a power cut right after must not lose the key: that would look like a clone
        return True
    finally:
        temporary.unlink(missing_ok=True)

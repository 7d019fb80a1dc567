"""DSSE envelopes with Ed25519 (PROTOCOL.md §3): the one way signed input enters the board.

Manifests, commands, releases and provisioning bundles share this code; each names its own
`payloadType`. Bounds come first (§10): the body's size and JSON shape, at most four signatures,
so a hostile envelope costs no more than a few signature checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.limits import MAX_SIGNATURES, load_json, show_value
from agent.models import InputRejected

MANIFEST_PAYLOAD_TYPE = "application/vnd.bangtin.manifest+json"
COMMAND_PAYLOAD_TYPE = "application/vnd.bangtin.command+json"
RELEASE_PAYLOAD_TYPE = "application/vnd.bangtin.release+json"
PROVISION_PAYLOAD_TYPE = "application/vnd.bangtin.provision+json"


@dataclass(frozen=True)
class TrustedKey:
    keyid: str
    key: Ed25519PublicKey


@dataclass(frozen=True)
class Opened:
    """A verified (or, with no keys, bare) document."""

    document: dict[str, Any]
    signed_by: str | None  # keyid of the key that verified it; None for a bare document


def load_trusted_keys(encoded_keys: Sequence[str]) -> tuple[TrustedKey, ...]:
    """Decode standard-base64 raw 32-byte Ed25519 public keys; ValueError names the bad one."""
    keys = []
    for index, encoded in enumerate(encoded_keys):
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"key #{index + 1} is not standard base64: {exc}") from None
        if len(raw) != 32:
            raise ValueError(f"key #{index + 1} decodes to {len(raw)} bytes, expected 32")
        keys.append(TrustedKey(keyid_of(raw), Ed25519PublicKey.from_public_bytes(raw)))
    return tuple(keys)


def keyid_of(raw_public_key: bytes) -> str:
    """First 16 hex digits of SHA-256 of the raw public key (§3)."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: "DSSEv1 len(t) t len(b) b"."""
    encoded_type = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(encoded_type), encoded_type, len(payload), payload)


def open_envelope(raw: bytes, payload_type: str, keys: Sequence[TrustedKey], *, max_bytes: int) -> Opened:
    """Parse a DSSE envelope (or, with no keys, a bare JSON object) and verify it.

    Raises InputRejected with the reason. With keys, only an envelope signed by one of them passes.
    """
    document = load_json(raw, max_bytes=max_bytes, what="document")
    if not isinstance(document, dict):
        raise InputRejected(f"expected a JSON object, found {type(document).__name__}")
    if "payloadType" not in document and "signatures" not in document:
        if keys:
            raise InputRejected("unsigned document refused: trusted keys are configured, so a DSSE envelope is required")
        return Opened(document, None)
    payload, signatures = _decode(document, payload_type)
    signer = _find_signer(payload_type, payload, signatures, keys) if keys else None
    if keys and signer is None:
        raise InputRejected("signature not valid for any trusted key")
    decoded = load_json(payload, max_bytes=max_bytes, what="envelope payload")
    if not isinstance(decoded, dict):
        raise InputRejected(f"envelope payload: expected a JSON object, found {type(decoded).__name__}")
    return Opened(decoded, signer)


def _decode(document: dict[str, Any], payload_type: str) -> tuple[bytes, list[dict[str, Any]]]:
    found_type = document.get("payloadType")
    if found_type != payload_type:
        raise InputRejected(f"envelope payloadType: expected {payload_type!r}, found {show_value(found_type)}")
    signatures = document.get("signatures")
    if not isinstance(signatures, list) or not all(isinstance(s, dict) for s in signatures):
        raise InputRejected("envelope signatures: expected a list of objects")
    if len(signatures) > MAX_SIGNATURES:
        raise InputRejected(f"envelope has {len(signatures)} signatures, over the limit of {MAX_SIGNATURES}")
    payload_b64 = document.get("payload")
    if not isinstance(payload_b64, str):
        raise InputRejected("envelope payload: expected a base64 string")
    try:
        payload = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError):
        raise InputRejected("envelope payload: not standard base64") from None
    return payload, signatures


def _find_signer(payload_type: str, payload: bytes, signatures: list[dict[str, Any]],
                 keys: Sequence[TrustedKey]) -> str | None:
    message = pae(payload_type, payload)
    for signature in signatures:
        encoded = signature.get("sig")
        if not isinstance(encoded, str) or len(encoded) > 100:  # an Ed25519 signature is 88 characters
            continue
        try:
            sig = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # keyid is only a hint (§3): every trusted key is tried, so a wrong hint costs nothing.
        for trusted in keys:
            try:
                trusted.key.verify(sig, message)
            except InvalidSignature:
                continue
            return trusted.keyid
    return None


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    return base64.b64encode(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def sign_envelope(payload: bytes, payload_type: str, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope signed with one key (the demo, tests and provincial tools use this)."""
    raw_public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = private_key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": keyid_of(raw_public), "sig": base64.b64encode(signature).decode("ascii")}],
    }

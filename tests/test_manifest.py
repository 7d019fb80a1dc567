"""Manifest acceptance against the protocol's test vectors and hand-made bad manifests."""

from __future__ import annotations

import base64
import json
import unicodedata
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.envelope import COMMAND_PAYLOAD_TYPE, MANIFEST_PAYLOAD_TYPE, load_trusted_keys, open_envelope, pae
from agent.manifest import accept_manifest
from agent.models import InputRejected
from agent.models import ManifestRejected as ManifestError
from tests.conftest import VECTORS, base_manifest, sign_manifest

DEVICE = "vinhthuan-ubnd-01"


def accept(raw: bytes, keys: Any = (), device: str = DEVICE, groups: tuple[str, ...] = (), last: int | None = None):
    return accept_manifest(raw, keys=keys, device_id=device, groups=groups, last_serial=last)


@pytest.fixture
def keys(public_key_b64: str):
    return load_trusted_keys([public_key_b64])


def test_pae_matches_vector() -> None:
    expected = (VECTORS / "pae.txt").read_bytes().rstrip(b"\n")
    assert pae("application/vnd.bangtin.manifest+json", b'{"a":1}') == expected


def test_signed_vector_is_accepted_and_names_its_key(keys, test_key) -> None:
    manifest = accept((VECTORS / "manifest.signed.json").read_bytes(), keys)
    assert manifest.serial == 42
    assert manifest.signed_by == test_key["keyid"]
    assert manifest.media[0].sha256 == "9060fbfb0f1b73fe215046ca3dbca33cbe94c19541687f05a55a8c179c066540"
    assert [item.id for item in manifest.items] == ["i1", "i2", "i3"]
    assert manifest.layout.title == "ỦY BAN NHÂN DÂN XÃ VĨNH THUẬN"


def test_tampered_vector_is_rejected(keys) -> None:
    with pytest.raises(ManifestError, match="signature not valid for any trusted key"):
        accept((VECTORS / "manifest.tampered.json").read_bytes(), keys)


def test_bare_manifest_only_without_keys(keys) -> None:
    raw = (VECTORS / "manifest.json").read_bytes()
    assert accept(raw).serial == 42
    with pytest.raises(ManifestError, match="unsigned document refused"):
        accept(raw, keys)


def test_signature_by_an_untrusted_key_is_rejected(keys) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ManifestError, match="signature not valid"):
        accept(sign_manifest(base_manifest(1), other), keys)


def test_wrong_keyid_hint_still_verifies(keys, private_key) -> None:
    envelope = json.loads(sign_manifest(base_manifest(3), private_key))
    envelope["signatures"][0]["keyid"] = "0000000000000000"
    assert accept(json.dumps(envelope).encode(), keys).serial == 3


def test_command_envelope_verifies_with_its_own_payload_type(keys) -> None:
    raw = (VECTORS / "command.alert.signed.json").read_bytes()
    opened = open_envelope(raw, COMMAND_PAYLOAD_TYPE, keys, max_bytes=65536)
    assert opened.document["command"] == "alert" and opened.signed_by is not None
    with pytest.raises(InputRejected, match="payloadType"):
        open_envelope(raw, MANIFEST_PAYLOAD_TYPE, keys, max_bytes=65536)


def test_audience_device_or_group(keys, private_key) -> None:
    raw = sign_manifest(base_manifest(5, audience=["group:angiang"]), private_key)
    assert accept(raw, keys, device="other-board", groups=("angiang",)).serial == 5
    with pytest.raises(ManifestError, match="audience"):
        accept(raw, keys, device="other-board", groups=("cantho",))


def test_rollback_refused_same_serial_allowed(keys) -> None:
    raw = (VECTORS / "manifest.signed.json").read_bytes()
    assert accept(raw, keys, last=42).serial == 42
    with pytest.raises(ManifestError, match=r"serial 42 is lower than the accepted 43 \(rollback refused\)"):
        accept(raw, keys, last=43)


def test_text_is_normalised_to_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "THÔNG BÁO khẩn: Người dân")
    manifest = base_manifest(1, items=[{"id": "t", "type": "text", "title": decomposed, "body": decomposed,
                                        "duration_s": 5}],
                             ticker=[{"id": "k", "text": decomposed}])
    parsed = accept(json.dumps(manifest).encode())
    assert parsed.items[0].title == "THÔNG BÁO khẩn: Người dân"
    assert parsed.items[0].title != decomposed
    assert parsed.ticker[0].text == unicodedata.normalize("NFC", decomposed)


MEDIA = {"id": "m1", "url": "media/a.png", "sha256": "a" * 64, "size": 10, "type": "image/png"}
IMAGE = {"id": "i1", "type": "image", "media": "m1", "duration_s": 5}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"schema": "bangtin.manifest/2"}, "schema: expected 'bangtin.manifest/1'"),
        ({"serial": 0}, "serial: expected an integer >= 1, found 0"),
        ({"serial": "42"}, "serial: expected an integer >= 1"),
        ({"issued_at": "2026-11-26 08:00"}, "issued_at: expected an RFC 3339 time with offset"),
        ({"timezone": "Asia/Hanoi_Typo"}, "timezone: expected an IANA time zone"),
        ({"media": [{**MEDIA, "sha256": "ABC"}]}, r"media\[0\].sha256: expected 64 lowercase hex digits"),
        ({"media": [{**MEDIA, "url": "../../etc/passwd"}]}, r"media\[0\].url: '..' segments are not allowed"),
        ({"media": [{**MEDIA, "url": "media/%2e%2e/x.png"}]}, r"media\[0\].url: '..' segments"),
        ({"media": [{**MEDIA, "url": "file:///etc/passwd"}]}, r"media\[0\].url: expected an http\(s\) or relative url"),
        ({"media": [{**MEDIA, "url": "//evil.example/x.png"}]}, "network-path urls"),
        ({"media": [{**MEDIA, "id": "../m1"}]}, r"media\[0\].id: expected an id"),
        ({"media": [MEDIA, MEDIA]}, r"media\[1\].id: 'm1' is used twice"),
        ({"media": [MEDIA], "items": [{**IMAGE, "media": "m9"}]}, r"items\[0\].media: expected the id of an entry"),
        ({"media": [MEDIA], "items": [{**IMAGE, "duration_s": 0}]}, r"items\[0\].duration_s: expected a number > 0"),
        ({"media": [MEDIA], "items": [{**IMAGE, "duration_s": None}]}, "required for image items"),
        ({"media": [MEDIA], "items": [{**IMAGE, "priority": "urgent"}]}, "priority: expected normal, high or emergency"),
        ({"media": [MEDIA], "items": [{**IMAGE, "type": "video"}]}, r"items\[0\].media: expected video media"),
        ({"media": [MEDIA], "items": [{**IMAGE, "when": {"days": [0]}}]}, "when.days: expected a list of ISO weekdays"),
        ({"media": [MEDIA], "items": [{**IMAGE, "when": {"times": [["7:00", "9:00"]]}}]}, r"times\[0\]: expected HH:MM"),
        ({"media": [MEDIA], "items": [IMAGE], "default_item": "i9"}, "default_item: expected the id of an item"),
        ({"layout": {"theme": {"accent": "yellow"}}}, "layout.theme.accent: expected a colour #RRGGBB"),
        ({"layout": {"rotation": 45}}, "layout.rotation: expected 0, 90, 180 or 270"),
        ({"screen": {"on": [["05:30"]]}}, r"screen.on\[0\]: expected"),
    ],
)
def test_schema_errors_name_the_path_and_what_was_found(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        accept(json.dumps({**base_manifest(1), **change}).encode())


def test_not_json_and_not_an_object() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        accept(b"{not json")
    with pytest.raises(ManifestError, match="expected a JSON object, found list"):
        accept(b"[1, 2]")
    with pytest.raises(ManifestError, match="payload: not standard base64"):
        accept(json.dumps({"payloadType": MANIFEST_PAYLOAD_TYPE, "payload": "***", "signatures": []}).encode())


def test_unknown_fields_are_ignored() -> None:
    manifest = base_manifest(7, future_field={"x": 1}, layout={"header": {"title": "X", "marquee": True}})
    assert accept(json.dumps(manifest).encode()).serial == 7


def test_bad_trusted_key_is_named() -> None:
    with pytest.raises(ValueError, match="key #2 decodes to 3 bytes"):
        load_trusted_keys([base64.b64encode(b"k" * 32).decode(), base64.b64encode(b"abc").decode()])

"""Fuzzing in the suite (issue 10): parsers raise nothing but their own refusal, whatever they are fed;
the renderer, fed generated valid manifests under a memory limit, never crashes and never blocks a
frame for more than a second (tests/fuzz_render.py, in its own process so the limit is its own).

Examples that once broke something are kept with @example.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.commands import Addressee, CommandLog, RemoteCommands, parse_command
from agent.config import ConfigError, config_from_mapping
from agent.control import Dispatcher
from agent.ctlsocket import parse_request
from agent.envelope import COMMAND_PAYLOAD_TYPE, MANIFEST_PAYLOAD_TYPE, load_trusted_keys, sign_envelope
from agent.limits import MAX_BODY_CHARS, MAX_TICKER_CHARS, MAX_TITLE_CHARS
from agent.manifest import accept_manifest
from agent.models import CommandRejected, InputRejected, ManifestRejected
from tests.conftest import ROOT
from tests.strategies import commands, configs, json_values, mutated_manifests, raw_documents
from tests.test_commands import VALID_AT, Screen

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS_B64 = json.loads((ROOT / "tests" / "vectors" / "test-key.json").read_text())["public_key_b64"]


def signed(document: dict[str, Any], payload_type: str = MANIFEST_PAYLOAD_TYPE) -> bytes:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = json.loads((ROOT / "tests" / "vectors" / "test-key.json").read_text())["private_seed_b64"]
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed))
    payload = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(sign_envelope(payload, payload_type, key)).encode()


def check_manifest(raw: bytes, keys: Any) -> None:
    try:
        manifest = accept_manifest(raw, keys=keys, device_id="vinhthuan-ubnd-01", groups=("angiang",), last_serial=None)
    except ManifestRejected as exc:
        assert len(str(exc)) < 500  # a refusal reads like a sentence, whatever it quotes
        return
    # What passes is within every limit the renderer relies on.
    assert all(len(item.title) <= MAX_TITLE_CHARS and len(item.body) <= MAX_BODY_CHARS for item in manifest.items)
    assert all(len(line.text) <= MAX_TICKER_CHARS for line in manifest.ticker)
    assert 1 <= manifest.layout.ticker_speed_px_s <= 2000


@FUZZ
@given(raw_documents)
@example(b"[" * 50_000 + b"]" * 50_000)  # RecursionError escaped ManifestError (issue 10, item 8)
@example(b'{"schema": "bangtin.manifest/1", "serial": 1, "layout": {"ticker": {"speed_px_s": Infinity}}}')
@example(b'{"payloadType": "application/vnd.bangtin.manifest+json", "payload": "\xff", "signatures": []}')
def test_any_bytes_as_a_manifest_are_accepted_or_refused_never_raised(raw: bytes) -> None:
    check_manifest(raw, ())
    check_manifest(raw, load_trusted_keys([KEYS_B64]))


@FUZZ
@given(mutated_manifests())
@example({"schema": "bangtin.manifest/1", "serial": 1, "issued_at": "2026-11-26T08:00:00+07:00",
          "media": [{"id": "m1", "url": "http://[::1", "sha256": "a" * 64, "size": 1, "type": "image/png"}]})
def test_mutated_manifests_bare_and_signed_are_accepted_or_refused(document: dict[str, Any]) -> None:
    try:
        bare = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (ValueError, UnicodeEncodeError):
        return
    check_manifest(bare, ())
    check_manifest(signed(document), load_trusted_keys([KEYS_B64]))


@FUZZ
@given(commands(), st.sampled_from([None, "angiang", "cantho"]))
def test_any_command_is_acked_or_dropped_never_raised(tmp_path_factory: Any, body: dict[str, Any],
                                                      topic_group: str | None) -> None:
    keys = load_trusted_keys([KEYS_B64])
    raw = signed(body, COMMAND_PAYLOAD_TYPE)
    try:
        parse_command(raw, keys, Addressee("vinhthuan-ubnd-01", ("angiang",), topic_group))
    except CommandRejected:
        pass
    log = CommandLog(tmp_path_factory.mktemp("cmd") / "commands.sqlite")
    log.open()
    try:
        remote = RemoteCommands(Dispatcher(Screen().actions(VALID_AT)), log, keys, lambda: VALID_AT, None,
                                lambda count, why: None, device_id="vinhthuan-ubnd-01", groups=("angiang",))
        ack = remote.handle(raw, "t", topic_group)
        assert ack is None or (isinstance(ack, dict) and isinstance(ack.get("ok"), bool))
    finally:
        log.close()


@FUZZ
@given(configs)
@example({"device": {1: "x"}})
@example({"source": {"token": "a\nb"}, "device": {"id": "b"}})
def test_any_config_mapping_is_loaded_or_refused_with_config_errors(data: Any) -> None:
    if not isinstance(data, dict):
        data = {"device": data}
    try:
        config_from_mapping(data, Path("/etc/bangtin/agent.yaml"))
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and len(p) < 600 for p in exc.problems)


@FUZZ
@given(raw_documents | st.builds(lambda value: json.dumps({"command": "alert", "args": value}).encode(), json_values))
def test_any_socket_request_gets_an_answer(line: bytes) -> None:
    dispatcher = Dispatcher(Screen().actions(VALID_AT))
    try:
        request = parse_request(line)
    except InputRejected:
        return
    response = dispatcher.handle(request)
    assert isinstance(response["ok"], bool) and (response["ok"] or isinstance(response["error"], str))


@FUZZ
@given(json_values)
def test_dispatcher_answers_any_decoded_request(request: Any) -> None:
    response = Dispatcher(Screen().actions(VALID_AT)).handle(
        {"command": "alert", "args": request} if isinstance(request, dict) else request)
    assert isinstance(response, dict) and isinstance(response["ok"], bool)


def test_the_renderer_survives_generated_valid_manifests_under_a_memory_limit(tmp_path: Path) -> None:
    """In its own process: RLIMIT_AS caps it, and one frame taking over 1 s fails it (the watchdog)."""
    result = subprocess.run([sys.executable, "-m", "tests.fuzz_render", "--examples", "120", "--work", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "frames rendered:" in result.stdout


"""Hypothesis strategies for hostile and valid-but-extreme input: JSON, manifests, commands, configs."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Text that has broken renderers and parsers elsewhere: decomposed Vietnamese, combining marks piled
# up, zero-width and bidi controls, emoji and wide CJK, NUL, lone surrogates (JSON can carry them).
NASTY_CHARS = "ươạđ\u0300\u0301\u0323\u0303\u200b\u200d\u202e\u2066\ufeff\u0000\t\n\r 𝕍😀中\U0010ffff"
nasty_text = st.text(alphabet=st.sampled_from(NASTY_CHARS) | st.characters(), max_size=60)
long_text = st.builds(lambda unit, times: unit * times, st.sampled_from(["-", "Đ", "ư\u0301", "a ", "😀"]),
                      st.integers(0, 5000))

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | nasty_text | long_text)
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=5)
                           | st.dictionaries(nasty_text | st.sampled_from(["id", "type", "media", "when", "text"]),
                                             children, max_size=5), max_leaves=30)


def deep_nesting(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


raw_documents = (st.binary(max_size=300)
                 | st.builds(lambda value: json.dumps(value).encode(), json_values)
                 | st.integers(30, 60_000).map(lambda depth: b"[" * depth + b"]" * depth)
                 | st.integers(30, 60_000).map(deep_nesting))


def valid_manifest_dict(serial: int = 1) -> dict[str, Any]:
    return {
        "schema": "bangtin.manifest/1", "serial": serial, "issued_at": "2026-11-26T08:00:00+07:00",
        "audience": ["vinhthuan-ubnd-01"], "timezone": "Asia/Ho_Chi_Minh",
        "layout": {"header": {"title": "ỦY BAN NHÂN DÂN XÃ", "logo": "m1", "clock": True},
                   "ticker": {"speed_px_s": 120}, "theme": {"background": "#0B3D91", "foreground": "#FFFFFF",
                                                            "accent": "#FFD200"}, "rotation": 0},
        "media": [{"id": "m1", "url": "media/a.png", "sha256": "a" * 64, "size": 10, "type": "image/png"}],
        "items": [{"id": "i1", "type": "image", "media": "m1", "duration_s": 10},
                  {"id": "i2", "type": "text", "title": "THÔNG BÁO", "body": "Nội dung", "duration_s": 5,
                   "priority": "high", "when": {"days": [1, 2], "times": [["07:00", "11:30"]]}}],
        "ticker": [{"id": "t1", "text": "Bão số 3"}], "screen": {"on": [["05:30", "22:00"]]}, "default_item": "i1",
    }


PATHS = [("serial",), ("issued_at",), ("timezone",), ("audience",), ("layout",), ("layout", "header", "title"),
         ("layout", "header", "logo"), ("layout", "ticker", "speed_px_s"), ("layout", "theme", "accent"),
         ("layout", "rotation"), ("media",), ("media", 0, "url"), ("media", 0, "size"), ("media", 0, "sha256"),
         ("items",), ("items", 0, "duration_s"), ("items", 1, "when"), ("items", 1, "when", "times"),
         ("items", 1, "title"), ("items", 1, "body"), ("items", 0, "media"), ("ticker",), ("ticker", 0, "text"),
         ("screen", "on"), ("default_item",)]


def _set(document: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


@st.composite
def mutated_manifests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid manifest with a few fields replaced by anything at all (the parser's edge cases)."""
    document = valid_manifest_dict(draw(st.integers(1, 2**31)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        try:
            _set(document, path, draw(json_values))
        except (KeyError, IndexError, TypeError):
            continue
    return document


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"id": draw(st.sampled_from(["c-1", "c-2"]) | nasty_text),
                            "command": draw(st.sampled_from(["alert", "screen", "ping", "clear_alert", "sync"])
                                            | nasty_text),
                            "args": draw(st.dictionaries(st.sampled_from(["title", "body", "minutes", "until", "mode",
                                                                          "alert"]), json_values, max_size=4)
                                         | json_values)}
    for key in ("issued_at", "expires_at", "audience"):
        if draw(st.booleans()):
            body[key] = draw(json_values | st.sampled_from(["2026-12-01T09:00:00+07:00", "2099-01-01T00:00:00Z"]))
    return body


config_keys = st.sampled_from(["device", "source", "security", "mqtt", "report", "storage", "display", "control",
                               "id", "url", "token", "token_file", "poll_interval_s", "manifest_keys", "dir", "fps",
                               "width", "groups", "keepalive_s"]) | nasty_text
configs = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                       | st.dictionaries(config_keys | st.integers(), children, max_size=6), max_leaves=25)

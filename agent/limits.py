"""Bounds on every input (PROTOCOL.md §10), and the JSON reader that enforces them.

Each limit is checked before the expensive step it protects (parsing, verifying signatures,
decoding pixels), and a refusal names the limit. `clip` is how text from outside is echoed into
`errors`, logs and the heartbeat: never more than 200 characters, never a control character.
"""

from __future__ import annotations

import json
import math
from typing import Any

from agent.models import InputRejected

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_COMMAND_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
MAX_SAFE_INTEGER = 2**53
MAX_ITEMS = 1000
MAX_TICKER_LINES = 1000
MAX_MEDIA = 1000
MAX_TITLE_CHARS = 200
MAX_BODY_CHARS = 4000
MAX_TICKER_CHARS = 1000
MAX_DURATION_S = 86400.0
MAX_TOTAL_WINDOWS = 20_000  # `times` and `screen.on` windows in one manifest (ours: §10 sets none)
TICKER_SPEED_RANGE = (1.0, 2000.0)
MAX_SIGNATURES = 4
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 40_000_000
MAX_VIDEO_SIZE = (3840, 2160)
MAX_ECHO_CHARS = 200


def clip(text: object, limit: int = MAX_ECHO_CHARS) -> str:
    """Outside text made safe to echo: control characters escaped, at most `limit` characters."""
    shown = str(text)
    if len(shown) > limit * 4:
        shown = shown[: limit * 4]  # escaping below never needs more than this much
    shown = "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in shown)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def show_value(value: Any, limit: int = 60) -> str:
    """A found value for an error message: JSON-ish, short."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = type(value).__name__
    if isinstance(value, str):
        return repr(clip(text, limit))
    return clip(text, limit)


def _refuse_constant(name: str) -> Any:
    raise InputRejected(f"JSON number {name} is not allowed (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputRejected(f"JSON number {clip(text, 30)} is not finite")
    return value


def _safe_int(text: str) -> int:
    # Checked on the text first: Python refuses to convert very long digit strings anyway, slowly.
    if len(text.lstrip("-")) > 16 or abs(int(text)) >= MAX_SAFE_INTEGER:
        raise InputRejected(f"JSON integer {clip(text, 30)} is not below 2^53")
    return int(text)


def depth_of(document: Any) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def load_json(raw: bytes, *, max_bytes: int, what: str) -> Any:
    """Decode `raw` as JSON within §10's rules, or raise InputRejected naming the rule and `what`."""
    if len(raw) > max_bytes:
        raise InputRejected(f"{what} is {len(raw)} bytes, over the limit of {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputRejected(f"{what} is not UTF-8 text (byte {exc.start})") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_safe_int)
    except InputRejected as exc:
        raise InputRejected(f"{what}: {exc}") from None
    except RecursionError:
        raise InputRejected(f"{what}: JSON nesting deeper than {MAX_JSON_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise InputRejected(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. Python's own cap on digits
        raise InputRejected(f"{what} is not valid JSON: {clip(exc, 80)}") from None
    if depth_of(document) > MAX_JSON_DEPTH:
        raise InputRejected(f"{what}: JSON nesting deeper than {MAX_JSON_DEPTH}")
    return document

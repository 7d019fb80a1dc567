"""The command dispatcher shared by the local control socket (§9) and MQTT (§8, agent/commands.py).

Requests are validated here into typed actions with clear errors; anything that touches the
player or the screen runs on the display thread (`on_display`), which also wakes it at once — that
is what keeps an alert under a second from command to screen. `status` and the PNG encoding of a
screenshot run on the caller's thread: the display thread only hands over what it owns.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.ids import new_ulid
from agent.limits import MAX_BODY_CHARS, MAX_TITLE_CHARS, clip, show_value
from agent.manifest import nfc, parse_instant
from agent.models import Alert, InputRejected

log = logging.getLogger(__name__)

COMMANDS = ("status", "ping", "sync", "alert", "clear_alert", "screen", "screenshot", "restart", "withdraw", "logs")
DEFAULT_ALERT_MINUTES = 60
MAX_ALERT_MINUTES = 7 * 24 * 60
ANSWER_TIMEOUT_S = 10.0
DEFAULT_LOG_LINES = 500
MAX_LOG_LINES = 5000  # §8
MAX_WITHDRAW_IDS = 1000


class CommandError(ValueError):
    """A request that cannot be run; str() is sent back as the error."""


@dataclass(frozen=True)
class Actions:
    """What the dispatcher can make the agent do; `main.py` wires these to the real parts."""

    on_display: Callable[[Callable[[], Any]], concurrent.futures.Future[Any]]  # run on the display thread
    status: Callable[[], dict[str, Any]]  # called on the caller's thread
    add_alert: Callable[[Alert], None]  # display thread
    clear_alerts: Callable[[str | None], int]  # display thread
    set_screen_mode: Callable[[str], None]  # display thread
    screenshot_png: Callable[[], bytes]  # caller's thread (it asks the display thread for a copy)
    sync: Callable[[], None]
    restart: Callable[[], None]
    now: Callable[[], dt.datetime]
    withdraw: Callable[[list[str]], list[str]]  # display thread; returns the ids the manifest has
    recent_logs: Callable[[int], list[str]]  # any thread


def parse_alert(args: Mapping[str, Any], command_id: str | None, now: dt.datetime) -> Alert:
    """`alert` args: title, body, and `until` (RFC 3339) or `minutes` (neither: 60)."""
    title = args.get("title", "")
    body = args.get("body", "")
    if not isinstance(title, str) or not isinstance(body, str):
        raise CommandError("alert: args.title and args.body: expected strings")
    if not (title.strip() or body.strip()):
        raise CommandError("alert: expected a title or a body, found neither")
    if len(title) > MAX_TITLE_CHARS or len(body) > MAX_BODY_CHARS:
        raise CommandError(f"alert: title and body are limited to {MAX_TITLE_CHARS} and {MAX_BODY_CHARS} characters, "
                           f"found {len(title)} and {len(body)}")
    until_text, minutes = args.get("until"), args.get("minutes")
    if until_text is not None and minutes is not None:
        raise CommandError("alert: expected args.until or args.minutes, found both")
    if until_text is not None:
        if not isinstance(until_text, str):
            raise CommandError(f"alert: args.until: expected an RFC 3339 time, found {show_value(until_text)}")
        try:
            until = parse_instant(until_text, "alert: args.until")
        except InputRejected as exc:
            raise CommandError(str(exc)) from None
        if until <= now:
            raise CommandError(f"alert: args.until {until_text} is already past")
        if until - now > dt.timedelta(minutes=MAX_ALERT_MINUTES):
            raise CommandError(f"alert: args.until is more than {MAX_ALERT_MINUTES // 1440} days away")
    else:
        count = DEFAULT_ALERT_MINUTES if minutes is None else minutes
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not 0 < count <= MAX_ALERT_MINUTES:
            raise CommandError(f"alert: args.minutes: expected a number from 1 to {MAX_ALERT_MINUTES}, "
                               f"found {show_value(minutes)}")
        until = now + dt.timedelta(minutes=count)
    return Alert(id=command_id or f"local-{new_ulid()}", title=nfc(title), body=nfc(body), until=until)


def parse_withdraw(args: Mapping[str, Any]) -> list[str]:
    """`withdraw` args: `items`, the ids of manifest items or ticker lines."""
    ids = args.get("items")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and 0 < len(i) <= 128 for i in ids):
        raise CommandError(f"withdraw: args.items: expected a list of item or ticker ids, found {show_value(ids)}")
    if len(ids) > MAX_WITHDRAW_IDS:
        raise CommandError(f"withdraw: args.items: {len(ids)} ids, over the limit of {MAX_WITHDRAW_IDS}")
    return list(dict.fromkeys(ids))


def parse_log_lines(args: Mapping[str, Any]) -> int:
    """`logs` args: `lines`, default 500, at most 5000."""
    lines = args.get("lines", DEFAULT_LOG_LINES)
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= MAX_LOG_LINES:
        raise CommandError(f"logs: args.lines: expected a number from 1 to {MAX_LOG_LINES}, found {show_value(lines)}")
    return lines


class Dispatcher:
    def __init__(self, actions: Actions) -> None:
        self._actions = actions

    def handle(self, request: Any) -> dict[str, Any]:
        """One request object → one response object `{"ok", "result" | "error"}`. Never raises."""
        try:
            return {"ok": True, "result": self._run(request)}
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except concurrent.futures.TimeoutError:
            return {"ok": False, "error": f"the display loop did not answer within {ANSWER_TIMEOUT_S:g} s"}
        except Exception as exc:
            log.exception("command failed")
            return {"ok": False, "error": clip(f"internal error: {type(exc).__name__}: {exc}")}

    def _on_display(self, work: Callable[[], Any]) -> Any:
        return self._actions.on_display(work).result(timeout=ANSWER_TIMEOUT_S)

    def _run(self, request: Any) -> Any:
        if not isinstance(request, dict):
            raise CommandError(f"expected a JSON object {{\"command\", \"args\"}}, found {type(request).__name__}")
        command = request.get("command")
        args = request.get("args") or {}
        if command not in COMMANDS:
            raise CommandError(f"unknown command {show_value(command)}; known: {', '.join(COMMANDS)}")
        if not isinstance(args, dict):
            raise CommandError(f"{command}: args: expected an object, found {type(args).__name__}")
        actions = self._actions
        if command == "status":
            return actions.status()
        if command == "ping":
            return {"pong": True}
        if command == "sync":
            actions.sync()
            return {"sync": "requested"}
        if command == "alert":
            alert = parse_alert(args, request.get("id"), actions.now())
            self._on_display(lambda: actions.add_alert(alert))
            return {"alert": alert.id, "until": alert.until.isoformat()}
        if command == "clear_alert":
            alert_id = args.get("alert")
            if alert_id is not None and not isinstance(alert_id, str):
                raise CommandError(f"clear_alert: args.alert: expected a command id, found {show_value(alert_id)}")
            return {"cleared": self._on_display(lambda: actions.clear_alerts(alert_id))}
        if command == "screen":
            mode = args.get("mode")
            if mode not in ("on", "off", "auto"):
                raise CommandError(f"screen: args.mode: expected on, off or auto, found {show_value(mode)}")
            self._on_display(lambda: actions.set_screen_mode(mode))
            return {"mode": mode}
        if command == "screenshot":
            png = actions.screenshot_png()
            return {"png_base64": base64.b64encode(png).decode("ascii"), "bytes": len(png)}
        if command == "withdraw":
            ids = parse_withdraw(args)
            found = self._on_display(lambda: actions.withdraw(ids))
            return {"items": found, "not_found": [i for i in ids if i not in found]}
        if command == "logs":
            return {"lines": actions.recent_logs(parse_log_lines(args))}
        actions.restart()
        return {"restart": "requested"}

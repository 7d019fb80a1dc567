"""The command dispatcher shared by the local control socket (§9) and, later, MQTT (§8).

Requests are validated here into typed actions with clear errors; anything that touches the
player or the screen runs on the display thread (`post`), which also wakes it at once — that is
what keeps an alert under a second from command to screen.
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
from agent.manifest import nfc, parse_instant
from agent.models import Alert

log = logging.getLogger(__name__)

COMMANDS = ("status", "ping", "sync", "alert", "clear_alert", "screen", "screenshot", "restart")
DEFAULT_ALERT_MINUTES = 60
MAX_ALERT_MINUTES = 7 * 24 * 60
ANSWER_TIMEOUT_S = 10.0


class CommandError(ValueError):
    """A request that cannot be run; str() is sent back as the error."""


@dataclass(frozen=True)
class Actions:
    """What the dispatcher can make the agent do; `main.py` wires these to the real parts."""

    post: Callable[[Callable[[], Any]], concurrent.futures.Future[Any]]  # run on the display thread
    status: Callable[[], dict[str, Any]]  # called on the display thread
    add_alert: Callable[[Alert], None]
    clear_alerts: Callable[[str | None], int]
    set_screen_mode: Callable[[str], None]
    screenshot_png: Callable[[], bytes]
    sync: Callable[[], None]
    restart: Callable[[], None]
    now: Callable[[], dt.datetime]


def parse_alert(args: Mapping[str, Any], command_id: str | None, now: dt.datetime) -> Alert:
    """`alert` args: title, body, and `until` (RFC 3339) or `minutes` (neither: 60)."""
    title = args.get("title", "")
    body = args.get("body", "")
    if not isinstance(title, str) or not isinstance(body, str):
        raise CommandError("alert: args.title and args.body: expected strings")
    if not (title.strip() or body.strip()):
        raise CommandError("alert: expected a title or a body, found neither")
    until_text, minutes = args.get("until"), args.get("minutes")
    if until_text is not None and minutes is not None:
        raise CommandError("alert: expected args.until or args.minutes, found both")
    if until_text is not None:
        if not isinstance(until_text, str):
            raise CommandError(f"alert: args.until: expected an RFC 3339 time, found {until_text!r}")
        try:
            until = parse_instant(until_text, "alert: args.until")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if until <= now:
            raise CommandError(f"alert: args.until {until_text} is already past")
    else:
        count = DEFAULT_ALERT_MINUTES if minutes is None else minutes
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not 0 < count <= MAX_ALERT_MINUTES:
            raise CommandError(f"alert: args.minutes: expected a number from 1 to {MAX_ALERT_MINUTES}, found {minutes!r}")
        until = now + dt.timedelta(minutes=count)
    return Alert(id=command_id or f"local-{new_ulid()}", title=nfc(title), body=nfc(body), until=until)


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
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    def _on_display(self, work: Callable[[], Any]) -> Any:
        return self._actions.post(work).result(timeout=ANSWER_TIMEOUT_S)

    def _run(self, request: Any) -> Any:
        if not isinstance(request, dict):
            raise CommandError(f"expected a JSON object {{\"command\", \"args\"}}, found {type(request).__name__}")
        command = request.get("command")
        args = request.get("args") or {}
        if command not in COMMANDS:
            raise CommandError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
        if not isinstance(args, dict):
            raise CommandError(f"{command}: args: expected an object, found {type(args).__name__}")
        actions = self._actions
        if command == "status":
            return self._on_display(actions.status)
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
                raise CommandError(f"clear_alert: args.alert: expected a command id, found {alert_id!r}")
            return {"cleared": self._on_display(lambda: actions.clear_alerts(alert_id))}
        if command == "screen":
            mode = args.get("mode")
            if mode not in ("on", "off", "auto"):
                raise CommandError(f"screen: args.mode: expected on, off or auto, found {mode!r}")
            self._on_display(lambda: actions.set_screen_mode(mode))
            return {"mode": mode}
        if command == "screenshot":
            png = self._on_display(actions.screenshot_png)
            return {"png_base64": base64.b64encode(png).decode("ascii"), "bytes": len(png)}
        actions.restart()
        return {"restart": "requested"}

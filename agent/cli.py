"""Argument parsing only (AGENT.md "Command line"); the work happens in main, demo and ctlsocket."""

from __future__ import annotations

import argparse
import base64
import faulthandler
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import Config, ConfigError, load_config

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
SYSLOG_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bangtin-agent", description="Player agent for public electronic bulletin boards.")
    parser.add_argument("--version", action="version", version=f"bangtin-agent {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log (default INFO: state changes only)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the player in the foreground (what systemd starts)")
    run.add_argument("--config", required=True, type=Path, metavar="PATH")

    check = commands.add_parser("check-config", help="validate a config file and print every problem")
    check.add_argument("--config", required=True, type=Path, metavar="PATH")

    demo = commands.add_parser("demo", help="play built-in Vietnamese sample bulletins in a window")
    demo.add_argument("--fullscreen", action="store_true", help="full screen instead of a window")
    demo.add_argument("--dir", type=Path, metavar="DIR", help="where to write the demo content (default: a user cache dir)")

    report = commands.add_parser("report", help="what was shown, how often and how long (from the local journal)")
    report.add_argument("--config", required=True, type=Path, metavar="PATH")
    report.add_argument("--from", dest="date_from", type=_date, metavar="DATE", help="first day, YYYY-MM-DD (local)")
    report.add_argument("--to", dest="date_to", type=_date, metavar="DATE", help="last day, YYYY-MM-DD (local)")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")

    ctl = commands.add_parser("ctl", help="talk to the running agent over its control socket")
    ctl.add_argument("--config", required=True, type=Path, metavar="PATH")
    actions = ctl.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="what the board shows and how it is")
    status.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    shot = actions.add_parser("screenshot", help="save what is on screen now as PNG")
    shot.add_argument("out", type=Path, metavar="OUT.png")
    actions.add_parser("sync", help="re-read the source now")
    alert = actions.add_parser("alert", help="show a local emergency message over everything")
    alert.add_argument("--title", required=True)
    alert.add_argument("--body", default="")
    alert.add_argument("--minutes", type=float, default=None, help="how long (default 60)")
    clear = actions.add_parser("clear-alert", help="end the local alert(s)")
    clear.add_argument("--id", default=None, help="end only this alert")
    screen = actions.add_parser("screen", help="force the screen on or off, or back to its schedule")
    screen.add_argument("mode", choices=["on", "off", "auto"])
    return parser


def _date(text: str) -> str:
    """YYYY-MM-DD, checked, kept as text (days in the journal are local dates)."""
    import datetime as dt

    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, found {text!r}") from None


class JournaldFormatter(logging.Formatter):
    """Under systemd: no timestamp (journald adds its own) and a `<N>` syslog priority prefix, so
    `journalctl -p warning` finds our warnings."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournaldFormatter("%(threadName)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    logging.getLogger("watchdog").setLevel(max(logging.INFO, getattr(logging, level)))  # per-inotify-event noise


def load_or_report(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {path}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before pygame is imported: with a handler in place pygame installs no SIGSEGV "parachute", which
    # can hang a crashing process (screen dark until the watchdog fires) instead of letting it die.
    faulthandler.enable()
    setup_logging(args.log_level)
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # before pygame's first import: keep logs clean
    if args.command == "check-config":
        config = load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG
        print(f"{args.config}: OK (device {config.device.id}, source {config.source.url})")
        return EXIT_OK
    if args.command == "run":
        config = load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG
        from agent.main import run

        return run(config)
    if args.command == "report":
        config = load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG
        from agent.outbox import RECORDS_FILE
        from agent.report import build_report, format_report

        print(format_report(build_report(Path(config.storage.dir) / RECORDS_FILE, args.date_from, args.date_to),
                            args.format))
        return EXIT_OK
    if args.command == "demo":
        from agent.demo import run_demo

        return run_demo(fullscreen=args.fullscreen, directory=args.dir)
    return ctl(args)


def ctl(args: argparse.Namespace) -> int:
    from agent.ctlsocket import ControlUnavailable, request

    config = load_or_report(args.config)
    if config is None:
        return EXIT_CONFIG
    command, payload = {
        "status": ("status", {}),
        "screenshot": ("screenshot", {}),
        "sync": ("sync", {}),
        "alert": ("alert", {"title": getattr(args, "title", None), "body": getattr(args, "body", None),
                            **({"minutes": args.minutes} if getattr(args, "minutes", None) is not None else {})}),
        "clear-alert": ("clear_alert", {"alert": getattr(args, "id", None)} if getattr(args, "id", None) else {}),
        "screen": ("screen", {"mode": getattr(args, "mode", None)}),
    }[args.action]
    try:
        response = request(Path(config.control.socket), command, payload)
    except ControlUnavailable as exc:
        print(f"bangtin-agent ctl: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not response.get("ok"):
        print(f"bangtin-agent ctl {args.action}: {response.get('error')}", file=sys.stderr)
        return EXIT_FAIL
    result: dict[str, Any] = response.get("result") or {}
    if args.action == "screenshot":
        png = base64.b64decode(result["png_base64"])
        args.out.write_bytes(png)
        print(f"{args.out}: {len(png)} bytes")
    elif args.action == "status" and not args.json:
        print(format_status(result))
    else:
        print(json.dumps(result, ensure_ascii=False, indent=None if args.action == "status" else 2))
    return EXIT_OK


def format_status(status: dict[str, Any]) -> str:
    """`ctl status` for a person on SSH."""
    display = status.get("display", {})
    cache = status.get("cache", {})
    lines = [
        f"device          {status.get('device')}   agent {status.get('agent_version')}   up {status.get('uptime_s')} s",
        f"source          {status.get('source')}",
        f"manifest        serial {status.get('manifest_serial')}, last sync {status.get('last_sync_ok_at') or 'never'}",
        f"on screen       {status.get('current_item') or '(splash)'}"
        + ("   [ALERT]" if status.get("alert_active") else ""),
        f"screen          {'on' if status.get('screen_on') else 'off'} (mode {status.get('screen_mode')})",
        f"media           {cache.get('media_missing', 0)} missing, {cache.get('bytes_used', 0)} bytes verified",
        f"outbox          {status.get('outbox_pending')} record(s) pending",
        f"display         {display.get('driver')} {display.get('size')} frames {display.get('frames')}",
    ]
    sync = status.get("sync") or {}
    if sync.get("pending_manifest_serial"):
        lines.append(f"next manifest   serial {sync['pending_manifest_serial']} (fetching its media)")
    download = sync.get("download")
    if download:
        eta = f", about {download['eta_s']} s left" if download.get("eta_s") is not None else ""
        lines.append(f"downloading     {download['media']}: {download['bytes_done']}/{download['bytes_total']} bytes{eta}")
    errors = status.get("errors") or []
    lines.append(f"errors          {len(errors) or 'none'}")
    lines.extend(f"  - {error}" for error in errors)
    return "\n".join(lines)

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

import yaml

from agent import __version__, i18n
from agent.config import Config, ConfigError, config_warnings, load_config
from agent.i18n import _, ngettext

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
SYSLOG_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bangtin-agent", description="Player agent for public electronic bulletin boards.")
    parser.add_argument("--version", action="version", version=f"bangtin-agent {__version__}")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log (default: the config's log_level, INFO: state changes only)")
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
    report.add_argument("--format", choices=["table", "csv", "json", "html"], default="table",
                        help="html: the printable yearly report in Vietnamese (one offline file)")
    report.add_argument("--section", default="items", choices=["items", "summary", "days", "months", "priorities",
                                                                "emergencies", "outages"],
                        help="with --format csv: which table (default items)")
    report.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of standard output")

    identity = commands.add_parser("identity", help="print the board's public key and fingerprint (made if missing)")
    identity.add_argument("--config", required=True, type=Path, metavar="PATH")
    identity.add_argument("--json", action="store_true", help="one JSON object (for scripts)")

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
    withdraw = actions.add_parser("withdraw", help="take items or ticker lines off the screen at once (until a "
                                                   "manifest with a higher serial)")
    withdraw.add_argument("items", nargs="+", metavar="ITEM")
    logs = actions.add_parser("logs", help="print the agent's recent log lines")
    logs.add_argument("--lines", type=int, default=500, help="how many (default 500, at most 5000)")
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
        print(ngettext("{count} problem in {path}", "{count} problems in {path}", len(exc.problems)).format(
            count=len(exc.problems), path=path), file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before pygame is imported: with a handler in place pygame installs no SIGSEGV "parachute", which
    # can hang a crashing process (screen dark until the watchdog fires) instead of letting it die.
    faulthandler.enable()
    if args.command != "run":
        # What a person reads at a terminal follows the locale; the running agent's logs, status and
        # heartbeat `errors` stay English (agent/i18n.py says why).
        i18n.use(i18n.language())
    setup_logging(args.log_level or "INFO")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # before pygame's first import: keep logs clean
    if args.command == "check-config":
        config = load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG
        if config.enrolled:
            print(_("{path}: OK (device {device}, source {source})").format(
                path=args.config, device=config.device.id, source=config.source.url))
        else:
            print(_("{path}: OK, not enrolled yet (the board shows its enrolment screen)").format(path=args.config))
        for warning in config_warnings(config):
            print(_("warning: {warning}").format(warning=warning))
        return EXIT_OK
    if args.command == "run":
        config = load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG
        from agent.main import run

        return run(config, args.log_level)
    if args.command == "report":
        config = load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG
        return report(config, args)
    if args.command == "identity":
        config = load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG
        return print_identity(config, args.json)
    if args.command == "demo":
        from agent.demo import run_demo

        return run_demo(fullscreen=args.fullscreen, directory=args.dir)
    return ctl(args)


def print_identity(config: Config, as_json: bool) -> int:
    from agent.identity import IdentityError, load_or_create, machine_id

    try:
        identity = load_or_create(Path(config.storage.dir), machine_id())
    except (IdentityError, OSError) as exc:
        print(f"bangtin-agent identity: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if as_json:
        print(json.dumps({"fingerprint": identity.fingerprint, "public_key": identity.public_b64}))
    else:
        print(f"fingerprint  {identity.fingerprint}\npublic key   {identity.public_b64}")
    return EXIT_OK


def report(config: Config, args: argparse.Namespace) -> int:
    import datetime as dt

    from agent.outbox import RECORDS_FILE
    from agent.report import build_report, format_report

    if args.date_from and args.date_to and args.date_from > args.date_to:
        print(_("bangtin-agent report: --from {start} is after --to {end}").format(start=args.date_from,
                                                                                    end=args.date_to), file=sys.stderr)
        return EXIT_CONFIG
    figures = build_report(Path(config.storage.dir) / RECORDS_FILE, args.date_from, args.date_to,
                           board=config.device.id, now=dt.datetime.now(dt.UTC))
    text = format_report(figures, args.format, args.section)
    if args.out is None:
        print(text, end="" if text.endswith("\n") else "\n")
        return EXIT_OK
    try:
        args.out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        print(_("bangtin-agent report: cannot write {path}: {reason}").format(path=args.out,
                                                                              reason=exc.strerror or exc), file=sys.stderr)
        return EXIT_FAIL
    print(_("{path}: report for {board} from {start} to {end}").format(
        path=args.out, board=config.device.id, start=figures["period"]["from"] or "-", end=figures["period"]["to"] or "-"),
        file=sys.stderr)
    return EXIT_OK


def control_socket(path: Path) -> Path | None:
    """The control socket the config names. A config with problems still names it: the technician
    who just broke agent.yaml must still reach the board that runs on the last good one."""
    from agent.config import ConfigError, ControlConfig

    try:
        return Path(load_config(path).control.socket)
    except ConfigError as exc:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            print(exc, file=sys.stderr)  # no file to read: nothing names a socket
            return None
        try:
            raw = yaml.safe_load(text)
            socket = raw["control"]["socket"] if isinstance(raw, dict) and isinstance(raw.get("control"), dict) else None
        except yaml.YAMLError:
            socket = None
        if not isinstance(socket, str):
            socket = ControlConfig().socket
        print(_("warning: {path} has problems (see check-config); asking the agent on {socket}").format(
            path=path, socket=socket), file=sys.stderr)
        return Path(socket) if os.path.isabs(socket) else (path.parent / socket).resolve()


def ctl(args: argparse.Namespace) -> int:
    from agent.ctlsocket import ControlUnavailable, request

    socket = control_socket(args.config)
    if socket is None:
        return EXIT_CONFIG
    command, payload = {
        "status": ("status", {}),
        "screenshot": ("screenshot", {}),
        "sync": ("sync", {}),
        "alert": ("alert", {"title": getattr(args, "title", None), "body": getattr(args, "body", None),
                            **({"minutes": args.minutes} if getattr(args, "minutes", None) is not None else {})}),
        "clear-alert": ("clear_alert", {"alert": getattr(args, "id", None)} if getattr(args, "id", None) else {}),
        "screen": ("screen", {"mode": getattr(args, "mode", None)}),
        "withdraw": ("withdraw", {"items": getattr(args, "items", None)}),
        "logs": ("logs", {"lines": getattr(args, "lines", None)}),
    }[args.action]
    try:
        response = request(socket, command, payload)
    except ControlUnavailable as exc:
        print(f"bangtin-agent ctl: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not response.get("ok"):
        print(f"bangtin-agent ctl {args.action}: {response.get('error')}", file=sys.stderr)  # the agent's words
        return EXIT_FAIL
    result: dict[str, Any] = response.get("result") or {}
    if args.action == "screenshot":
        png = base64.b64decode(result["png_base64"])
        args.out.write_bytes(png)
        print(_("{path}: {count} bytes").format(path=args.out, count=len(png)))
    elif args.action == "status" and not args.json:
        print(format_status(result))
    elif args.action == "logs":
        for line in result.get("lines", []):
            print(line)
    elif args.action == "withdraw":
        print(_("withdrawn: {found}").format(found=", ".join(result.get("items", [])) or "-"))
        if result.get("not_found"):
            print(_("not in the current manifest (withdrawn all the same): {ids}").format(
                ids=", ".join(result["not_found"])))
    else:
        print(json.dumps(result, ensure_ascii=False, indent=None if args.action == "status" else 2))
    return EXIT_OK


def format_status(status: dict[str, Any]) -> str:
    """`ctl status` for a person on SSH (labels in the locale's language; values and errors as the agent says)."""
    display = status.get("display", {})
    cache = status.get("cache", {})
    identity = status.get("identity") or {}
    rows = [
        (_("device"), _("{device}   agent {version}   up {uptime} s").format(
            device=status.get("device") or _("(not enrolled)"), version=status.get("agent_version"),
            uptime=status.get("uptime_s"))),
        (_("board key"), identity.get("fingerprint") or identity.get("error") or "-"),
        (_("source"), f"{status.get('source') or '-'}"),
        (_("manifest"), _("serial {serial}, last sync {when}").format(
            serial=status.get("manifest_serial"), when=status.get("last_sync_ok_at") or _("never"))),
        (_("on screen"), (status.get("current_item") or _("(splash)"))
         + ("   " + _("[ALERT]") if status.get("alert_active") else "")),
        (_("screen"), _("{state} (mode {mode})").format(state=_("on") if status.get("screen_on") else _("off"),
                                                       mode=status.get("screen_mode"))),
        (_("media"), _("{missing} missing, {bytes} bytes verified").format(missing=cache.get("media_missing", 0),
                                                                         bytes=cache.get("bytes_used", 0))),
        (_("outbox"), ngettext("{count} record pending", "{count} records pending",
                               int(status.get("outbox_pending") or 0)).format(count=status.get("outbox_pending"))),
        (_("display"), _("{driver} {size} frames {frames}").format(driver=display.get("driver"),
                                                                   size=display.get("size"), frames=display.get("frames"))),
    ]
    sync = status.get("sync") or {}
    if sync.get("pending_manifest_serial"):
        rows.append((_("next manifest"), _("serial {serial} (fetching its media)").format(
            serial=sync["pending_manifest_serial"])))
    download = sync.get("download")
    if download:
        eta = _(", about {seconds} s left").format(seconds=download["eta_s"]) if download.get("eta_s") is not None else ""
        rows.append((_("downloading"), _("{media}: {done}/{total} bytes").format(
            media=download["media"], done=download["bytes_done"], total=download["bytes_total"]) + eta))
    held = sync.get("held") or []
    if held:
        names = ", ".join(entry["media"] for entry in held[:5]) + (", …" if len(held) > 5 else "")
        rows.append((_("waiting"), ngettext(
            "{count} large file ({size}) until {until}, the next downloads.windows: {names}",
            "{count} large files ({size}) until {until}, the next downloads.windows: {names}", len(held)).format(
                count=len(held), size=_size(sum(entry["bytes"] for entry in held)),
                until=min(entry["until"] for entry in held), names=names)))
    update = status.get("update") or {}
    if update.get("state") == "off":
        rows.append((_("update"), _("off ({reason})").format(reason=update.get("reason"))))
    elif update:
        detail = f": {update['error']}" if update.get("error") else ""
        if update.get("waiting_until"):
            detail += "  " + _("(waiting for downloads.windows until {until})").format(until=update["waiting_until"])
        rows.append((_("update"), _("release {serial} ({version}) {state}").format(
            serial=update.get("serial", "-"), version=update.get("version", "-"), state=update.get("state")) + detail))
    data = status.get("data") or {}
    if data.get("today"):
        rows.append((_("data"), _data_line(data)))
    errors = status.get("errors") or []
    rows.append((_("errors"), str(len(errors)) if errors else _("none")))
    width = max(16, *(len(label) + 2 for label, _value in rows))
    lines = [f"{label.ljust(width)}{value}" for label, value in rows]
    lines.extend(f"  - {error}" for error in errors)
    return "\n".join(lines)


def _data_line(data: dict[str, Any]) -> str:
    """The data meter in one line: today by kind, this month's total, and how it was counted."""
    today, month = data.get("today") or {}, data.get("month") or {}
    kinds = ", ".join(f"{kind} {_size(pair['sent'] + pair['received'])}"
                      for kind, pair in (today.get("by_kind") or {}).items())
    line = _("today {today}, this month {month}").format(
        today=_size(today.get("total", 0)) + (f" ({kinds})" if kinds else ""), month=_size(month.get("total", 0)))
    # Without the kernel's TCP_INFO the program counts what it passes to its sockets: TLS is missed.
    if "program" in str(data.get("counted_by")):
        line += "  " + _("[counted by the program: no TCP_INFO]")
    return line


def _size(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1_000_000:.2f} MB"

#!/usr/bin/env python3
"""bangtin-launch: starts the board's agent release and guards a new release's trial (PROTOCOL.md §11).

It lives outside every release (/opt/bangtin/launcher, installed by scripts/install.sh, root-owned)
and uses only the standard library of the system's Python, so a release that cannot run any code
of its own — it fails to import, crashes, never reaches READY, stops answering the watchdog, or
refuses the config — is still rolled back by the board itself.

    bangtin-launch run --config /etc/bangtin/agent.yaml [--state /var/lib/bangtin] [--base /opt/bangtin/releases/0]
    bangtin-launch agent ARGS…      (the technician's `bangtin-agent`: the current release's command line)

The agent runs as the launcher's child; the launcher is the unit's main process and relays the
child's sd_notify messages (READY, WATCHDOG, STATUS) to systemd, which is how it sees them too.

Files in <state>/update (the agent writes trial.json when it switches; the launcher settles it):
  current -> releases/<serial>   the release to run (absent: the base install, release 0)
  trial.json                     {"serial", "version", "path", "previous", "health_s", "runs", "clean", "boot"}
  launcher.json                  {"failed": {"<serial>": reason}, "last": {...}, "installed": {...}}

A trial passes when the release has reached READY, reported content on screen (BANGTIN_SHOWING=1),
and kept answering the watchdog for `health_s`. Anything else ends it failed: the launcher points
`current` back at the previous release, records the serial as failed (the agent never retries it),
and starts the previous release. A power cut during a trial is not the release's fault (the boot id
changed): the trial runs again, three times at most.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EXIT_RESTART = 75  # the agent asks to be started again (a new release is in place)
READY_TIMEOUT_S = 90.0  # below systemd's TimeoutStartSec (120), so the launcher judges first
# A release on trial must be back on the previous one within health_s + 60 s (issue #13) whatever
# way it fails: one that never reaches READY is judged early enough to leave the previous release
# this long for its own start-up to content (measured ~10 s under QEMU/TCG; a Pi is faster).
ROLLBACK_START_S = 30.0
# The agent says READY right after its first frame (the splash), so until then a release on trial
# leaves the screen dark: the previous release has exited and held the KMS device. Thirty seconds
# is five times a release's first frame under QEMU/TCG (5.9 s from the switch, docs/systemtest.md);
# one that needs longer is judged as broken rather than leave a public screen dark for longer.
TRIAL_READY_S = 30.0
SHOWING_GRACE_S = 60.0
POWER_CUT_RETRIES = 3
STOP_GRACE_S = 20.0
MAX_RESTARTS_WITHOUT_TRIAL = 3


def log(message: str) -> None:
    """One line to the journal (stderr under systemd), with a priority journald understands."""
    print(f"<5>bangtin-launch: {message}", file=sys.stderr, flush=True)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def point(link: Path, target: Path | None) -> None:
    """Atomically re-point `link` at `target` (None: remove it, back to the base install)."""
    if target is None:
        link.unlink(missing_ok=True)
        return
    temporary = link.with_name(f".{link.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)


class Launcher:
    def __init__(self, config: str, state: Path, base: Path, python: str, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.config = config
        self.ready_timeout_s = ready_timeout_s
        self.update = state / "update"
        self.base = base
        self.python = python
        self.upstream = os.environ.get("NOTIFY_SOCKET", "")
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        watchdog_pid = os.environ.get("WATCHDOG_PID", "")
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_s = int(watchdog_usec) / 1e6 if watchdog_usec.isdigit() and mine else None
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None

    # --- files -------------------------------------------------------------------------------

    @property
    def trial_path(self) -> Path:
        return self.update / "trial.json"

    def current(self) -> Path:
        link = self.update / "current"
        try:
            target = link.resolve(strict=True)
        except OSError:
            return self.base
        return target if (target / "bin" / "python").exists() else self.base

    def settle(self, trial: dict[str, Any], state: str, error: str | None) -> None:
        record = read_json(self.update / "launcher.json")
        last = {"serial": trial.get("serial"), "version": trial.get("version"), "state": state, "error": error,
                "at": time.time()}
        record["last"] = last
        if state == "failed":
            record.setdefault("failed", {})[str(trial.get("serial"))] = error
            previous = trial.get("previous")
            point(self.update / "current", Path(previous) if previous else None)
            log(f"release {trial.get('serial')} ({trial.get('version')}) rolled back: {error}")
        else:
            record["installed"] = {"serial": trial.get("serial"), "version": trial.get("version")}
            log(f"release {trial.get('serial')} ({trial.get('version')}) kept after its trial")
        write_json(self.update / "launcher.json", record)
        self.trial_path.unlink(missing_ok=True)

    def pending_trial(self) -> dict[str, Any] | None:
        """The trial to run now, settling one that ended badly before this start."""
        trial = read_json(self.trial_path)
        if not trial:
            return None
        if trial.get("runs", 0) >= 1 and not trial.get("clean"):
            if trial.get("boot") == boot_id():
                self.settle(trial, "failed", trial.get("why") or
                            "the trial run ended without being confirmed (a crash, a kill or a hang)")
                return None
            if trial.get("runs", 0) >= POWER_CUT_RETRIES:
                self.settle(trial, "failed", f"{POWER_CUT_RETRIES} trial runs were cut short by power cuts")
                return None
            log(f"release {trial.get('serial')}: the last trial run ended with the machine; trying again")
        return trial

    # --- running the child -----------------------------------------------------------------------

    def spawn(self, release: Path, proxy: str, trial: dict[str, Any] | None) -> subprocess.Popen[bytes]:
        env = dict(os.environ, NOTIFY_SOCKET=proxy, BANGTIN_UPDATE_DIR=str(self.update), BANGTIN_PYTHON=self.python,
                   BANGTIN_RELEASE_DIR=str(release))
        env.pop("WATCHDOG_PID", None)  # the child pings; the launcher relays
        if self.watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(self.watchdog_s * 1e6))
        if trial is not None:
            trial.update(runs=trial.get("runs", 0) + 1, clean=False, boot=boot_id(), why=None)
            write_json(self.trial_path, trial)
            log(f"starting release {trial.get('serial')} ({trial.get('version')}) on trial")
        command = [str(release / "bin" / "python"), "-P", "-m", "agent", "run", "--config", self.config]
        return subprocess.Popen(command, env=env)

    def relay(self, sock: socket.socket, watch: dict[str, float]) -> None:
        while True:
            try:
                message = sock.recv(4096)
            except BlockingIOError:
                return
            now = time.monotonic()
            for line in message.decode("utf-8", "replace").splitlines():
                if line == "READY=1":
                    watch.setdefault("ready", now)
                elif line == "WATCHDOG=1":
                    watch["ping"] = now
                elif line == "BANGTIN_SHOWING=1":
                    watch.setdefault("showing", now)
            self.notify(message)

    def notify(self, message: bytes) -> None:
        """One message to systemd's notify socket (nothing when not under systemd)."""
        if not self.upstream:
            return
        address = "\0" + self.upstream[1:] if self.upstream.startswith("@") else self.upstream
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
                # Never wait on systemd: a full queue drops this message (the next ping comes soon).
                out.sendto(message, socket.MSG_DONTWAIT, address)
        except OSError:
            pass

    def ready_deadline(self, trial: dict[str, Any] | None) -> float:
        """Seconds a child has to reach READY: the launcher's timeout; for a release on trial at most
        TRIAL_READY_S (the screen is dark meanwhile), and short enough that its rollback still lands
        within health_s + 60 s."""
        if trial is None:
            return self.ready_timeout_s
        health_s = float(trial.get("health_s", 120))
        return max(1.0, min(self.ready_timeout_s, TRIAL_READY_S, health_s + 60 - ROLLBACK_START_S))

    def feed_watchdog(self, watch: dict[str, float], started: float, deadline_s: float) -> None:
        """Answer systemd's watchdog for a child still starting. The unit has been READY since the
        first child was, so systemd's watchdog runs on through every later start (a release's trial,
        a rollback): a child starts slower than WatchdogSec allows, or hangs, and systemd would kill the
        whole unit before the launcher judged it. Until the child's READY, and at most `deadline_s`,
        the launcher pings for it; after READY the child's own pings are relayed."""
        if self.watchdog_s is None or "ready" in watch:
            return
        now = time.monotonic()
        if now - started <= deadline_s and now - watch.get("fed", 0.0) >= self.watchdog_s / 4:
            watch["fed"] = now
            self.notify(b"WATCHDOG=1")

    def verdict(self, trial: dict[str, Any], watch: dict[str, float], started: float) -> tuple[str, str] | None:
        """("done"|"failed", reason) once the trial is decided."""
        now, health_s = time.monotonic(), float(trial.get("health_s", 120))
        ready, showing, ping = watch.get("ready"), watch.get("showing"), watch.get("ping", started)
        if ready is None:
            deadline_s = self.ready_deadline(trial)
            return ("failed", f"did not reach READY within {deadline_s:.0f} s") if now - started > deadline_s else None
        if self.watchdog_s is not None and now - max(ping, ready) > self.watchdog_s:
            return "failed", f"stopped answering the watchdog ({self.watchdog_s:.0f} s)"
        if showing is None:
            return ("failed", f"did not show content within {health_s + SHOWING_GRACE_S:.0f} s") \
                if now - started > health_s + SHOWING_GRACE_S else None
        return ("done", "") if now - showing >= health_s else None

    def stop_child(self) -> int:
        child = self.child
        if child is None:
            return 0
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            # Answer systemd's watchdog while the child takes its grace: a trial judged failed near
            # the end of its READY deadline would otherwise leave the unit unfed for up to 20 s more.
            ends = time.monotonic() + STOP_GRACE_S
            while child.poll() is None and time.monotonic() < ends:
                if self.watchdog_s is not None:
                    self.notify(b"WATCHDOG=1")
                try:
                    child.wait(min(1.0, max(0.0, ends - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
            if child.poll() is None:
                child.kill()
                child.wait()
        return child.returncode

    def run(self) -> int:
        self.update.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        proxy = f"@bangtin-launch-{os.getpid()}"
        sock.bind("\0" + proxy[1:])
        sock.setblocking(False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop())
        restarts_without_trial = 0
        while True:
            trial = self.pending_trial()
            release = Path(trial["path"]) if trial else self.current()
            self.child = self.spawn(release, proxy, trial)
            code, outcome, trial = self.supervise(sock, trial)
            if outcome == "failed":
                continue  # rolled back: the previous release starts
            if trial is not None:  # still on trial
                if outcome == "stopped":
                    trial["clean"] = True  # a stop is not a failure: the trial resumes at the next start
                    write_json(self.trial_path, trial)
                    return exit_status(code, stopped=True)
                if code not in (0, EXIT_RESTART):
                    self.settle(trial, "failed", trial.get("why") or f"exited with code {code} during its trial")
                continue  # a restart of the release on trial (or the rollback's previous release)
            if outcome == "stopped" or code != EXIT_RESTART:
                return exit_status(code, stopped=outcome == "stopped")
            restarts_without_trial = 0 if read_json(self.trial_path) else restarts_without_trial + 1
            if restarts_without_trial >= MAX_RESTARTS_WITHOUT_TRIAL:
                # A release that asks to be started again with no new release in place, again and again,
                # would loop here (dark, and unseen by systemd): let systemd's pacing and journal have it.
                log(f"the agent asked {restarts_without_trial} times in a row to be started again with no new "
                    "release in place: giving it to systemd")
                return 1
            # EXIT_RESTART: a new release is in place; start again.

    def supervise(self, sock: socket.socket, trial: dict[str, Any] | None) -> tuple[int, str, dict[str, Any] | None]:
        """Until the child ends ("exited"), we are stopped ("stopped") or its trial fails ("failed").
        Returns its exit code, how it ended, and the trial still running (None once settled)."""
        assert self.child is not None
        watch: dict[str, float] = {}
        started = time.monotonic()
        while True:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                self.relay(sock, watch)
            self.feed_watchdog(watch, started, self.ready_deadline(trial))
            code = self.child.poll()
            if code is not None:
                self.relay(sock, watch)
                return code, "exited", trial
            if self.stopping:
                return self.stop_child(), "stopped", trial
            decided = self.verdict(trial, watch, started) if trial is not None else None
            if decided is None:
                continue
            state, reason = decided
            assert trial is not None
            if state == "failed":
                trial["why"] = reason
                code = self.stop_child()
                self.settle(trial, "failed", reason)
                return code, "failed", None
            self.settle(trial, "done", None)
            trial = None  # kept: it runs on, no longer on trial

    def _stop(self) -> None:
        self.stopping = True


def exit_status(code: int, *, stopped: bool) -> int:
    """The child's exit as the launcher's: a child ended by the stop we passed on stopped cleanly."""
    if code < 0:
        return 0 if stopped and -code in (signal.SIGTERM, signal.SIGINT) else 128 - code
    return code


def exec_agent(state: Path, base: Path, arguments: list[str]) -> int:
    """The technician's `bangtin-agent`: whatever release runs now."""
    link = state / "update" / "current"
    try:
        release = link.resolve(strict=True)
    except OSError:
        release = base
    if not (release / "bin" / "python").exists():
        release = base
    # `python -m agent`, not the venv's `bin/bangtin-agent`: a venv is built under a temporary name
    # and renamed into place, and its console scripts' #! lines still name the temporary path.
    program = release / "bin" / "python"
    os.execv(str(program), [str(program), "-P", "-m", "agent", *arguments])
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bangtin-launch", description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=Path("/var/lib/bangtin"))
    parser.add_argument("--base", type=Path, default=Path("/opt/bangtin/releases/0"))
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("--config", required=True)
    run.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S,
                     help="seconds a release on trial has to reach READY (keep it below TimeoutStartSec)")
    agent = commands.add_parser("agent")
    agent.add_argument("arguments", nargs=argparse.REMAINDER)
    arguments = sys.argv[1:] if argv is None else argv
    if "agent" in arguments:
        # Everything after `agent` is the agent's, options too (`bangtin-agent --version`), which
        # argparse's REMAINDER would take for the launcher's own.
        split = arguments.index("agent")
        args = parser.parse_args([*arguments[:split], "agent"])
        return exec_agent(args.state, args.base, arguments[split + 1:])
    args = parser.parse_args(arguments)
    return Launcher(args.config, args.state, args.base, sys.executable, args.ready_timeout).run()


if __name__ == "__main__":
    sys.exit(main())

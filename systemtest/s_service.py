"""The service manager for real: live config, restart in place (#16.2), the watchdog, a crash loop,
a clean stop. Each part starts and ends with content on the device's screen."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from systemtest.board import CONFIG, STORAGE, UNIT, Board, agent_config
from systemtest.results import Results
from systemtest.util import step, wait_for

# Samples the unit from inside the guest every 0.1 s (host round trips are slower and coarser)
# and prints each change with the guest's monotonic time: the record of what systemd saw.
UNIT_WATCH = r"""
import subprocess, sys, time, json
deadline = time.monotonic() + float(sys.argv[1])
until_status = sys.argv[2]
last = None
seen_after = False
while time.monotonic() < deadline:
    out = subprocess.run(["systemctl", "show", "bangtin-agent", "-p", "ActiveState", "-p", "SubState",
                          "-p", "MainPID", "-p", "StatusText", "-p", "NRestarts"], capture_output=True, text=True).stdout
    state = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    key = json.dumps(state, sort_keys=True)
    if key != last:
        print(json.dumps({"t": time.monotonic(), **state}), flush=True)
        last = key
    if until_status and state.get("StatusText", "").startswith(until_status):
        seen_after = True
    elif seen_after and state.get("StatusText", "").startswith("serial"):
        break
    time.sleep(0.1)
"""


def _write_config(board: Board, text: str) -> None:
    """As nano saves: the same file rewritten in place (owner and mode kept)."""
    board.v.write("/tmp/agent.yaml.new", text.encode())
    board.v.sh(f"cat /tmp/agent.yaml.new > {CONFIG} && rm /tmp/agent.yaml.new")


def _journal_since(board: Board, cursor: str) -> list[dict[str, Any]]:
    out = board.v.sh(f"journalctl --no-pager -o json --after-cursor='{cursor}' -u {UNIT}", timeout=60)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _cursor(board: Board) -> str:
    out = board.v.sh("journalctl --no-pager -n 1 -o json", timeout=30)
    return str(json.loads(out.splitlines()[-1])["__CURSOR"])


def _messages(entries: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(int(e.get("PRIORITY", 6)), str(e.get("MESSAGE", ""))) for e in entries]


def _wait_journal(board: Board, cursor: str, text: str, timeout: float) -> tuple[int, str]:
    def found() -> tuple[int, str] | None:
        return next(((p, m) for p, m in _messages(_journal_since(board, cursor)) if text in m), None)

    return wait_for(found, timeout, f"journal line {text!r}", interval=0.5)


def _unit_seconds(board: Board, prop: str) -> float:
    """WatchdogUSec / RestartUSec as seconds (systemctl prints '30s', '5s', '1min 30s')."""
    value = board.unit(prop)[prop]
    total = 0.0
    for part in value.split():
        for suffix, factor in (("min", 60.0), ("ms", 0.001), ("us", 1e-6), ("s", 1.0)):
            if part.endswith(suffix):
                total += float(part[: -len(suffix)]) * factor
                break
    return total


def live_config(board: Board, results: Results) -> None:
    """A hot key applies at once (same process); a broken edit is refused and logged as an error."""
    before = board.unit()
    cursor = _cursor(board)
    with step("live config: a hot key applies without a restart"):
        started = time.monotonic()
        _write_config(board, agent_config(board.source).replace('"heartbeat_interval_s": 30', '"heartbeat_interval_s": 45'))
        priority, _ = _wait_journal(board, cursor, "config applied without a restart", 60)
        applied_s = time.monotonic() - started
        after = board.unit()
        assert after["MainPID"] == before["MainPID"], f"the agent restarted for a hot key: {before} -> {after}"
        assert after["ActiveState"] == "active", after
        assert priority == 6, f"'config applied' logged at priority {priority}"
    with step("live config: a broken edit is refused, the running config kept"):
        cursor = _cursor(board)
        _write_config(board, agent_config(board.source).replace('"heartbeat_interval_s": 30', '"heartbeat_interval_s": "often"'))
        priority, message = _wait_journal(board, cursor, "config edit refused", 60)
        assert priority == 3, f"a refused edit logged at priority {priority}, expected 3 (error): {message}"
        errors = board.status()["errors"]
        assert any("config edit refused" in e for e in errors), f"ctl status errors do not say why: {errors}"
        assert board.unit()["MainPID"] == before["MainPID"], "the agent restarted for a broken edit"
        _write_config(board, agent_config(board.source))  # back to what the board started with
        _wait_journal(board, cursor, "config applied without a restart", 60)
    results.put("live-config", hot_edit_applied_s=round(applied_s, 1), refused_edit_priority=priority)


def restart_in_place(board: Board, results: Results) -> None:
    """#16.2: a cold key re-executes the agent in place; systemd must see it active throughout."""
    before = board.unit()
    cursor = _cursor(board)
    samples: list[dict[str, Any]] = []
    watch_error: list[BaseException] = []

    def watch() -> None:
        try:
            out = board.v.run("python3 /tmp/unitwatch.py 120 'splash on screen'", timeout=150).out
            samples.extend(json.loads(line) for line in out.splitlines() if line.startswith("{"))
        except Exception as exc:  # noqa: BLE001 — surfaced below
            watch_error.append(exc)

    with step("restart in place: a cold key (storage.cache_max_mb) re-executes the agent"):
        board.v.write("/tmp/unitwatch.py", UNIT_WATCH.encode())
        watcher = threading.Thread(target=watch, name="unit-watch")
        watcher.start()
        wait_for(lambda: board.v.run("pgrep -f unitwatch.py >/dev/null").rc == 0, 30, "the unit watcher to start")
        started = time.monotonic()
        config = json.loads(agent_config(board.source))
        config["storage"] = {"cache_max_mb": 1024}
        _write_config(board, json.dumps(config, ensure_ascii=False, indent=2) + "\n")
        watcher.join(160)
        if watch_error:
            raise watch_error[0]
        shown, _ = board.wait_content(120)
        restart_s = shown - started
    with step("restart in place: the unit stayed active, same PID, READY again"):
        states = {s.get("ActiveState") for s in samples}
        pids = {s.get("MainPID") for s in samples}
        statuses = [s.get("StatusText", "") for s in samples]
        (board.workdir / "restart-in-place.json").write_text(json.dumps(samples, indent=1))
        assert samples, "the unit watcher saw nothing"
        assert states == {"active"}, f"ActiveState left 'active' during the restart: {_changes(samples)}"
        assert pids == {before["MainPID"]}, f"MainPID changed ({before['MainPID']} -> {pids}): not in place"
        assert any(s.startswith("splash on screen") for s in statuses), \
            f"no READY=1 after the re-exec (StatusText never went back to the splash): {statuses}"
        after = board.unit()
        assert after["NRestarts"] == before["NRestarts"], f"systemd restarted the unit: {before} -> {after}"
        messages = [m for _, m in _messages(_journal_since(board, cursor))]
        bad = [m for m in messages if "timeout" in m.lower() or "timed out" in m.lower() or "Failed with result" in m]
        assert not bad, f"systemd saw a failure during the restart in place: {bad}"
        assert any("needs a fresh start" in m for m in messages), "no 'needs a fresh start' line in the journal"
    results.put("restart-in-place", edit_to_content_s=round(restart_s, 1), unit_states_seen=sorted(states),
                main_pid_kept=True, samples=len(samples))


def _changes(samples: list[dict[str, Any]]) -> str:
    return "; ".join(f"{s.get('ActiveState')}/{s.get('SubState')} pid {s.get('MainPID')}" for s in samples)


def watchdog(board: Board, results: Results) -> None:
    """SIGSTOP the agent: systemd's watchdog restarts it and the screen comes back."""
    watchdog_s = _unit_seconds(board, "WatchdogUSec")
    restart_sec = _unit_seconds(board, "RestartUSec")
    assert watchdog_s > 0, "the unit has no WatchdogSec"
    before = board.unit()
    cursor = _cursor(board)
    with step("watchdog: SIGSTOP the agent"):
        started = time.monotonic()
        board.v.sh(f"kill -STOP {before['MainPID']}")
    with step("watchdog: systemd restarts it"):
        def restarted() -> dict[str, str] | None:
            state = board.unit()
            fresh = state["MainPID"] not in ("0", before["MainPID"]) and state["ActiveState"] == "active"
            return state if fresh and state.get("StatusText") else None

        wait_for(restarted, watchdog_s + restart_sec + 60, "a new agent process after the watchdog fired", interval=0.5)
        restart_s = time.monotonic() - started
        messages = [m for _, m in _messages(_journal_since(board, cursor))]
        assert any("Watchdog timeout" in m for m in messages), f"no 'Watchdog timeout' from systemd: {messages[-10:]}"
        limit = watchdog_s + restart_sec + 10
        assert restart_s <= limit, f"restart took {restart_s:.0f} s, more than WatchdogSec + RestartSec + 10 = {limit:.0f}"
    with step("watchdog: content back on the screen"):
        shown, _ = board.wait_content(120)
    results.put("watchdog", watchdog_sec=watchdog_s, restart_sec=restart_sec, sigstop_to_new_process_s=round(restart_s, 1),
                sigstop_to_content_s=round(shown - started, 1))


def crash_loop(board: Board, results: Results) -> None:
    """Crash the agent as soon as each new process is READY: each time the device is dark at most the
    restart pacing (RestartSec) plus the agent's own start-up to READY (+3 s for the screen to be read);
    no start limit ever leaves the board dark for good."""
    crashes = board.crashes
    restart_sec = _unit_seconds(board, "RestartUSec")
    start = board.unit()
    gaps: list[float] = []
    startups: list[float] = []
    pid = start["MainPID"]
    cursor = _cursor(board)
    with step(f"crash loop: {crashes} crashes in a row (SIGSEGV)"):
        for _ in range(crashes):
            board.v.sh(f"kill -SEGV {pid}")
            killed = time.monotonic()

            def new_ready(old: str = pid) -> dict[str, str] | None:
                state = board.unit("MainPID", "ActiveState", "SubState", "ExecMainStartTimestampMonotonic",
                                   "ActiveEnterTimestampMonotonic")
                fresh = state["MainPID"] not in ("0", old) and state["ActiveState"] == "active"
                return state if fresh else None

            state = wait_for(new_ready, restart_sec + 120, "the agent READY again after a crash", interval=0.3)
            pid = state["MainPID"]
            startups.append((int(state["ActiveEnterTimestampMonotonic"]) - int(state["ExecMainStartTimestampMonotonic"])) / 1e6)
            # Dark from the crash until the device shows the board's own frame (splash or content) again.
            lit = wait_for(lambda: time.monotonic() if not board.screen().dark() else None, 120,
                           "a lit screen after the crash", interval=0.2)
            gaps.append(lit - killed)
    with step("crash loop: the board is playing again"):
        board.wait_content(120)
        state = board.unit()
        assert state["ActiveState"] == "active", state
        restarts = int(state["NRestarts"]) - int(start["NRestarts"])
        assert restarts == crashes, f"{restarts} restarts for {crashes} crashes"
    messages = [m for _, m in _messages(_journal_since(board, cursor))]
    # A crash that hangs instead of dying (pygame's SIGSEGV parachute) is ended by the watchdog only.
    hung = sum(1 for m in messages if "Failed with result 'watchdog'" in m)
    results.put("crash-loop", crashes_that_hung_until_the_watchdog=hung)
    with step("crash loop: dark no longer than the restart pacing plus start-up"):
        over = [(round(g, 1), round(restart_sec + s + 3.0, 1)) for g, s in zip(gaps, startups, strict=True)
                if g > restart_sec + s + 3.0]
        assert not over, f"dark longer than RestartSec + start-up to READY + 3 s: (dark, budget) {over}"
    results.put("crash-loop", crashes=crashes, restart_sec=restart_sec, worst_dark_s=round(max(gaps), 1),
                dark_s=[round(g, 1) for g in gaps], agent_start_to_ready_s=[round(s, 1) for s in startups])


def clean_stop(board: Board, results: Results) -> None:
    """`systemctl stop` ends the showing with a `shutdown` record; the next start uploads it."""
    cursor = _cursor(board)
    with step("stop: systemctl stop"):
        started = time.monotonic()
        board.v.sh(f"systemctl stop {UNIT}", timeout=120, what="systemctl stop")
        stop_s = time.monotonic() - started
        state = board.unit()
        assert state["ActiveState"] == "inactive" and state["Result"] == "success", f"not a clean stop: {state}"
        messages = [m for _, m in _messages(_journal_since(board, cursor))]
        assert any("stopped cleanly" in m for m in messages), f"no 'stopped cleanly' in the journal: {messages[-10:]}"
    with step("stop: the last record is a shutdown"):
        last = json.loads(board.v.sh(
            "python3 -c \"import sqlite3; db = sqlite3.connect('file:" + STORAGE + "/outbox.sqlite?mode=ro', uri=True); "
            # The last showing: the journal's events (agent_stop after it, docs/reporting.md) are not showings.
            "print(db.execute(\\\"SELECT body FROM records WHERE json_extract(body, '$.type') != 'event' "
            "ORDER BY seq DESC LIMIT 1\\\").fetchone()[0])\""))
        assert last.get("reason") == "shutdown" and last.get("completed") is False, f"last record: {last}"
    with step("stop: start again; the shutdown record reaches the source"):
        board.v.sh(f"systemctl start {UNIT}", timeout=180, what="systemctl start")
        board.wait_content(120)
        wait_for(lambda: last["id"] in board.source.records(), 120, "the shutdown record at the source", interval=0.5)
    results.put("stop", stop_s=round(stop_s, 1), shutdown_record=last["id"], reason=last["reason"])

"""Self-update against real systemd (issue #13, PROTOCOL.md §11): the province cuts releases on its
own machine and names them in the board's manifest; the board fetches what it lacks, installs the
release beside the running one, runs it on trial under the launcher and keeps it — or, for a broken
release, comes back to the previous one by itself and says why.

The releases are the project's own wheel with a bumped `agent.__version__` (a deliberately broken one
for the failures) plus the pinned dependencies for every platform the province runs (here x86_64 and
aarch64, CPython 3.11), downloaded on the host as docs/updates.md tells a province to. Judged from
outside: the launcher's and the agent's journal lines, `systemctl show`, `ctl status` and the
heartbeat at the source, the bytes the source served, the device's own pixels, and the proof-of-play
records at the source against every showing the screen showed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from systemtest import image as images
from systemtest.board import ROOT, STORAGE, Board, agent_config, checkout_files
from systemtest.content import manifest as make_manifest
from systemtest.results import Results
from systemtest.s_power import ScreenWatch, _match
from systemtest.s_service import _cursor, _journal_since, _write_config
from systemtest.source import BASE_PATH
from systemtest.util import StepFailed, log, step, wait_for

HEALTH_S = 30  # update.health_s: the config's minimum, so a trial is short
BOUND_S = HEALTH_S + 60  # issue #13: back on the good release by itself within health_s + 60 s
# The longest the device may show no content while the agent restarts into another release: the old
# process's clean stop plus the new one's start-up to its first content frame under TCG (measured
# 8-12 s; a crash-loop restart is ~10 s with RestartSec=5 on top). A board left dark fails.
SWITCH_DARK_BUDGET_S = 30.0
RELEASE_PLATFORMS = ("amd64", "arm64")  # the wheels a province ships: every platform it runs

# A broken release: (what it does, where, the text appended there). Each fails in a way the
# launcher must judge without running any code of the release.
BROKEN: dict[str, tuple[str, str, str]] = {
    "import": ("crashes at start: a dependency the release forgot", "agent/main.py",
               "\nimport bangtin_systemtest_missing_dependency  # noqa: E402,F401 — systemtest: the broken release\n"),
    "hang": ("never reaches READY: hangs at start (waits on something that never comes)", "agent/main.py",
             "\nimport threading as _systemtest_threading  # noqa: E402 — systemtest: the broken release\n"
             "_systemtest_threading.Event().wait()\n"),
}


@dataclass
class Built:
    serial: int
    version: str
    document: Path  # the signed release document in the site
    agent_wheel: str  # file name
    wheels: dict[str, int]  # every wheel of the release: name -> size


def _version(serial: int) -> str:
    base = re.search(r'__version__ = "([^"]+)"', (ROOT / "agent" / "__init__.py").read_text())
    assert base is not None, "agent/__init__.py has no __version__"
    return f"{base.group(1)}+systemtest.{serial}"


def build_agent_wheel(workdir: Path, version: str, broken: str | None) -> Path:
    """The project's own wheel as a province builds it (`pip wheel --no-deps .`), from a copy of the
    checkout with `agent.__version__` set to `version` and, for a broken release, its defect."""
    tree = workdir / "release-src" / version
    shutil.rmtree(tree, ignore_errors=True)
    for name in checkout_files():
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    init = tree / "agent" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    if broken is not None:
        _, module, text = BROKEN[broken]
        with open(tree / module, "a") as handle:
            handle.write(text)
    out = workdir / "release-wheels" / version
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(tree)],
                          capture_output=True, text=True, check=False)
    wheels = list(out.glob("bangtin_agent-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise StepFailed("update: build the releases", f"pip wheel of {version}: {done.stderr.strip()[-1500:]}")
    return wheels[0]


def build_releases(board: Board, plan: list[tuple[int, str | None]]) -> dict[int, Built]:
    """Every release of `plan` ((serial, breakage)): its wheel, the shared dependencies, signed into the site."""
    deps = board.workdir / "release-deps"
    if not deps.is_dir():
        for arch in RELEASE_PLATFORMS:
            images.download_wheels(arch, deps, sys.executable, images.install_requires())
    built: dict[int, Built] = {}
    for serial, broken in plan:
        version = _version(serial)
        wheel = build_agent_wheel(board.workdir, version, broken)
        folder = board.workdir / "release" / str(serial)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for dep in deps.glob("*.whl"):
            (folder / dep.name).symlink_to(dep)
        (folder / wheel.name).symlink_to(wheel)
        document = board.source.release(folder, version, serial=serial)
        wheels = {w.name: w.stat().st_size for w in folder.glob("*.whl")}
        built[serial] = Built(serial, version, document, wheel.name, wheels)
    return built


# --- the journal, on the host's time line ------------------------------------------------------------


def _entries(board: Board, cursor: str) -> list[dict[str, Any]]:
    return [e for e in _journal_since(board, cursor) if "MESSAGE" in e]


def _wait_line(board: Board, cursor: str, text: str, timeout: float, what: str) -> dict[str, Any]:
    """The first journal entry of the unit since `cursor` whose message holds `text`."""
    def found() -> dict[str, Any] | None:
        return next((e for e in _entries(board, cursor) if text in str(e["MESSAGE"])), None)

    try:
        return wait_for(found, timeout, what, interval=0.5)
    except TimeoutError as exc:
        tail = "\n".join(str(e["MESSAGE"]) for e in _entries(board, cursor)[-15:])
        raise TimeoutError(f"{exc}; the unit's journal since:\n{tail}") from None


def _at(entry: dict[str, Any], offset: float) -> float:
    """A journal entry's time as host monotonic seconds."""
    return int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6 + offset


def _count(board: Board, cursor: str, text: str) -> int:
    return sum(1 for e in _entries(board, cursor) if text in str(e["MESSAGE"]))


# --- the screen ---------------------------------------------------------------------------------------


def _content_back(watch: ScreenWatch, after: float, timeout: float) -> float:
    """The first sample after `after` (host monotonic) that shows an item."""
    def back() -> float | None:
        return next((t for t, kind in list(watch.timeline) if t > after and kind in watch.board.look.items), None)

    return wait_for(back, timeout, "content back on the device's screen", interval=0.25)


def _without_content(watch: ScreenWatch, start: float, end: float) -> tuple[float, list[str]]:
    """The longest run of samples in [start, end] with no item on screen, and what it showed."""
    longest, kinds_seen = 0.0, []
    run_start: float | None = None
    kinds: list[str] = []
    for t, kind in list(watch.timeline):
        if t < start or t > end:
            continue
        if kind in watch.board.look.items:
            if run_start is not None and t - run_start > longest:
                longest, kinds_seen = t - run_start, sorted(set(kinds))
            run_start, kinds = None, []
        elif run_start is None:
            run_start, kinds = t, [kind]
        else:
            kinds.append(kind)
    if run_start is not None and end - run_start > longest:
        longest, kinds_seen = end - run_start, sorted(set(kinds))
    return longest, kinds_seen


# --- the part -------------------------------------------------------------------------------------------


def update(board: Board, results: Results) -> None:
    name = "update"
    source = board.source
    with step("update: the board takes releases signed by the release key, trial of health_s"):
        _write_config(board, agent_config(source, {"security": {"release_keys": [source.release_key["public_key_b64"]]},
                                                   "update": {"health_s": HEALTH_S}}))
        wait_for(lambda: board.status().get("update", {}).get("state") not in (None, "off"), 120,
                 "ctl status to show self-update on", interval=1)
        board.wait_content(120)
        status = board.status()
        base_version = status["agent_version"]
        unit = board.unit()
    with step("update: build releases 2 (good), 3 and 4 (broken) on the host"):
        started = time.monotonic()
        built = build_releases(board, [(2, None), (3, "import"), (4, "hang")])
        results.put(name, release_0=base_version, releases={s: b.version for s, b in built.items()},
                    host_build_s=round(time.monotonic() - started, 1))
    offset = board.v.mono_offset()
    clock = {board.boots: board.v.clock_offset()}
    received_before = set(source.records())
    watch = ScreenWatch(board, board.boots).start()
    try:
        wait_for(watch.started, 30, "the screen watcher")
        _publish_good(board, results, built[2], unit, offset, watch)
        for serial, mode in ((3, "import"), (4, "hang")):
            _publish_broken(board, results, built[serial], built[2], mode, offset, watch)
            if serial == 3:
                _never_retried(board, results, built[3], built[2])
                unit = board.unit()  # a new launcher since the restart; its PID holds from here
    finally:
        watch.stop()
    with step("update: every showing the screen showed has its record at the source"):
        wait_for(lambda: board.status()["outbox_pending"] == 0, 180, "the outbox to empty", interval=2)
        records = [r for rid, r in source.records().items() if rid not in received_before]
        ended = [s for s in watch.showings if s.started_mono is not None]
        lost = _match(ended, records, clock)
        (board.workdir / "update.json").write_text(json.dumps(
            {"showings": [s.__dict__ for s in watch.showings], "records": records, "timeline": watch.timeline[-4000:]},
            indent=1, default=str))
        results.put(name, showings_seen=len(ended), records_received=len(records), records_lost=len(lost))
        if lost:
            raise AssertionError(f"{len(lost)} of {len(ended)} showings have no record at the source: "
                                 + ", ".join(f"{s.item} ended {time.strftime('%H:%M:%S', time.localtime(s.ended_wall))}"
                                             for s in lost[:10]))


def _publish_good(board: Board, results: Results, release: Built, unit: dict[str, str], offset: float,
                  watch: ScreenWatch) -> None:
    source = board.source
    cursor = _cursor(board)
    held = set(board.v.sh(f"ls {STORAGE}/update/wheels").split())  # the board's wheel store, by SHA-256
    with step(f"update: publish release {release.serial} ({release.version})"):
        published = time.monotonic()
        source.publish(make_manifest(board.files), board.files, release=release.document)
    with step(f"update: release {release.serial} downloaded, installed and started on trial"):
        installing = _wait_line(board, cursor, f"installing release {release.serial}", 300, "the agent to install it")
        trial = _wait_line(board, cursor, f"starting release {release.serial} ", 600, "the launcher to start it on trial")
    with step(f"update: release {release.serial} kept after its trial of {HEALTH_S} s"):
        kept = _wait_line(board, cursor, f"release {release.serial} ({release.version}) kept", HEALTH_S + 120,
                          "the launcher to keep it after its trial")
        status = board.status()
        assert status["agent_version"] == release.version, f"ctl status agent_version {status['agent_version']!r}"
        update = status.get("update", {})
        assert update.get("serial") == release.serial and update.get("state") == "done", f"ctl status update {update}"
        after = board.unit()
        assert after["MainPID"] == unit["MainPID"] and after["NRestarts"] == unit["NRestarts"], \
            f"the unit restarted for the update (the launcher should have): {unit} -> {after}"
        starts = _count(board, cursor, "starting as")
        assert starts == 1, f"{starts} agent starts between the publish and the trial's end (one restart at most)"
    with step(f"update: the heartbeat at the source says {release.version}, done"):
        heartbeat = wait_for(lambda: next((h for h in reversed(source.heartbeats())
                                           if h.get("agent_version") == release.version
                                           and h.get("update", {}).get("state") == "done"), None),
                             120, f"a heartbeat with agent_version {release.version}", interval=1)
    with step("update: only the changed wheel crossed the link"):
        fetched = {path.rsplit("/", 1)[-1]: sent for path, sent in source.sent_under(f"{BASE_PATH}/releases/").items()}
        wheels = {n: s for n, s in fetched.items() if n.endswith(".whl")}
        assert set(wheels) == {release.agent_wheel}, \
            f"the board fetched {sorted(wheels)}; it holds the dependencies' wheels already, so only " \
            f"{release.agent_wheel} should come (its store had {len(held)} wheels)"
    with step("update: content on the device throughout the switch"):
        worst, kinds = _without_content(watch, published, _at(kept, offset))
        assert worst <= SWITCH_DARK_BUDGET_S, \
            f"no content on the device for {worst:.1f} s during the switch ({kinds}); budget {SWITCH_DARK_BUDGET_S:.0f} s"
    figures = {
        "update_bytes_downloaded": sum(fetched.values()),
        "update_wheels_fetched": sorted(wheels),
        "release_wheels_listed": len(release.wheels),
        "release_wheels_total_bytes": sum(release.wheels.values()),
        "update_publish_to_installing_s": round(_at(installing, offset) - published, 1),
        "update_publish_to_trial_s": round(_at(trial, offset) - published, 1),
        "update_install_s": round(_at(trial, offset) - _at(installing, offset), 1),
        "update_trial_to_kept_s": round(_at(kept, offset) - _at(trial, offset), 1),
        "update_switch_without_content_s": round(worst, 1),
        "update_heartbeat": {k: heartbeat.get(k) for k in ("agent_version", "update")},
    }
    results.put("update", **figures)
    log(f"update: release {release.serial} kept; {figures['update_bytes_downloaded']} bytes fetched")


def _publish_broken(board: Board, results: Results, release: Built, good: Built, mode: str, offset: float,
                    watch: ScreenWatch) -> None:
    source = board.source
    what = BROKEN[mode][0]
    cursor = _cursor(board)
    unit = board.unit()
    with step(f"update: publish broken release {release.serial} ({what})"):
        published = time.monotonic()
        source.publish(make_manifest(board.files), board.files, release=release.document)
        trial = _wait_line(board, cursor, f"starting release {release.serial} ", 600,
                           f"the launcher to start release {release.serial} on trial")
        started = _at(trial, offset)
    with step(f"update: back on release {good.serial} by itself within health_s + 60 s ({BOUND_S} s)"):
        rolled = _wait_line(board, cursor, f"release {release.serial} ({release.version}) rolled back", BOUND_S + 30,
                            f"the launcher to roll release {release.serial} back")
        back = _content_back(watch, _at(rolled, offset), BOUND_S + 30)
        status = wait_for(lambda: s if (s := board.status())["agent_version"] == good.version else None, 60,
                          f"ctl status to say {good.version} again", interval=1)
        took = back - started
        assert took <= BOUND_S, f"back on {good.version} with content {took:.1f} s after the trial began (> {BOUND_S} s)"
    with step(f"update: the board says why release {release.serial} failed"):
        update = status.get("update", {})
        assert update.get("serial") == release.serial and update.get("state") == "failed" and update.get("error"), \
            f"ctl status update {update}"
        heartbeat = wait_for(lambda: next((h for h in reversed(source.heartbeats())
                                           if h.get("update", {}).get("serial") == release.serial
                                           and h["update"].get("state") == "failed"), None),
                             120, f"a heartbeat reporting release {release.serial} failed", interval=1)
        after = board.unit()
        assert after["MainPID"] == unit["MainPID"] and after["NRestarts"] == unit["NRestarts"], \
            f"systemd restarted the unit during the trial (the launcher should have judged it): {unit} -> {after}"
    key = f"rollback_{mode}"
    figures = {
        f"{key}_publish_to_trial_s": round(started - published, 1),
        f"{key}_trial_to_rollback_s": round(_at(rolled, offset) - started, 1),
        f"{key}_trial_to_content_s": round(took, 1),
        f"{key}_without_content_s": round(_without_content(watch, started, back)[0], 1),
        f"{key}_reason": update.get("error"),
        f"{key}_heartbeat_update": heartbeat.get("update"),
    }
    results.put("update", **figures)


def _never_retried(board: Board, results: Results, failed: Built, good: Built) -> None:
    """A failed serial stays failed: the agent sees it named again (after a restart too) and leaves it."""
    with step(f"update: release {failed.serial} is never tried again, even after a restart"):
        cursor = _cursor(board)
        served = dict(board.source.sent_under(f"{BASE_PATH}/releases/"))
        board.v.sh("systemctl restart bangtin-agent", timeout=120, what="systemctl restart")
        _wait_line(board, cursor, f"release {failed.serial} ({failed.version}) failed before", 120,
                   f"the agent to pass over release {failed.serial}")
        board.wait_content(120)
        assert _count(board, cursor, f"installing release {failed.serial}") == 0, f"release {failed.serial} installed again"
        assert _count(board, cursor, f"starting release {failed.serial} ") == 0, f"release {failed.serial} tried again"
        assert board.status()["agent_version"] == good.version
        trial = board.v.run(f"test -e {STORAGE}/update/trial.json").rc
        assert trial != 0, "a trial record is waiting after the restart"
        again = {p: n for p, n in board.source.sent_under(f"{BASE_PATH}/releases/").items()
                 if p.endswith(".whl") and n != served.get(p)}
        assert not again, f"wheels of a failed release fetched again: {sorted(again)}"
    results.put("update", failed_serial_after_restart="passed over, not fetched or tried again")


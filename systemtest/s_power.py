"""Power cuts (SIGKILL to QEMU while the board plays, downloads and holds pending records) and a
slow card (QEMU's disk throttling), judged from outside the agent: the screen read back from the
device says what was shown and when; the source says what arrived."""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from systemtest.board import STORAGE, Board
from systemtest.content import manifest as make_manifest
from systemtest.content import noisy_image
from systemtest.results import Results
from systemtest.screen import Screen
from systemtest.util import StepFailed, log, step, wait_for
from systemtest.vm import Throttle, VmOptions

SAMPLE_S = 0.25
RATE_BPS = 150_000  # the source's cap on media during the power cuts
BACK_ON_SCREEN_BUDGET_S = 120.0  # power-on to content under TCG (measured ~20 s); a hang fails, not a slow VM
# A cheap SD card under sustained small writes: ~10 MB/s and a few dozen IOPS.
SD_CARD = Throttle(iops_total=50, bps_total=10 * 1024 * 1024)

# Run in the guest after each boot: every SQLite database passes integrity_check, every media file
# in the store is exactly what its name (SHA-256) says. Prints one JSON line.
GUEST_CHECK = r"""
import hashlib, json, pathlib, sqlite3, sys
root = pathlib.Path(sys.argv[1])
report = {"databases": {}, "media": 0, "bad_media": [], "partials": 0}
for db in sorted(root.glob("*.sqlite")):
    con = sqlite3.connect(str(db), timeout=30)
    report["databases"][db.name] = con.execute("PRAGMA integrity_check").fetchone()[0]
    con.close()
for f in sorted((root / "media").iterdir()) if (root / "media").is_dir() else []:
    if f.is_file() and len(f.name) == 64:
        report["media"] += 1
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        if digest != f.name:
            report["bad_media"].append(f.name)
report["partials"] = len(list((root / "media" / "partial").glob("*"))) if (root / "media" / "partial").is_dir() else 0
print(json.dumps(report))
"""


@dataclass
class Showing:
    item: str
    started_mono: float | None  # when the screen first showed it (None: already on screen when watching began)
    ended_mono: float
    ended_wall: float  # host wall clock at ended_mono
    boot: int


@dataclass
class ScreenWatch:
    """Samples the device's screen and turns item changes into showings (the ground truth)."""

    board: Board
    boot: int
    showings: list[Showing] = field(default_factory=list)
    strange: list[tuple[float, str]] = field(default_factory=list)  # two samples in a row neither item, splash nor dark
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (host monotonic, kind) of every sample
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def classify(self, screen: Screen) -> str:
        look = self.board.look
        item = look.item(screen)
        if item is not None:
            return item
        if screen.dark():
            return "dark"
        if screen.share(look.background, 0.16, 0.88, 0.05, 0.95) > 0.6:
            return "splash"
        return "other"

    def start(self) -> ScreenWatch:
        self._thread = threading.Thread(target=self._run, name="screen-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        current: str | None = None
        since: float | None = None
        previous_kind = ""
        vm = self.board.vm
        while not self._stop.is_set() and vm is not None and vm.alive():
            try:
                screen = vm.screendump()
            except Exception:  # noqa: BLE001 — the VM went away under us (the cut): stop watching
                break
            now, wall = time.monotonic(), time.time()
            kind = self.classify(screen)
            self.samples += 1
            self.timeline.append((now, kind))
            if kind == "other" and previous_kind == "other":
                self.strange.append((now, self.board.look.describe(screen)))
            previous_kind = kind
            if kind != current:
                if current in self.board.look.items:
                    self.showings.append(Showing(current, since, now, wall, self.boot))
                current, since = kind, now if current is not None else None
            self._stop.wait(SAMPLE_S)

    def started(self) -> bool:
        return self.samples > 2

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _guest_check(board: Board) -> dict[str, Any]:
    board.v.write("/tmp/guestcheck.py", GUEST_CHECK.encode())
    report: dict[str, Any] = json.loads(board.v.sh(f"python3 /tmp/guestcheck.py {STORAGE}", timeout=120).splitlines()[-1])
    return report


def _ended_at(record: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(record["ended_at"]).timestamp()


def _match(expected: list[Showing], records: list[dict[str, Any]], offsets: dict[int, float]) -> list[Showing]:
    """Showings with no record: same item, ended within the sampling window of what the screen showed."""
    free = sorted(records, key=_ended_at)
    used: set[str] = set()
    lost = []
    for showing in expected:
        guest_end = showing.ended_wall + offsets.get(showing.boot, 0.0)
        candidates = [r for r in free if r["item"] == showing.item and r["id"] not in used
                      and -2 * SAMPLE_S - 1.5 <= guest_end - _ended_at(r) <= 2.0]
        if candidates:
            best = min(candidates, key=lambda r: abs(guest_end - _ended_at(r)))
            used.add(best["id"])
        else:
            lost.append(showing)
    return lost


def power_cuts(board: Board, results: Results) -> None:
    cycles = board.cycles
    seed = int(time.time())
    rng = random.Random(seed)
    source = board.source
    switches = source.switches
    switches.refuse_uploads = True
    switches.media_rate_bps = RATE_BPS  # a download takes several seconds: cuts land in it
    expected: list[Showing] = []
    offsets: dict[int, float] = {}
    back_s: list[float] = []
    cut_while: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    fsck_reboots = 0
    received_before = set(source.records())
    log(f"power cuts: {cycles} cycles, seed {seed}")
    for cycle in range(1, cycles + 1):
        with step(f"power cut {cycle}: back on screen"):
            if board.vm is None or not board.vm.alive():
                try:
                    board.power_on()
                except StepFailed as exc:
                    if "QEMU exited" not in exc.why:
                        raise
                    fsck_reboots += 1  # fsck in the initrd asked for a reboot (-no-reboot: QEMU exits)
                    board.power_on()
                shown, _ = board.wait_content(BACK_ON_SCREEN_BUDGET_S)
                back_s.append(shown - board.v.started_mono)
            offsets[board.boots] = board.v.clock_offset()
        with step(f"power cut {cycle}: databases and media intact after the cut"):
            report = _guest_check(board)
            checks.append(report)
            bad_db = {name: verdict for name, verdict in report["databases"].items() if verdict != "ok"}
            if bad_db or report["bad_media"]:
                raise AssertionError(f"after cut {cycle - 1}: integrity {bad_db or 'ok'}, bad media {report['bad_media']}")
        with step(f"power cut {cycle}: play, download, cut"):
            watch = ScreenWatch(board, board.boots).start()
            big = noisy_image(board.workdir / "files" / f"dl-{cycle:02d}.png", (10, 10, 10), 1_200_000, seed + cycle)
            source.publish(make_manifest(board.files, extra_media=[("dl", big, False)]), {**board.files, big.name: big})
            wait_for(watch.started, 30, "the screen watcher")
            board.v.run("true")  # the guest agent still answers: the board is up, not hung
            if cycle % 2:
                # Half the cuts land inside the download: wait for it to start, then cut within its span.
                wait_for(lambda: _in_flight(source), 60, "the board to start downloading the new image", interval=0.1)
                delay = rng.uniform(0.5, 0.8 * big.stat().st_size / RATE_BPS)
            else:
                delay = rng.uniform(3.0, 18.0)
            threading.Event().wait(delay)  # the cut's random moment (the scenario's input, not a synchronisation)
            downloading = bool(_in_flight(source))
            cut_mono = time.monotonic()
            board.v.power_cut()
            watch.stop()
            cut_while.append({"after_s": round(delay, 1), "downloading": downloading})
            ended = [s for s in watch.showings if cut_mono - s.ended_mono >= 1.0]
            expected.extend(ended)
            if watch.strange:
                raise AssertionError(f"the screen showed something that is neither an item, the splash nor dark: "
                                     f"{watch.strange[:3]}")
    with step("power cuts: boot with uploads accepted; every record arrives"):
        switches.refuse_uploads = False
        switches.media_rate_bps = None
        board.power_on()
        shown, _ = board.wait_content(BACK_ON_SCREEN_BUDGET_S)
        back_s.append(shown - board.v.started_mono)
        report = _guest_check(board)
        checks.append(report)
        assert all(v == "ok" for v in report["databases"].values()), report
        wait_for(lambda: board.status()["outbox_pending"] == 0, 300, "the outbox to empty", interval=2)
        records = [r for rid, r in source.records().items() if rid not in received_before]
        lost = _match(expected, records, offsets)
    (board.workdir / "power-cuts.json").write_text(json.dumps(
        {"seed": seed, "expected": [s.__dict__ for s in expected], "records": records, "cuts": cut_while,
         "checks": checks}, indent=1, default=str))
    results.put("power-cuts", cycles=cycles, seed=seed, worst_back_on_screen_s=round(max(back_s), 1),
                median_back_on_screen_s=round(statistics.median(back_s), 1),
                cuts_during_download=sum(1 for c in cut_while if c["downloading"]),
                showings_ended_1s_before_a_cut=len(expected), records_received=len(records), records_lost=len(lost),
                integrity_checks_ok=sum(1 for c in checks if all(v == "ok" for v in c["databases"].values())),
                fsck_reboots=fsck_reboots)
    if lost:
        raise StepFailed("power cuts: every record arrives",
                         f"{len(lost)} of {len(expected)} showings have no record at the source: "
                         + ", ".join(f"{s.item} ended {time.strftime('%H:%M:%S', time.localtime(s.ended_wall))} (boot {s.boot})"
                                     for s in lost[:10]))


def _in_flight(source: Any) -> list[str]:
    with source.state.lock:
        return list(source.switches.active)


def frame_figures(board: Board, seconds: float = 40.0) -> dict[str, Any]:
    """The agent's own frame-cost figures (ctl status `display.frame_ms`: draw + present, recent frames)
    over `seconds` of play: ten item changes of 4 s, each one a full redraw and a record committed."""
    first = board.status()["display"]
    threading.Event().wait(seconds)  # a window of play to measure over (the measurement itself)
    display = board.status()["display"]
    return {"frames": display.get("frames", 0) - first.get("frames", 0), "frame_ms": display.get("frame_ms")}


def slow_card(board: Board, results: Results) -> None:
    """The same board on an SD-card-like disk: boot, content, and the agent's frame timing across item
    changes, against the same measurement on a fresh unthrottled boot (TCG makes both slow; the
    difference is the disk's)."""
    with step("slow card: frame timing on a fresh boot, unthrottled"):
        if board.vm is not None and board.vm.alive():
            board.v.shutdown()
        board.power_on()
        board.wait_content(BACK_ON_SCREEN_BUDGET_S)
        baseline = frame_figures(board)
    with step("slow card: boot on a throttled disk"):
        board.v.shutdown()
        board.power_on(VmOptions(arch=board.image.arch, throttle=SD_CARD), boot_timeout=600)
        boot_s = time.monotonic() - board.v.started_mono
        shown, _ = board.wait_content(600)
        content_s = shown - board.v.started_mono
    with step("slow card: frame timing across item changes, throttled"):
        slow = frame_figures(board)
    results.put("slow-card", throttle=f"iops-total={SD_CARD.iops_total}, bps-total={SD_CARD.bps_total}",
                boot_to_guest_agent_s=round(boot_s, 1), power_on_to_content_s=round(content_s, 1),
                frame_ms_unthrottled=baseline["frame_ms"], frame_ms_throttled=slow["frame_ms"],
                frames_unthrottled=baseline["frames"], frames_throttled=slow["frames"])
    with step("slow card: back to a normal disk"):
        board.v.shutdown()
        board.power_on()
        board.wait_content(BACK_ON_SCREEN_BUDGET_S)

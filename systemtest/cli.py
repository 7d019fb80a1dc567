"""`./scripts/systemtest [--ci] [--arch arm64] [--only PART,...] [--break unit|install|rollback|usb]`

Builds (or takes from the cache) the Debian 12 image, boots it under QEMU/TCG, installs the board
with scripts/install.sh and runs the parts of issue #12 in order on that one installed board.
Prints one summary block, writes it as JSON, and exits non-zero naming the step that failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from systemtest import image as images
from systemtest import s_hardening, s_install, s_network, s_power, s_service, s_update, s_usb
from systemtest.board import BREAKAGES, Board
from systemtest.content import look
from systemtest.results import Results
from systemtest.source import Source
from systemtest.util import StepFailed, log
from systemtest.vm import require_tools

# In order; each runs on the board the previous ones left (installed, content on screen).
PARTS: dict[str, Callable[[Board, Results], None]] = {
    "checks": s_install.checks,
    "live-config": s_service.live_config,
    "restart-in-place": s_service.restart_in_place,
    "watchdog": s_service.watchdog,
    "crash-loop": s_service.crash_loop,
    "stop": s_service.clean_stop,
    "starved-link": s_network.starved_link,
    "power-cuts": s_power.power_cuts,
    "slow-card": s_power.slow_card,
    "update": s_update.update,
    "usb": s_usb.usb,  # last: it re-enrols the board as another device, from a factory reset
    "hardening": s_hardening.hardening,
}
OPTIONAL = {"hardening"}  # an investigation for the hardening work, run with --only
# CI stays well under 15 minutes: usb adds about a minute; update (three releases, each a venv
# installed under TCG) adds about seven and stays a command (docs/systemtest.md, "What CI runs").
CI_PARTS = ["checks", "usb"]
ARM64_PARTS = ["checks"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/systemtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["amd64", "arm64"], default="amd64")
    parser.add_argument("--ci", action="store_true", help="the CI part: image, install, boot, READY, screen, checks, usb")
    parser.add_argument("--only", help=f"comma-separated parts after the install: {', '.join(PARTS)}")
    parser.add_argument("--skip", help="comma-separated parts to leave out")
    parser.add_argument("--cycles", type=int, default=20, help="power cuts (default 20)")
    parser.add_argument("--crashes", type=int, default=4, help="crashes in the crash loop (default 4)")
    parser.add_argument("--break", dest="breakage", choices=sorted(BREAKAGES),
                        help="deliberately break the unit file, install.sh, the launcher's rollback or the USB rule: "
                             "the run must fail naming the step")
    parser.add_argument("--results", type=Path, help="JSON results file (default: in the run's folder)")
    parser.add_argument("--workdir", type=Path, help="run folder (default: under the cache)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    mode = "ci" if args.ci else "full"
    if args.arch == "arm64":
        parts = ARM64_PARTS
    elif args.only:
        parts = [p.strip() for p in args.only.split(",") if p.strip()]
    else:
        parts = CI_PARTS if args.ci else [p for p in PARTS if p not in OPTIONAL]
    parts = [p for p in parts if p not in set((args.skip or "").split(","))]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"unknown part(s): {', '.join(unknown)}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    # The pid too: two runs started in the same second (another checkout) get folders of their own.
    workdir = args.workdir or images.cache_root() / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.arch}-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    results = Results(args.arch, mode + (f", break {args.breakage}" if args.breakage else ""))
    results_path = args.results or workdir / "results.json"
    log(f"run folder {workdir}")
    source: Source | None = None
    board: Board | None = None
    try:
        require_tools(args.arch)
        started = time.monotonic()
        image = images.build(args.arch, sys.executable)
        results.durations_s["image"] = round(time.monotonic() - started, 1)
        results.put("image", key=image.key, built=",".join(image.layers_built) or "cached",
                    seconds=round(time.monotonic() - started, 1))
        results.passed.append("image")
        source = Source(workdir)
        board = Board(image, workdir, source, look())
        board.cycles, board.crashes = args.cycles, args.crashes
        _run_part("install", lambda: s_install.prepare_and_install(board, results, args.breakage), results)
        for part in parts:
            try:
                _run_part(part, lambda part=part: PARTS[part](board, results), results)  # type: ignore[misc]
            except StepFailed:
                _recover(board)  # the next part starts from a playing board again, or the run ends here
    except StepFailed as exc:
        if not results.failed:  # a failure outside the parts (image, tools); a part's is recorded already
            results.failed[exc.step] = exc.why
    except Exception as exc:  # noqa: BLE001 — a harness bug still ends in a named failure and a summary
        traceback.print_exc()
        results.failed.setdefault("harness", f"{type(exc).__name__}: {exc}")
    finally:
        if board is not None and board.vm is not None:
            try:
                board.vm.shutdown(timeout=60)
            except Exception as exc:  # noqa: BLE001 — the VM ends either way; the result stands
                log(f"power-off at the end: {exc}")
                board.vm.power_cut()
        if source is not None:
            source.stop()
        results.write(results_path)
        print(results.summary(), flush=True)
        print(f"results: {results_path}\nlogs:    {workdir}", flush=True)
        print(f"systemtest: {len(results.passed)} passed, {len(results.failed)} failed", flush=True)
    if results.failed:
        for part, why in results.failed.items():
            print(f"systemtest: FAILED in {part}: {why.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def _recover(board: Board) -> None:
    """After a failed part: power the board back on if needed and wait for content."""
    from systemtest.util import step

    with step("recover: the board back on screen for the next part"):
        vm = board.vm
        if vm is None or not vm.alive():
            board.power_on()
        else:
            vm.run("rm -f /etc/systemd/system/bangtin-agent.service.d/systemtest-*.conf; systemctl daemon-reload; "
                   "systemctl start bangtin-agent", timeout=120)
        board.wait_ready(180)
        board.wait_content(120)


def _run_part(name: str, body: Callable[[], None], results: Results) -> None:
    started = time.monotonic()
    log(f"== {name}")
    try:
        body()
    except StepFailed as exc:
        results.durations_s[name] = round(time.monotonic() - started, 1)
        results.failed[name] = str(exc)
        log(f"FAILED {name}: {exc}")
        raise
    except Exception as exc:
        traceback.print_exc()
        results.durations_s[name] = round(time.monotonic() - started, 1)
        results.failed[name] = f"{type(exc).__name__}: {exc}"
        raise StepFailed(name, f"{type(exc).__name__}: {exc}") from exc
    results.durations_s[name] = round(time.monotonic() - started, 1)
    results.passed.append(name)

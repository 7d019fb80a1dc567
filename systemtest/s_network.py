"""A starved link: `tc netem` inside the guest (both directions, through an ifb for ingress) makes a
3G-like link — 300 ms RTT, ~1 % loss, 1 Mbit/s — and takes it down for 30 s every few minutes,
while a 5 MB bulletin arrives. The screen must never stall; the download resumes and nothing is
fetched twice; records made meanwhile arrive once the link is back. Bytes on the wire come from
QEMU's own capture of the guest's NIC (filter-dump), not from either end's idea of it."""

from __future__ import annotations

import itertools
import struct
import threading
import time
from pathlib import Path
from typing import Any

from systemtest.board import Board
from systemtest.content import BIG_COLOUR, BIG_ITEM, noisy_image
from systemtest.content import manifest as make_manifest
from systemtest.results import Results
from systemtest.util import log, step, wait_for
from systemtest.vm import VmOptions

BIG_BYTES = 5 * 1000 * 1000
ONE_WAY = "delay 150ms 20ms distribution normal loss 0.5% rate 1mbit"
DOWN = "delay 150ms loss 100%"
OUTAGE_S = 30.0
OUTAGE_EVERY_S = 150.0  # "every few minutes", squeezed so a 5 MB sync meets at least one
FIRST_OUTAGE_AFTER_S = 45.0
SYNC_TIMEOUT_S = 1200.0
STALL_LIMIT_S = 2.0
GUEST_MAC = bytes.fromhex("525400123456")  # QEMU's default NIC address

SHAPE = f"""set -e
modprobe ifb numifbs=1
ip link set ifb0 up
tc qdisc replace dev eth0 root netem {ONE_WAY}
tc qdisc replace dev eth0 handle ffff: ingress
tc filter replace dev eth0 parent ffff: protocol all prio 1 matchall action mirred egress redirect dev ifb0
tc qdisc replace dev ifb0 root netem {ONE_WAY}
"""


def _link(board: Board, spec: str) -> None:
    board.v.sh(f"tc qdisc change dev eth0 root netem {spec} && tc qdisc change dev ifb0 root netem {spec}",
               what="tc netem change")


def pcap_bytes(path: Path) -> dict[str, int]:
    """Ethernet bytes to and from the guest in a pcap written by QEMU's filter-dump."""
    data = path.read_bytes() if path.exists() else b""
    totals = {"to_guest": 0, "from_guest": 0, "frames": 0}
    if len(data) < 24:
        return totals
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    offset = 24
    while offset + 16 <= len(data):
        _, _, captured, original = struct.unpack(endian + "IIII", data[offset:offset + 16])
        frame = data[offset + 16:offset + 16 + captured]
        offset += 16 + captured
        totals["frames"] += 1
        if frame[6:12] == GUEST_MAC:
            totals["from_guest"] += original
        else:
            totals["to_guest"] += original
    return totals


def starved_link(board: Board, results: Results) -> None:
    source = board.source
    switches = source.switches
    pcap = board.workdir / "starved-link.pcap"
    with step("starved link: boot with the NIC captured"):
        if board.vm is not None and board.vm.alive():
            board.v.shutdown()
        pcap.unlink(missing_ok=True)
        board.power_on(VmOptions(arch=board.image.arch, pcap=pcap))
        board.wait_content(120)
    with step("starved link: shape the guest's link with tc netem"):
        board.v.sh(SHAPE, what="tc netem set-up")
        shaped = board.v.sh("tc qdisc show dev eth0; tc qdisc show dev ifb0")
        assert "netem" in shaped and "ifb0" in board.v.sh("ip -o link show ifb0"), shaped
    big = noisy_image(board.workdir / "files" / "big.png", BIG_COLOUR, BIG_BYTES, seed=5)
    size = big.stat().st_size
    big_path = source.media_url(big)
    records_before = set(source.records())
    outages: list[tuple[float, float]] = []
    stop = threading.Event()
    stalls: list[float] = []
    screen_samples = [0]

    def outage_schedule(started: float) -> None:
        # The scenario's input: the link goes down for OUTAGE_S now and then until the sync is done.
        next_down = started + FIRST_OUTAGE_AFTER_S
        while not stop.wait(max(0.0, next_down - time.monotonic())):
            down = time.monotonic()
            _link(board, DOWN)
            log(f"starved link: link down at {down - started:.0f} s")
            stop.wait(OUTAGE_S)
            _link(board, ONE_WAY)
            outages.append((down - started, time.monotonic() - started))
            next_down = time.monotonic() + OUTAGE_EVERY_S

    def watch_screen() -> None:
        # The clock and the ticker change every second at least: a frozen picture is a stall.
        last_digest, last_change = None, time.monotonic()
        while not stop.is_set():
            try:
                screen = board.v.screendump()
            except Exception:  # noqa: BLE001 — the VM is being stopped
                return
            digest = screen.digest(0.0, 0.11) ^ screen.digest(0.925, 1.0)
            now = time.monotonic()
            screen_samples[0] += 1
            if digest != last_digest:
                stalls.append(now - last_change)
                last_digest, last_change = digest, now
            stop.wait(0.25)

    with step("starved link: a 5 MB bulletin arrives over it"):
        started = time.monotonic()
        serial = source.publish(make_manifest(board.files, extra_media=[(BIG_ITEM, big, True)]),
                                {**board.files, big.name: big})
        threads = [threading.Thread(target=outage_schedule, args=(started,), name="outages", daemon=True),
                   threading.Thread(target=watch_screen, name="stall-watch", daemon=True)]
        for thread in threads:
            thread.start()
        try:
            def synced() -> bool:
                status = board.status()
                return bool(status.get("manifest_serial") == serial and status["cache"]["media_missing"] == 0)

            wait_for(synced, SYNC_TIMEOUT_S, f"manifest serial {serial} and its 5 MB image verified", interval=3)
            sync_s = time.monotonic() - started
            wait_for(lambda: board.look.item(board.v.screendump()) == BIG_ITEM, 300, "the 5 MB bulletin on screen",
                     interval=0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    with step("starved link: resumed, nothing fetched twice"):
        requests = [(rng, status) for path, rng, status in switches.media_requests if path == big_path]
        starts = [int(rng.split("=")[1].split("-")[0]) if rng else 0 for rng, _ in requests]
        assert starts and starts[0] == 0, f"first request for the bulletin was not from byte 0: {requests}"
        assert all(b > a for a, b in itertools.pairwise(starts)), \
            f"a resume went back: Range starts {starts} (bytes fetched twice)"
        # Bytes the source handed to its socket overstate delivery (the host relay and slirp buffer what a
        # dropped link never carries), so "fetched twice" is judged on the wire: QEMU's capture of the NIC.
        sent = switches.sent_per_media.get(big_path, 0)
        wire = pcap_bytes(pcap)
        assert wire["to_guest"] < 1.25 * size, (f"{wire['to_guest']} bytes reached the guest for a {size}-byte bulletin: "
                                                "part of it was fetched twice")
        others = {p: n for p, n in switches.sent_per_media.items() if p != big_path and not p.endswith(big.suffix + "x")}
        refetched_old = [p for p in others if any(p.endswith(f.name) for f in board.files.values())]
        assert not refetched_old, f"media the board already had were fetched again: {refetched_old}"
    with step("starved link: the screen never stalled"):
        worst_stall = max(stalls[1:], default=0.0)
        assert worst_stall <= STALL_LIMIT_S, f"the screen froze for {worst_stall:.1f} s during the sync"
    with step("starved link: records made meanwhile arrive once the link is back"):
        _link(board, ONE_WAY)
        wait_for(lambda: board.status()["outbox_pending"] == 0, 300, "the outbox to empty over the shaped link", interval=3)
        arrived = len(set(source.records()) - records_before)
        assert arrived > 0, "no record reached the source after the sync"
    board.v.shutdown()
    wire = pcap_bytes(pcap)  # again, now complete: the records and heartbeats after the sync too
    figures: dict[str, Any] = {
        "link": f"netem {ONE_WAY} each way (RTT ~300 ms, ~1 % loss), down {OUTAGE_S:.0f} s every {OUTAGE_EVERY_S:.0f} s",
        "bulletin_bytes": size, "time_to_sync_s": round(sync_s, 1), "outages": len(outages),
        "media_requests": len(requests), "range_starts": starts, "media_bytes_handed_to_host_socket": sent,
        "wire_bytes_to_guest": wire["to_guest"], "wire_bytes_from_guest": wire["from_guest"],
        "wire_overhead_vs_file": f"{(wire['to_guest'] - size) / size * 100:+.1f} %",
        "wire_frames": wire["frames"], "worst_screen_stall_s": round(worst_stall, 2), "screen_samples": screen_samples[0],
        "records_after_link_back": arrived,
    }
    results.put("starved-link", **figures)
    with step("starved link: back to a normal link"):
        board.power_on()
        board.wait_content(120)

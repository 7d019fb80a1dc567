"""Which unit hardening settings keep the KMS screen and the agent working (for the hardening work
on main): each candidate is tried alone as a drop-in on the installed unit, then all that passed
together; "works" means READY, header/content/ticker read back from the device, and no
"frames are not reaching the screen" problem. Prints the exposure score of each."""

from __future__ import annotations

import re
from typing import Any

from systemtest.board import UNIT, Board
from systemtest.results import Results
from systemtest.util import step

DROPIN = f"/etc/systemd/system/{UNIT}.service.d/systemtest-hardening.conf"
SCORE = re.compile(r"Overall exposure level for \S+: ([0-9.]+)")
CANDIDATES: dict[str, str] = {
    "DevicePolicy=closed + DeviceAllow (dri, cec, vchiq)":
        "DevicePolicy=closed\nDeviceAllow=char-drm rw\nDeviceAllow=/dev/cec0 rw\nDeviceAllow=/dev/vchiq rw\n",
    "CapabilityBoundingSet= (none)": "CapabilityBoundingSet=\nAmbientCapabilities=\n",
    "SystemCallFilter=@system-service": "SystemCallFilter=@system-service\n",  # a violation kills: nothing hidden
    "SystemCallFilter=~@privileged": "SystemCallFilter=@system-service\nSystemCallFilter=~@privileged\n",
    "SystemCallFilter=~@resources": "SystemCallFilter=@system-service\nSystemCallFilter=~@resources\n",
    "MemoryMax=512M": "MemoryMax=512M\n",
    "MemoryDenyWriteExecute=yes": "MemoryDenyWriteExecute=yes\n",
    "PrivateUsers=yes": "PrivateUsers=yes\n",
    "ProtectKernelLogs + ProtectHostname + RestrictNamespaces":
        "ProtectKernelLogs=yes\nProtectHostname=yes\nRestrictNamespaces=yes\n",
    "ProtectProc=invisible + ProcSubset=pid": "ProtectProc=invisible\nProcSubset=pid\n",
    "PrivateIPC + RemoveIPC + KeyringMode=private": "PrivateIPC=yes\nRemoveIPC=yes\nKeyringMode=private\n",
    "IPAddressDeny=any + IPAddressAllow=10.0.2.0/24 localhost": "IPAddressDeny=any\nIPAddressAllow=10.0.2.0/24 localhost\n",
    "PrivateDevices=yes (expected to break: hides /dev/dri)": "PrivateDevices=yes\n",
}


def _try(board: Board, settings: str) -> dict[str, Any]:
    board.v.write(DROPIN, f"[Service]\n{settings}".encode())
    outcome: dict[str, Any] = {}
    try:
        board.v.sh(f"systemctl daemon-reload && systemctl restart {UNIT}", timeout=180, what="restart with the drop-in")
        board.wait_ready(90)
        board.wait_content(60)
        status = board.status()
        problems = [e for e in status.get("errors", []) if "not reaching the screen" in e]
        outcome["works"] = not problems
        outcome["render_driver"] = status["display"].get("render_driver")
        if problems:
            outcome["why"] = problems[0]
    except Exception as exc:  # noqa: BLE001 — a setting that breaks the board is the finding
        outcome["works"] = False
        journal = board.v.run(f"journalctl -u {UNIT} -b --no-pager -n 8 -o cat").out.strip().splitlines()
        # One line for the summary: the journal's last words say how it broke (SIGSYS, SEGV, exit 1).
        outcome["why"] = " ".join(f"{type(exc).__name__}; journal: {' | '.join(journal[-4:-1])}".split())[:300]
    score = SCORE.search(board.v.run(f"systemd-analyze security {UNIT}.service --no-pager", timeout=120).out)
    outcome["exposure"] = float(score.group(1)) if score else None
    return outcome


def hardening(board: Board, results: Results) -> None:
    found: dict[str, Any] = {}
    with step("hardening: each candidate alone"):
        base = SCORE.search(board.v.run(f"systemd-analyze security {UNIT}.service --no-pager", timeout=120).out)
        found["(committed unit)"] = {"works": True, "exposure": float(base.group(1)) if base else None}
        for name, settings in CANDIDATES.items():
            found[name] = _try(board, settings)
            board.note(f"hardening {name}: {found[name]}")
    with step("hardening: all that worked, together"):
        combined = "".join(settings for name, settings in CANDIDATES.items() if found[name]["works"])
        found["ALL THAT WORKED"] = _try(board, combined)
        (board.workdir / "hardening.conf").write_text(f"[Service]\n{combined}")
    with step("hardening: back to the committed unit"):
        board.v.sh(f"rm -f {DROPIN} && systemctl daemon-reload && systemctl restart {UNIT}", timeout=180)
        board.wait_ready(90)
        board.wait_content(60)
    results.put("hardening", **{name: (("works" if o["works"] else "BREAKS") + f", exposure {o['exposure']}"
                                       + (f" — {o['why']}" if not o["works"] and o.get("why") else ""))
                               for name, o in found.items()})

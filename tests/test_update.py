"""Self-update (issue 13, PROTOCOL.md §11): release documents, wheel selection, the updater with real pip,
and the launcher's trial with releases that fail in every way a release can.

The end to end run with real systemd and the real agent's wheels is part of the system test
(`./scripts/systemtest`, docs/systemtest.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.tags import Tag

from agent.envelope import RELEASE_PAYLOAD_TYPE, load_trusted_keys, public_key_b64, sign_envelope
from agent.manifest import accept_manifest
from agent.models import ManifestRejected, ReleaseRef
from agent.release import ReleaseRejected, accept_release, compatible_wheels
from agent.sync.client import ClientSettings, HttpClient
from agent.sync.download import Downloader
from agent.update import UpdatePaths, Updater, base_python
from refsource.release import build_release, release_reference
from refsource.server import Faults, ReferenceServer, SourceState
from tests.conftest import ROOT, base_manifest, wait_for

DEVICE = "vinhthuan-ubnd-01"
LAUNCHER = ROOT / "launcher" / "bangtin_launch.py"


@pytest.fixture(scope="module")
def release_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def fake_wheel(folder: Path, version: str, body: str = "", name: str = "bangtin_agent", tag: str = "py3-none-any") -> Path:
    """A real, installable wheel of a tiny `agent` package (what pip needs, and nothing else)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {"agent/__init__.py": f"__version__ = {version!r}\n{body}",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
             f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(data.encode())}\n" for path, data in files.items()) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for inner, data in {**files, f"{dist}/RECORD": record}.items():
            archive.writestr(inner, data)
    return path


# --- documents and selection ----------------------------------------------------------------------


def signed_release(key: Ed25519PrivateKey, **changes: Any) -> bytes:
    document = {"schema": "bangtin.release/1", "serial": 7, "version": "1.2.0", "issued_at": "2026-12-01T08:00:00+07:00",
                "audience": ["group:angiang"],
                "wheels": [{"name": "bangtin_agent-1.2.0-py3-none-any.whl", "url": "wheels/a.whl", "sha256": "a" * 64,
                            "size": 1000}], **changes}
    return json.dumps(sign_envelope(json.dumps(document).encode(), RELEASE_PAYLOAD_TYPE, key)).encode()


def test_a_release_is_verified_with_the_release_keys_only(release_key: Ed25519PrivateKey,
                                                           private_key: Ed25519PrivateKey) -> None:
    keys = load_trusted_keys([public_key_b64(release_key)])
    release = accept_release(signed_release(release_key), keys=keys, device_id=DEVICE, groups=("angiang",))
    assert (release.serial, release.version, release.wheels[0].project) == (7, "1.2.0", "bangtin-agent")
    for raw, reason in [
        (signed_release(private_key), "signature not valid"),  # the content key signs content, not releases
        (signed_release(release_key, audience=["group:cantho"]), "names neither this board"),
        (signed_release(release_key, schema="bangtin.release/2"), "release schema"),
        (signed_release(release_key, wheels=[{"name": "../x.whl", "url": "x", "sha256": "a" * 64, "size": 1}]),
         "expected a wheel file name"),
        (signed_release(release_key, wheels=[{"name": "x-1-py3-none-any.whl", "url": "file:///etc/passwd",
                                              "sha256": "a" * 64, "size": 1}]), "expected an http"),
    ]:
        with pytest.raises(ReleaseRejected, match=reason):
            accept_release(raw, keys=keys, device_id=DEVICE, groups=("angiang",))
    with pytest.raises(ReleaseRejected, match="updates are off"):
        accept_release(signed_release(release_key), keys=(), device_id=DEVICE, groups=("angiang",))


def test_the_wheels_this_board_takes_from_a_mixed_list(release_key: Ed25519PrivateKey) -> None:
    names = ["bangtin_agent-1.2.0-py3-none-any.whl",
             "pygame_ce-2.5.8-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
             "pygame_ce-2.5.8-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
             "pygame_ce-2.5.8-cp313-cp313-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
             "cryptography-46.0.0-cp311-abi3-manylinux_2_28_aarch64.whl",
             "cryptography-46.0.0-cp311-abi3-manylinux_2_34_aarch64.whl"]
    wheels = [{"name": n, "url": f"wheels/{n}", "sha256": hashlib.sha256(n.encode()).hexdigest(), "size": 10} for n in names]
    release = accept_release(signed_release(release_key, wheels=wheels), keys=load_trusted_keys([public_key_b64(release_key)]),
                             device_id=DEVICE, groups=("angiang",))
    # A Pi 4 on Debian 12 (glibc 2.36), CPython 3.11: tags in pip's order of preference.
    pi = [Tag("cp311", "cp311", "manylinux_2_36_aarch64"), *(Tag("cp311", "abi3", f"manylinux_2_{n}_aarch64")
                                                               for n in (36, 35, 34, 28, 17)),
          Tag("cp311", "cp311", "manylinux_2_17_aarch64"), Tag("py3", "none", "any")]
    chosen = sorted(w.filename for w in compatible_wheels(release, pi))
    assert chosen == ["bangtin_agent-1.2.0-py3-none-any.whl", "cryptography-46.0.0-cp311-abi3-manylinux_2_34_aarch64.whl",
                      "pygame_ce-2.5.8-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"]
    with pytest.raises(ReleaseRejected, match=r"no wheel for this board .* of: cryptography, pygame-ce"):
        compatible_wheels(release, [Tag("cp312", "cp312", "manylinux_2_36_x86_64"), Tag("py3", "none", "any")])


def test_a_manifest_names_a_release_within_bounds() -> None:
    ref = {"url": "/api/releases/release-7.json", "sha256": "b" * 64, "size": 4000}
    manifest = accept_manifest(json.dumps(base_manifest(1, release=ref)).encode(), keys=(), device_id=DEVICE, groups=(),
                               last_serial=None)
    assert manifest.release == ReleaseRef(ref["url"], "b" * 64, 4000)
    with pytest.raises(ManifestRejected, match=r"release\.size"):
        accept_manifest(json.dumps(base_manifest(1, release={**ref, "size": 10**9})).encode(), keys=(), device_id=DEVICE,
                        groups=(), last_serial=None)


# --- the updater, with a real source and real pip -------------------------------------------------


@pytest.fixture
def source() -> Iterator[ReferenceServer]:
    server = ReferenceServer(("127.0.0.1", 0), SourceState(base_path="/api", token="tok")).start()
    yield server
    server.stop()


def serve_release(server: ReferenceServer, site: Path, key: Ed25519PrivateKey, wheels: Path, version: str,
                  serial: int) -> ReleaseRef:
    path, _ = build_release(wheels, key, version, site, groups=("angiang",), serial=serial)
    from refsource.cli import load_site

    load_site(site, server.state)
    ref = release_reference(path, "/api")
    return ReleaseRef(ref["url"], ref["sha256"], ref["size"])


class Board:
    """An Updater as main.py wires it, with a recorded restart instead of an exit."""

    def __init__(self, tmp_path: Path, server: ReferenceServer, key: Ed25519PrivateKey) -> None:
        self.paths = UpdatePaths(tmp_path / "update")
        self.stop = threading.Event()
        self.restarts = 0
        self.problems: list[str | None] = []
        self.client = HttpClient(ClientSettings(server.base_url, "tok", None, "bangtin-agent/test"))
        self.downloader = Downloader(self.client, self.stop, lambda: 5.0)
        self.updater = Updater(self.paths, load_trusted_keys([public_key_b64(key)]), device_id=DEVICE, groups=("angiang",),
                               manifest_url=f"{server.base_url}/devices/{DEVICE}/manifest", downloader=self.downloader,
                               stop=self.stop, health_s=lambda: 30, may_download=lambda: True,
                               restart=self._restarted, python=base_python(), report=self.problems.append)

    def _restarted(self) -> None:
        self.restarts += 1

    def trial(self) -> dict[str, Any]:
        return json.loads(self.paths.trial.read_text()) if self.paths.trial.exists() else {}


def test_a_release_is_fetched_resuming_a_cut_installed_with_its_wheels_only_and_handed_over(
        tmp_path: Path, source: ReferenceServer, release_key: Ed25519PrivateKey) -> None:
    wheel = fake_wheel(tmp_path / "wheels", "2.0.0", body="PAD = " + repr("x" * 200_000) + "\n")
    ref = serve_release(source, tmp_path / "site", release_key, tmp_path / "wheels", "2.0.0", 2)
    source.state.faults = Faults(cut_media_after_bytes=wheel.stat().st_size // 3, cut_times=1, only_path=".whl")
    board = Board(tmp_path, source, release_key)
    board.updater.offer(ref)
    board.updater.start()
    try:
        wait_for(lambda: board.restarts == 1, timeout=120, what="the release installed and the switch asked for")
    finally:
        board.stop.set()
        board.updater.join(10)
    wheel_requests = source.requests_to(wheel.name)
    assert len(wheel_requests) == 2 and wheel_requests[1].headers["Range"].startswith("bytes=")  # resumed, not again
    assert sum(r.body_bytes_sent for r in wheel_requests) == wheel.stat().st_size
    trial = board.trial()
    assert trial["serial"] == 2 and trial["version"] == "2.0.0" and trial["previous"] is None and trial["runs"] == 0
    release = Path(trial["path"])
    assert board.paths.current.resolve() == release.resolve()
    version = subprocess.run([str(release / "bin" / "python"), "-P", "-c", "import agent; print(agent.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "2.0.0"
    assert board.updater.health() == {"serial": 2, "version": "2.0.0", "state": "trial"}


def test_lower_failed_and_broken_releases_are_not_installed(tmp_path: Path, source: ReferenceServer,
                                                            release_key: Ed25519PrivateKey) -> None:
    board = Board(tmp_path, source, release_key)
    board.paths.root.mkdir(parents=True)
    (board.paths.root / "agent.json").write_text(json.dumps({"accepted": 5}))
    (board.paths.root / "launcher.json").write_text(json.dumps({"failed": {"6": "crashed at start"}}))
    fake_wheel(tmp_path / "w4", "4.0")
    fake_wheel(tmp_path / "w6", "6.0")
    fake_wheel(tmp_path / "w7", "7.0", body="raise ImportError('broken on purpose')\n")
    lower = serve_release(source, tmp_path / "site", release_key, tmp_path / "w4", "4.0", 4)
    failed = serve_release(source, tmp_path / "site", release_key, tmp_path / "w6", "6.0", 6)
    broken = serve_release(source, tmp_path / "site", release_key, tmp_path / "w7", "7.0", 7)
    board.updater.start()
    try:
        for ref in (lower, failed):
            board.updater.offer(ref)
            wait_for(board.updater.settled, timeout=30, what="the release looked at")
        assert not source.requests_to(".whl")  # neither was even downloaded
        board.updater.offer(broken)
        wait_for(lambda: (board.updater.health().get("state") == "failed"), timeout=120, what="the import check")
        assert "import agent" in (board.updater.health().get("error") or "") or "failed" in str(board.problems[-1])
        assert not board.paths.trial.exists() and board.restarts == 0  # never switched to
        record = json.loads((board.paths.root / "agent.json").read_text())
        assert "7" in record["failed"]
    finally:
        board.stop.set()
        board.updater.join(10)


# --- the launcher ---------------------------------------------------------------------------------

FAKE_AGENT = '''#!{python}
"""A release's `python -P -m agent run`: behaves as mode.txt beside it says."""
import os, socket, sys, time
from pathlib import Path
release = Path(__file__).resolve().parent.parent
mode = (release / "mode.txt").read_text().strip()
(release / "runs.txt").open("a").write("run\\n")
def tell(message):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), "\\0" + os.environ["NOTIFY_SOCKET"][1:])
if mode == "import-fails":
    sys.exit("ModuleNotFoundError: No module named 'pygame'")
if mode == "rejects-config":
    sys.exit(2)
if mode == "never-ready":
    time.sleep(3600)
tell("READY=1")
if mode == "crashes":
    time.sleep(0.5)
    sys.exit(1)
tell("BANGTIN_SHOWING=1")
if mode == "update":  # installs a release and asks to be started again
    sys.exit(75)
stop_pinging = time.monotonic() + (0.5 if mode == "stops-pinging" else 1e9)
while True:
    if time.monotonic() < stop_pinging:
        tell("WATCHDOG=1")
    time.sleep(0.1)
'''


def fake_release(folder: Path, mode: str) -> Path:
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"
    python.write_text(FAKE_AGENT.format(python=sys.executable))
    python.chmod(0o755)
    (folder / "mode.txt").write_text(mode)
    return folder


def runs(release: Path) -> int:
    path = release / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


class Systemd:
    """The service manager's notify socket, as the launcher sees it."""

    def __init__(self) -> None:
        self.name = f"bangtin-test-systemd-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)  # systemd reads all the time
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                self.messages.extend(self.sock.recv(4096).decode().splitlines())
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def received(self) -> list[str]:
        return list(self.messages)


class Launch:
    def __init__(self, tmp_path: Path, health_s: float = 1.0, watchdog_s: float = 2.0) -> None:
        self.state = tmp_path / "state"
        self.update = self.state / "update"
        self.update.mkdir(parents=True)
        self.base = fake_release(tmp_path / "base", "good")
        self.health_s = health_s
        self.systemd = Systemd()
        self.env = dict(os.environ, NOTIFY_SOCKET="@" + self.systemd.name, WATCHDOG_USEC=str(int(watchdog_s * 1e6)))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "launcher.log"

    def release(self, serial: int, mode: str, previous: Path | None = None, **trial: Any) -> Path:
        """Install a fake release and put it on trial, as the agent's updater does."""
        folder = fake_release(self.update / "releases" / str(serial), mode)
        record = {"serial": serial, "version": f"{serial}.0", "path": str(folder),
                  "previous": str(previous) if previous else None, "health_s": self.health_s, "runs": 0, "clean": False,
                  "boot": Path("/proc/sys/kernel/random/boot_id").read_text().strip(), **trial}
        (self.update / "trial.json").write_text(json.dumps(record))
        link = self.update / "current"
        link.unlink(missing_ok=True)
        link.symlink_to(folder)
        return folder

    def start(self) -> Launch:
        self.process = subprocess.Popen([sys.executable, str(LAUNCHER), "--state", str(self.state), "--base",
                                         str(self.base), "run", "--config", "/dev/null", "--ready-timeout", "2"],
                                        env=self.env, stderr=self.log.open("wb"))
        return self

    def outcome(self) -> dict[str, Any]:
        path = self.update / "launcher.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    run = Launch(tmp_path)
    yield run
    if run.process is not None and run.process.poll() is None:
        run.process.kill()
        run.process.wait()


def test_a_good_release_passes_its_trial_and_is_kept(launch: Launch) -> None:
    release = launch.release(2, "good")
    launch.start()
    wait_for(lambda: launch.outcome().get("last", {}).get("state") == "done", timeout=20, what="the trial passed")
    assert launch.outcome()["installed"] == {"serial": 2, "version": "2.0"}
    assert not (launch.update / "trial.json").exists() and (launch.update / "current").resolve() == release
    assert runs(release) == 1 and runs(launch.base) == 0
    assert "READY=1" in launch.systemd.received() and "WATCHDOG=1" in launch.systemd.received()  # relayed
    assert launch.stop() == 0


@pytest.mark.parametrize(("mode", "reason"), [
    ("import-fails", "exited with code 1 during its trial"),
    ("rejects-config", "exited with code 2 during its trial"),
    ("crashes", "exited with code 1 during its trial"),
    ("never-ready", "did not reach READY within 2 s"),
    ("stops-pinging", "stopped answering the watchdog (2 s)"),
])
def test_a_release_that_fails_its_trial_is_rolled_back_and_never_retried(launch: Launch, mode: str, reason: str) -> None:
    launch.health_s = 10  # longer than every way of failing takes
    previous = fake_release(launch.update / "releases" / "1", "good")
    launch.release(2, mode, previous=previous)
    launch.start()
    wait_for(lambda: launch.outcome().get("failed", {}).get("2"), timeout=30, what="the rollback")
    assert launch.outcome()["failed"]["2"] == reason
    assert launch.outcome()["last"]["state"] == "failed"
    assert (launch.update / "current").resolve() == previous  # back on the release that worked
    wait_for(lambda: runs(previous) >= 1, timeout=10, what="the previous release started again")
    assert not (launch.update / "trial.json").exists()
    assert f"release 2 (2.0) rolled back: {reason}" in launch.log.read_text()


def test_the_launcher_answers_the_watchdog_for_a_release_still_starting(launch: Launch) -> None:
    """systemd's watchdog runs on across the launcher's later starts (the unit stays READY): without
    the launcher's own pings a release that starts slowly or hangs got the whole unit killed by
    systemd before the launcher judged it (the system test found it: "Watchdog timeout")."""
    launch.health_s = 10
    previous = fake_release(launch.update / "releases" / "1", "good")
    launch.release(2, "never-ready", previous=previous)
    launch.start()
    wait_for(lambda: launch.outcome().get("failed", {}).get("2"), timeout=30, what="the rollback")
    wait_for(lambda: "READY=1" in launch.systemd.received(), timeout=10, what="the previous release READY")
    received = launch.systemd.received()
    # The release on trial never sent a thing: every ping before the previous release's READY is the launcher's.
    assert received[:received.index("READY=1")].count("WATCHDOG=1") >= 2, received[:20]


def test_a_trial_is_judged_early_enough_to_keep_the_dark_short_and_the_rollback_within_health_s_plus_60() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bangtin_launch", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    launcher = module.Launcher("/dev/null", Path("/nonexistent"), Path("/nonexistent"), sys.executable)
    assert launcher.ready_deadline(None) == module.READY_TIMEOUT_S
    # On trial the screen is dark until the release draws: 30 s at most, whatever health_s is.
    assert launcher.ready_deadline({"health_s": 120}) == module.TRIAL_READY_S == 30
    assert launcher.ready_deadline({"health_s": 30}) == 30  # the minimum health_s: 30 + 60 - 30 as well


def test_a_trial_killed_in_this_boot_fails_but_one_cut_by_a_power_cut_runs_again(tmp_path: Path) -> None:
    killed = Launch(tmp_path / "a")
    killed.release(2, "good", runs=1, clean=False)  # the launcher died with it (a watchdog kill, the OOM killer)
    killed.start()
    wait_for(lambda: killed.outcome().get("failed", {}).get("2"), timeout=20, what="the unconfirmed trial failed")
    assert "ended without being confirmed" in killed.outcome()["failed"]["2"]
    killed.stop()
    cut = Launch(tmp_path / "b")
    cut.release(2, "good", runs=1, clean=False, boot="an-earlier-boot")
    cut.start()
    wait_for(lambda: cut.outcome().get("last", {}).get("state") == "done", timeout=20, what="the trial run again")
    cut.stop()


def test_a_stop_during_a_trial_is_not_a_failure_and_a_restart_request_starts_again(launch: Launch) -> None:
    launch.health_s = 60  # long: the trial is still running when it is stopped
    release = launch.release(2, "good")
    launch.start()
    wait_for(lambda: runs(release) == 1 and "READY=1" in launch.systemd.received(), timeout=10, what="the trial running")
    assert launch.stop() == 0
    trial = json.loads((launch.update / "trial.json").read_text())
    assert trial["clean"] is True and "2" not in launch.outcome().get("failed", {})
    (launch.update / "trial.json").unlink()
    (release / "mode.txt").write_text("update")  # a release that installs the next one and exits 75
    launch.process = None
    launch.start()
    wait_for(lambda: runs(release) >= 3, timeout=10, what="the launcher starting it again on 75")
    # But a release that keeps asking with no new release in place is not looped for ever, dark and
    # unseen: after three in a row the launcher ends, and systemd's restart pacing takes over.
    assert launch.process is not None
    assert launch.process.wait(timeout=10) == 1 and runs(release) == 1 + 3  # the trial run, then three asking


def test_the_technicians_command_runs_the_current_release_even_after_its_venv_was_renamed(tmp_path: Path) -> None:
    """`bangtin-agent …` on a board goes through the launcher to the release that runs now. A venv is
    built under a temporary name and renamed: its console scripts would name the old path, so the
    launcher runs `bin/python -m agent` (the system test found `bin/bangtin-agent` failing)."""
    def release(name: str) -> Path:
        folder = tmp_path / "opt" / name
        (folder / "bin").mkdir(parents=True)
        (folder / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # this venv's python
        (folder / "bin" / "python").chmod(0o755)
        (folder / "bin" / "bangtin-agent").write_text("#!/nonexistent/.0.building/bin/python\n")
        (folder / "bin" / "bangtin-agent").chmod(0o755)
        return folder

    base, newer = release("0"), release("7")
    state = tmp_path / "state"
    (state / "update").mkdir(parents=True)

    def technician(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(LAUNCHER), "--state", str(state), "--base", str(base), "agent",
                               *arguments], capture_output=True, text=True, timeout=60, cwd=tmp_path)

    first = technician("--version")
    assert first.returncode == 0 and first.stdout.startswith("bangtin-agent "), first.stderr
    os.symlink(newer, state / "update" / "current")
    assert technician("--version").returncode == 0
    os.unlink(state / "update" / "current")
    os.symlink(tmp_path / "opt" / "gone", state / "update" / "current")  # a release removed by hand: the base runs
    assert technician("--version").returncode == 0

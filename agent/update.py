"""Self-update (PROTOCOL.md §11): fetch a signed release, install it beside the running one, hand over.

The manifest names a release document; this service ("updater") fetches it like a media file
(resumable, SHA-256 and size checked), verifies it with `security.release_keys`, picks the wheels
this board's Python and platform take (agent/release.py), fetches those it does not hold, installs
them into a new environment with pip and nothing but those wheels (`--no-index`), checks that it
imports, then writes the trial record, points `current` at it and asks to be restarted. From there
the launcher (launcher/bangtin_launch.py, outside every release) runs the new release on trial and
keeps it or rolls it back; this side only reports what the launcher decided.

Updates need the launcher (it sets BANGTIN_UPDATE_DIR) and release keys; without either they are
off, and `ctl status` says so. Downloads wait while an alert or an emergency item is on screen and
while the content's own media are downloading: a release never stands in the way of a warning.

Files in BANGTIN_UPDATE_DIR: `wheels/<sha256>` (the wheel store), `releases/<serial>/` (one venv
per release), `current` (link), `trial.json` (ours at the switch, the launcher's after),
`launcher.json` (the launcher's outcomes), `agent.json` (ours: accepted serial, install failures).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from agent import __version__
from agent.cache.store import MediaStore
from agent.downloads import Windows
from agent.envelope import TrustedKey
from agent.files import atomic_write
from agent.limits import clip
from agent.models import Media, ReleaseRef
from agent.release import Release, ReleaseRejected, Wheel, accept_release, compatible_wheels
from agent.startguard import kernel_boot_id
from agent.sync.download import Downloader, DownloadPaused, MediaFailure

log = logging.getLogger(__name__)

RETRY_S = 300.0  # a transient failure (link down, disk busy) is tried again this much later
WINDOW_RECHECK_S = 60.0  # a paused wheel looks again this soon: the next window may be minutes away
PIP_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class UpdatePaths:
    root: Path

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def trial(self) -> Path:
        return self.root / "trial.json"

    @property
    def launcher(self) -> Path:
        return self.root / "launcher.json"

    @property
    def agent(self) -> Path:
        return self.root / "agent.json"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Updater:
    name = "updater"

    def __init__(
        self,
        paths: UpdatePaths | None,
        keys: Sequence[TrustedKey],
        *,
        device_id: str,
        groups: Sequence[str],
        manifest_url: str,
        downloader: Downloader | None,
        stop: threading.Event,
        health_s: Callable[[], int],
        may_download: Callable[[], bool],
        restart: Callable[[], None],
        python: str,
        report: Callable[[str | None], None],
        windows: Windows | None = None,
    ) -> None:
        self.paths = paths
        self._keys = tuple(keys)
        self._device_id = device_id
        self._groups = tuple(groups)
        self._manifest_url = manifest_url
        self._downloader = downloader
        self._stop = stop
        self._health_s = health_s
        self._may_download = may_download  # False while an emergency shows or content media download
        self._restart = restart
        self._python = python
        self._report = report  # a problem for `errors`, or None when there is none
        self._windows = windows  # downloads.windows: a large wheel waits for one, and pauses when it closes
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ref: ReleaseRef | None = None
        self._done_ref: ReleaseRef | None = None
        self._progress: dict[str, Any] | None = None
        self._store = MediaStore(paths.wheels) if paths is not None else None

    # --- from other threads ---------------------------------------------------------------------

    @property
    def enabled(self) -> str | None:
        """None when updates can run; otherwise why they are off."""
        if not self._keys:
            return "no security.release_keys"
        if self.paths is None or self._downloader is None:
            return "not started by the launcher (bangtin-launch) with an HTTP source"
        return None

    def offer(self, ref: ReleaseRef | None) -> None:
        """The current manifest's `release` (None: keep what runs). Cheap; the work is on the thread."""
        if ref != self._ref:
            self._ref = ref
            self._wake.set()

    def settled(self) -> bool:
        """The release offered last has been dealt with: installed, not needed (lower, failed before), refused."""
        return self._ref is None or self._ref == self._done_ref

    def health(self) -> dict[str, Any]:
        """The heartbeat's `update` (§11), or why updates are off."""
        off = self.enabled
        if off is not None:
            return {"state": "off", "reason": off}
        assert self.paths is not None
        trial = read_json(self.paths.trial)
        if trial:
            return {"serial": trial.get("serial"), "version": trial.get("version"), "state": "trial"}
        if self._progress is not None:
            return dict(self._progress)
        last = read_json(self.paths.launcher).get("last")
        if isinstance(last, dict):
            return {key: last.get(key) for key in ("serial", "version", "state", "error") if last.get(key) is not None}
        return {"state": "done", "version": __version__}

    # --- service --------------------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled is not None:
            log.info("self-update is off: %s", self.enabled)
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        assert self.paths is not None and self._store is not None
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self._store.open()
        self._prune()
        while not self._stop.is_set():
            ref = self._ref
            delay: float | None = None
            if ref is not None and ref != self._done_ref:
                try:
                    delay = self._work(ref)
                except Exception:  # a bug must not end the thread; the next manifest tries again
                    log.exception("update failed")
                    delay = RETRY_S
            self._wake.wait(delay)
            self._wake.clear()

    # --- one release ------------------------------------------------------------------------------

    def _failed(self) -> dict[str, str]:
        assert self.paths is not None
        failed: dict[str, str] = {}
        for record in (read_json(self.paths.agent), read_json(self.paths.launcher)):
            entries = record.get("failed")
            if isinstance(entries, dict):
                failed.update({str(k): str(v) for k, v in entries.items()})
        return failed

    def _accepted(self) -> int:
        assert self.paths is not None
        value = read_json(self.paths.agent).get("accepted", 0)
        return value if isinstance(value, int) else 0

    def _note(self, **changes: Any) -> None:
        assert self.paths is not None
        record = read_json(self.paths.agent)
        for key, value in changes.items():
            if key == "failed":
                record.setdefault("failed", {}).update(value)
            else:
                record[key] = value
        atomic_write(self.paths.agent, json.dumps(record).encode())

    def _work(self, ref: ReleaseRef) -> float | None:
        """Take `ref` one step further; returns when to look again (None: when told)."""
        if read_json(self.paths.trial) if self.paths else False:
            return None  # the launcher has a trial to settle first
        if not self._may_download():
            return 5.0
        doc_url = urljoin(self._manifest_url, ref.url)
        try:
            document = self._fetch(Media("release", doc_url, ref.sha256, ref.size, "application/json"), doc_url,
                                   "release document")
            release = accept_release(document.read_bytes(), keys=self._keys, device_id=self._device_id,
                                     groups=self._groups)
        except (MediaFailure, ReleaseRejected) as exc:
            return self._trouble(ref, None, exc)
        failed = self._failed()
        if str(release.serial) in failed:
            self._report(None)
            log.info("release %d (%s) failed before (%s): not tried again", release.serial, release.version,
                     failed[str(release.serial)])
            self._done_ref = ref
            return None
        if release.serial <= self._accepted():
            self._done_ref = ref  # the same or an older release: nothing to do (rollback protection)
            return None
        try:
            wheels = compatible_wheels(release)
        except ReleaseRejected as exc:
            self._note(failed={str(release.serial): str(exc)})
            return self._trouble(ref, release, exc, permanent=True)
        self._progress = {"serial": release.serial, "version": release.version, "state": "downloading"}
        try:
            files = []
            for wheel in wheels:
                while not self._may_download() or self._held(release, wheel):
                    if self._stop.wait(5.0):
                        return None
                self._progress = {"serial": release.serial, "version": release.version, "state": "downloading"}
                url = urljoin(doc_url, wheel.url)
                files.append((wheel, self._fetch(Media(wheel.filename, url, wheel.sha256, wheel.size,
                                                       "application/zip"), url, f"wheel {wheel.filename}")))
        except DownloadPaused as exc:
            log.info("%s", exc)
            return WINDOW_RECHECK_S  # the wheel waits for the next window (the loop above), its bytes kept
        except MediaFailure as exc:
            return self._trouble(ref, release, exc, permanent=exc.permanent)
        self._progress = {"serial": release.serial, "version": release.version, "state": "installing"}
        try:
            target = self._install(release, files)
        except ReleaseRejected as exc:
            self._note(failed={str(release.serial): str(exc)})
            return self._trouble(ref, release, exc, permanent=True)
        self._switch(release, target)
        return None

    def _trouble(self, ref: ReleaseRef, release: Release | None, exc: Exception, permanent: bool = False) -> float | None:
        what = f"release {release.serial} ({release.version})" if release else "release"
        message = clip(f"update: {what}: {exc}", 300)
        self._report(message)
        self._progress = ({"serial": release.serial, "version": release.version, "state": "failed",
                           "error": clip(str(exc))} if release else {"state": "failed", "error": clip(str(exc))})
        if permanent:
            self._done_ref = ref
            return None
        return RETRY_S

    def _held(self, release: Release, wheel: Wheel) -> bool:
        """A wheel too large for outside the download windows waits; the heartbeat says until when."""
        hold = self._windows.hold(wheel.size) if self._windows is not None else None
        if hold is not None:
            self._progress = {"serial": release.serial, "version": release.version, "state": "downloading",
                              "waiting_until": hold.until.isoformat(timespec="minutes")}
        return hold is not None

    def _fetch(self, media: Media, url: str, label: str) -> Path:
        assert self._store is not None and self._downloader is not None
        path = self._store.path_for(media.sha256)
        if path is None and self._store.has_file(media.sha256):
            self._store.verify_existing([(media.sha256, media.size)])
            path = self._store.path_for(media.sha256)
        if path is None:
            pause = self._windows.seconds_left(media.size) if self._windows is not None else None
            self._downloader.fetch(media, url, self._store, label, kind="update", pause_after_s=pause)
            path = self._store.path_for(media.sha256)
        assert path is not None
        return Path(path)

    # --- installing -------------------------------------------------------------------------------

    def _install(self, release: Release, files: list[tuple[Wheel, Path]]) -> Path:
        """A venv with exactly these wheels, beside the running one; ReleaseRejected when it does not work."""
        assert self.paths is not None
        self.paths.releases.mkdir(parents=True, exist_ok=True)
        target = self.paths.releases / str(release.serial)
        building = self.paths.releases / f".{release.serial}.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        log.info("installing release %d (%s) from %d wheel(s)", release.serial, release.version, len(files))
        with tempfile.TemporaryDirectory(dir=self.paths.root) as links:
            for wheel, path in files:  # pip wants the wheels' own names
                os.symlink(path, Path(links) / wheel.filename)
            steps = [
                [self._python, "-m", "venv", str(building)],
                [str(building / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-cache-dir",
                 "--disable-pip-version-check", "--quiet", "--find-links", links,
                 *(str(Path(links) / wheel.filename) for wheel, _ in files)],
                [str(building / "bin" / "python"), "-P", "-c", "import agent, sys; sys.stdout.write(agent.__version__)"],
            ]
            for step in steps:
                if self._stop.is_set():
                    raise ReleaseRejected("stopped while installing")
                result = subprocess.run(step, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
                if result.returncode != 0:
                    shutil.rmtree(building, ignore_errors=True)
                    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
                    raise ReleaseRejected(f"{Path(step[0]).name} {step[1]} {step[2]} failed: {clip(tail[0], 150)}")
        (building / "bangtin-release.json").write_text(json.dumps({
            "serial": release.serial, "version": release.version, "wheels": [w.sha256 for w, _ in files]}))
        os.replace(building, target)
        return target

    def _switch(self, release: Release, target: Path) -> None:
        """Hand over to the launcher: the trial record first, then the link, then a restart."""
        assert self.paths is not None
        try:
            previous: str | None = str(self.paths.current.resolve(strict=True))
        except OSError:
            previous = None  # the base install (release 0)
        trial = {"serial": release.serial, "version": release.version, "path": str(target), "previous": previous,
                 "health_s": self._health_s(), "runs": 0, "clean": False, "boot": kernel_boot_id()}
        self._note(accepted=release.serial)
        atomic_write(self.paths.trial, json.dumps(trial).encode())
        link = self.paths.current
        temporary = link.with_name(f".{link.name}.new")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        os.replace(temporary, link)
        self._progress = {"serial": release.serial, "version": release.version, "state": "trial"}
        self._report(None)
        log.warning("release %d (%s) installed: restarting into it for its trial (%d s)", release.serial,
                    release.version, self._health_s())
        self._restart()

    def _prune(self) -> None:
        """Releases and wheels no longer needed go: the running, previous, trial and newest releases
        stay (and the wheels they were made from, so an agent-only update fetches one small wheel)."""
        assert self.paths is not None and self._store is not None
        keep: set[Path] = set()
        trial = read_json(self.paths.trial)
        for candidate in (self.paths.current, os.environ.get("BANGTIN_RELEASE_DIR"), trial.get("path"),
                          trial.get("previous")):
            if candidate:
                try:
                    keep.add(Path(candidate).resolve(strict=True))
                except OSError:
                    pass
        releases = sorted((p for p in self.paths.releases.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: int(p.name) if p.name.isdigit() else 0) if self.paths.releases.is_dir() else []
        if releases:
            keep.add(releases[-1].resolve())
        for release in releases:
            if release.resolve() not in keep:
                shutil.rmtree(release, ignore_errors=True)
                log.info("update: removed release %s (no longer needed)", release.name)
        wheels: set[str] = set()
        for release in keep:
            listed = read_json(release / "bangtin-release.json").get("wheels", [])
            wheels.update(str(sha) for sha in listed if isinstance(sha, str))
        for entry in self.paths.wheels.iterdir() if self.paths.wheels.is_dir() else []:
            if len(entry.name) == 64 and entry.name not in wheels and time.time() - entry.stat().st_mtime > 86400:
                entry.unlink(missing_ok=True)


def update_paths() -> UpdatePaths | None:
    """Where the launcher keeps releases (None: not started by the launcher, updates off)."""
    root = os.environ.get("BANGTIN_UPDATE_DIR")
    return UpdatePaths(Path(root)) if root else None


def base_python() -> str:
    """The Python that new release environments are made with: the launcher's, else this one's base."""
    return os.environ.get("BANGTIN_PYTHON") or str(getattr(sys, "_base_executable", None) or sys.executable)

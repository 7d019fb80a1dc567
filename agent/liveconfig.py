"""Live config: the config file is watched; a valid edit is applied without a restart where it can
be, by a clean self-restart where not; an invalid edit is refused with `check-config`'s messages and
the running config kept.

Editors save by writing a new file and renaming it over the old one, so the folder is watched
(watchdog) and events are filtered to the file's name; a burst of events is read once. Edits are
applied on the config thread ("config"): each target is thread-safe, and what the display thread
owns is posted to it, so a slow MQTT goodbye never holds up a frame.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from agent.config import Config, ConfigError, config_value, leaf_keys, load_config
from agent.configfiles import dropin_dir
from agent.watching import start_watching, stop_watching

log = logging.getLogger(__name__)

SETTLE_S = 0.5

# Keys a running board takes as they are. Everything else (device, source url, keys, storage,
# screen size, the control socket) is a new board: it restarts itself cleanly to take them.
HOT_KEYS = {
    "source.poll_interval_s", "report.heartbeat_interval_s", "report.upload_interval_s", "report.batch_size",
    "report.outbox_max_records", "report.journal_days", "display.fps", "display.crossfade_ms", "display.splash_title",
    "display.power_on_command", "display.power_off_command", "mqtt.url", "mqtt.topic_prefix", "mqtt.keepalive_s",
    "mqtt.ca_file", "update.health_s", "log_level", "downloads.windows", "downloads.small_mb",
}


@dataclass(frozen=True)
class LiveTargets:
    """Where each hot key goes; main.py wires these to the running parts."""

    poll_interval: Callable[[int], None]
    report: Callable[[int, int, int], None]  # heartbeat_s, upload_s, batch_size
    outbox_limits: Callable[[int, int], None]  # max_records, journal_days
    display: Callable[[int, int, str], None]  # fps, crossfade_ms, splash_title (posted to the display thread)
    power_commands: Callable[[str | None, str | None], None]
    mqtt: Callable[[Config], None]
    restart_in_place: Callable[[set[str]], None]
    log_level: Callable[[str], None]
    downloads: Callable[[tuple[tuple[str, str], ...], float], None]  # windows, small_mb (agent/downloads.py)


def apply_edit(targets: LiveTargets, new: Config, changed: set[str]) -> bool:
    """Apply a valid edit; True when it took effect live, False when it needs a restart in place."""
    cold = changed - HOT_KEYS
    if cold:
        log.warning("config change to %s needs a fresh start: restarting in place", ", ".join(sorted(cold)))
        targets.restart_in_place(cold)
        return False
    targets.poll_interval(new.source.poll_interval_s)
    targets.report(new.report.heartbeat_interval_s, new.report.upload_interval_s, new.report.batch_size)
    targets.outbox_limits(new.report.outbox_max_records, new.report.journal_days)
    targets.display(new.display.fps, new.display.crossfade_ms, new.display.splash_title)
    targets.power_commands(new.display.power_on_command, new.display.power_off_command)
    targets.log_level(new.log_level)
    targets.downloads(new.downloads.windows, new.downloads.small_mb)
    if any(key.startswith("mqtt.") for key in changed):
        targets.mqtt(new)
    log.info("config applied without a restart: %s", ", ".join(sorted(changed)))
    return True


def changed_keys(old: Config, new: Config) -> set[str]:
    return {key for key in leaf_keys() if config_value(old, key) != config_value(new, key)}


class _Touched(FileSystemEventHandler):
    """Wakes on the config file, or on any `*.yaml` in its drop-in folder (agent.d)."""

    def __init__(self, config_path: Path, wake: threading.Event, dropins_made: Callable[[], None]) -> None:
        self._name = config_path.name
        self._dropins = dropin_dir(config_path)
        self._wake = wake
        self._dropins_made = dropins_made

    def _ours(self, path: Path) -> bool:
        if path.parent == self._dropins:
            return path.suffix == ".yaml" or path == self._dropins
        return path.name == self._name or path == self._dropins

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [Path(str(p)) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        if any(self._ours(p) for p in paths) and event.event_type not in ("opened", "closed_no_write"):
            if self._dropins in paths and event.event_type in ("created", "moved"):
                self._dropins_made()
            self._wake.set()


class ConfigWatcher:
    name = "config"

    def __init__(self, path: Path, current: Callable[[], Config], apply: Callable[[Config, set[str]], None],
                 refuse: Callable[[list[str]], None], stop: threading.Event) -> None:
        self._path = path
        self._current = current
        self._apply = apply
        self._refuse = refuse
        self._stop = stop
        self._wake = threading.Event()
        self._observer: Any = None
        self._dropins_watched = False
        self._watch_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        handler = _Touched(self._path, self._wake, lambda: self._watch_dropins(handler))
        self._observer = start_watching(self._path.parent, handler, "config-watch", recursive=False)
        self._watch_dropins(handler)
        self._wake.set()  # read once now: an edit made while the agent was starting is not missed
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _watch_dropins(self, handler: FileSystemEventHandler) -> None:
        """agent.d is watched too, from the start or once it is made (the first provisioning bundle)."""
        dropins = dropin_dir(self._path)
        with self._watch_lock:  # from start() and from the observer's thread
            if self._dropins_watched or not dropins.is_dir():
                return
            self._dropins_watched = True
        try:
            self._observer.schedule(handler, str(dropins), recursive=False)
        except OSError as exc:
            log.warning("cannot watch %s (%s): edits there apply at the next start", dropins, exc.strerror or exc)

    def stop(self) -> None:
        self._wake.set()

    def health(self) -> dict[str, Any]:
        return {"file": str(self._path)}

    def join(self, timeout: float) -> None:
        self._wake.set()
        stop_watching(self._observer, timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            while self._wake.is_set():  # let the editor finish writing
                self._wake.clear()
                self._stop.wait(SETTLE_S)
            self.check()

    def check(self) -> None:
        try:
            new = load_config(self._path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config edit refused: %s", problem)
            self._refuse(exc.problems)
            return
        changed = changed_keys(self._current(), new)
        if changed:
            log.info("config changed: %s", ", ".join(sorted(changed)))
            try:
                self._apply(new, changed)
            except Exception:  # a target that fails must not end the watcher: the next edit is read too
                log.exception("config edit could not be applied in full")

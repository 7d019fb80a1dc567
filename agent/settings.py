"""Remote settings (PROTOCOL.md §4 `settings`) and the config in force.

The config in force is the config files (agent.yaml and agent.d/*.yaml) with the current
manifest's `settings` laid over the keys the files do not set: the technician on site has the last
word. The province may set only the keys below, each within the board's bounds (tighter than a
config file's: a thousand boards polling every 10 s would be a province's own denial of service).
An unknown key, or a value out of bounds, is ignored and said in `errors`; the rest still apply.
Both kinds of change — a file edit, a new manifest — go through one place, so the two can never
race each other into a half-applied config.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import Config, check_value, config_value, with_value
from agent.limits import clip, show_value

log = logging.getLogger(__name__)

MAX_SETTINGS = 32


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda value: None if low <= value <= high else f"a number from {low:g} to {high:g}"


def _few_windows(value: tuple[tuple[str, str], ...]) -> str | None:
    return None if len(value) <= 8 else "at most 8 windows"


# The keys the province may set, with the board's bounds on top of the config file's own checks.
REMOTE_KEYS: dict[str, Callable[[Any], str | None] | None] = {
    # At most an hour: a leaked content key must not be able to make a board deaf to its province for a day.
    "source.poll_interval_s": _between(30, 3600),
    "report.heartbeat_interval_s": _between(30, 3600),
    "report.upload_interval_s": _between(10, 3600),
    "display.fps": _between(1, 60),
    "display.crossfade_ms": _between(0, 2000),
    "log_level": None,
    "downloads.windows": _few_windows,
    "downloads.small_mb": _between(0, 100),
}


@dataclass(frozen=True)
class Resolved:
    config: Config
    sources: Mapping[str, Mapping[str, Any]]  # key → {"value", "from": "file"/"manifest"/"default", …}
    problems: tuple[str, ...]


def resolve(file_config: Config, settings: Mapping[str, Any] | None) -> Resolved:
    """The config in force for these files and this manifest's `settings`."""
    config = file_config
    problems: list[str] = []
    asked: dict[str, Any] = {}
    for index, (key, raw) in enumerate((settings or {}).items()):
        if index >= MAX_SETTINGS:
            problems.append(f"manifest settings: more than {MAX_SETTINGS} keys; the rest ignored")
            break
        if key not in REMOTE_KEYS:
            problems.append(f"manifest settings: {clip(key, 64)!r} is not a key the province may set; ignored")
            continue
        bound = REMOTE_KEYS[key]
        number = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        expected = bound(raw) if bound is not None and number else None  # the board's bounds say it best
        value, problem = check_value(key, raw) if expected is None else (None, None)
        if expected is None and problem is None and bound is not None and not number and value is not None:
            expected = bound(value)
        if expected is not None:
            problem = f"expected {expected}, found {show_value(raw)}"
        if problem is not None:
            problems.append(f"manifest settings: {key}: {problem}; kept {show_value(config_value(file_config, key))}")
            continue
        asked[key] = value
        if key not in file_config.explicit:
            config = with_value(config, key, value)
    sources: dict[str, dict[str, Any]] = {}
    for key in REMOTE_KEYS:
        source = "file" if key in file_config.explicit else "manifest" if key in asked else "default"
        entry: dict[str, Any] = {"value": _plain(config_value(config, key)), "from": source}
        if source == "file" and key in asked and asked[key] != config_value(file_config, key):
            entry["manifest_asked"] = _plain(asked[key])  # the technician's value wins; the province can see both
        sources[key] = entry
    return Resolved(config, sources, tuple(problems))


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


class ConfigInForce:
    """The one writer of the config in force. `apply(new, changed)` puts a change into effect and
    says whether it could live (False: the board restarts in place to take it)."""

    def __init__(self, file_config: Config, apply: Callable[[Config, set[str]], bool],
                 report: Callable[[tuple[str, ...]], None], changed_keys: Callable[[Config, Config], set[str]]) -> None:
        self._lock = threading.Lock()
        self._file = file_config
        self._settings: Mapping[str, Any] | None = None
        self._resolved = resolve(file_config, None)
        self._apply = apply
        self._report = report
        self._changed_keys = changed_keys

    @property
    def config(self) -> Config:
        with self._lock:
            return self._resolved.config

    @property
    def file_config(self) -> Config:
        with self._lock:
            return self._file

    def sources(self) -> Mapping[str, Mapping[str, Any]]:
        with self._lock:
            return self._resolved.sources

    def file_edited(self, new_file: Config) -> None:
        """From the config watcher: a valid edit of the files."""
        with self._lock:
            self._settle(new_file, self._settings)

    def settings_changed(self, settings: Mapping[str, Any] | None) -> None:
        """From the source: the current manifest (and so perhaps its settings) changed."""
        with self._lock:
            if settings == self._settings:
                return
            self._settle(self._file, settings)

    def _settle(self, file_config: Config, settings: Mapping[str, Any] | None) -> None:
        resolved = resolve(file_config, settings)
        self._report(resolved.problems)
        changed = self._changed_keys(self._resolved.config, resolved.config)
        if changed and not self._apply(resolved.config, changed):
            return  # restarting in place: the new process reads the files and the manifest afresh
        if settings != self._settings:
            remote = {k: v["value"] for k, v in resolved.sources.items() if v["from"] == "manifest"}
            log.info("manifest settings in force: %s", remote or "none")
        self._file, self._settings, self._resolved = file_config, settings, resolved

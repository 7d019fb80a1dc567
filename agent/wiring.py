"""What the parts built in agent/main.py ask of each other: small functions the composition root
hands to one part as a callback on others (alerts kept when added, the screen's media for the
cache, live-config targets, stop and restart requests, signals). Each takes the parts it touches as
arguments; none keeps state of its own (the one mutable record is `Lifecycle`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygame

from agent import schedule
from agent.alerts import AlertStore
from agent.cache.store import MediaStore
from agent.clock import Clock
from agent.config import Config
from agent.content import Content
from agent.display import kms
from agent.display.renderer import Renderer
from agent.downloads import DownloadRules
from agent.enrolment import EnrolmentCard, NoSource, qr_text, waiting_lines
from agent.health import Problems
from agent.identity import Identity, IdentityError
from agent.liveconfig import LiveTargets, apply_edit
from agent.loop import DisplayLoop, Inbox, ScreenState
from agent.manifest import DEFAULT_TIMEZONE
from agent.models import Alert, Scene, ScreenMode
from agent.outbox import Outbox
from agent.player import Player
from agent.power import CEC_OFF, CEC_ON, ScreenPower, resolve_command
from agent.provision import DROP_FOLDER
from agent.startguard import StartGuard
from agent.sync.client import HttpClient
from agent.sync.filesource import FileSource
from agent.sync.http import HttpSource
from agent.sync.mqtt import MqttSettings, MqttSlot, broker_urls
from agent.sync.reporter import Reporter
from agent.withdrawn import WithdrawnStore


@dataclass
class Lifecycle:
    """The only mutable state of the composition root: the config in effect, and how the run ends."""

    config: Config
    stop: threading.Event
    set_aside: bool = False  # this start set restored content aside (three failed starts before it)
    restart_requested: bool = False  # the `restart` command: exit for the service manager
    exec_restart: bool = False  # a cold config edit: re-execute in place (same PID, unit stays active)
    update_restart: bool = False  # a new release is installed: exit for the launcher to start it
    log_level_pinned: bool = False  # --log-level was given: log_level in the config does not move it





def restore(guard: StartGuard, content: Content, alerts: AlertStore, withdrawn: WithdrawnStore, player: Player,
             clock: Clock, problems: Problems) -> bool:
    """At start, after the splash is on screen and before any service runs: the manifest and alerts
    back from disk (parsing only, quick). True when something was set aside after failed starts."""
    set_aside = guard.begin()
    content.restore(set_aside=set_aside)
    restored, problem = alerts.load(clock.now())
    if problem:
        problems.report("alerts", problem)
    if set_aside and restored:
        problems.report("alerts", f"{len(restored)} stored alert(s) not restored after 3 failed starts")
        restored = []
    for alert in restored:
        player.add_alert(alert)
    held, problem = withdrawn.load()
    if problem:
        problems.report("withdrawn", problem)
    player.restore_withdrawn(held)
    return set_aside


def verify_cache(content: Content, clock: Clock, loop: DisplayLoop, set_aside: bool) -> bool:
    """On the source's thread before its first sync: the cached media hashed again (seconds for a big
    cache), in the order they will be shown, while the splash keeps the watchdog fed. True = poll now:
    something was set aside, so the province can correct it at once."""
    manifest = content.current()
    if manifest is not None:
        content.verify_cached(schedule.media_in_order_of_need(manifest, clock.now(), None))
        loop.wake()
    return set_aside


def enrolment_card(config: Config, identity: Identity | None, can_be_provisioned: bool) -> EnrolmentCard:
    fingerprint = identity.fingerprint if identity is not None else ""
    return EnrolmentCard(fingerprint=fingerprint,
                         qr_text=qr_text(fingerprint, identity.public_b64) if identity is not None else "",
                         addresses=(), waiting_for=waiting_lines(config.missing_for_enrolment(), can_be_provisioned,
                                                                 Path(config.storage.dir) / DROP_FOLDER, config.path))


def identity_status(identity: Identity | IdentityError | None) -> dict[str, Any]:
    if isinstance(identity, Identity):
        return {"fingerprint": identity.fingerprint, "public_key": identity.public_b64}
    return {"error": str(identity) if identity is not None else "no identity key in this run"}


def mark_shown(store: MediaStore, scene: Scene) -> None:
    media = scene.manifest.media_by_id(scene.item.media) if scene.manifest and scene.item else None
    if media is not None:
        store.touch(media.sha256)


def media_on_screen(content: Content, player: Player) -> set[str]:
    manifest = content.current()
    item = manifest.item_by_id(player.current_item_id) if manifest is not None else None
    media = manifest.media_by_id(item.media) if manifest is not None and item is not None else None
    logo = manifest.media_by_id(manifest.layout.logo) if manifest is not None else None
    return {m.sha256 for m in (media, logo) if m is not None}


def manifest_and_verified(content: Content) -> tuple[Any, frozenset[str]]:
    snapshot = content.snapshot()
    return snapshot.manifest, snapshot.verified_sha256


def add_alert(player: Player, alerts: AlertStore, alert: Alert, mqtt: MqttSlot) -> None:
    player.add_alert(alert)
    alerts.save(player.active_alerts())
    mqtt.request_presence()


def clear_alerts(player: Player, alerts: AlertStore, clock: Clock, alert_id: str | None, mqtt: MqttSlot) -> int:
    cleared = player.clear_alerts(alert_id, clock.now(), time.monotonic())
    alerts.save(player.active_alerts())
    mqtt.request_presence()
    return cleared


def withdraw(player: Player, store: WithdrawnStore, clock: Clock, ids: list[str], mqtt: MqttSlot) -> list[str]:
    found, withdrawn = player.withdraw(ids, clock.now(), time.monotonic())
    store.save(withdrawn)
    mqtt.request_presence()
    return found


def set_screen_mode(player: Player, mode: ScreenMode, mqtt: MqttSlot) -> None:
    player.set_screen_mode(mode)
    mqtt.request_presence()


def png(surface: pygame.Surface) -> bytes:
    """Encoded on the asking thread: a 1080p PNG costs tens of milliseconds the display must not spend."""
    buffer = io.BytesIO()
    pygame.image.save(surface, buffer, "screen.png")
    return buffer.getvalue()


def uploader(client: HttpClient, config: Config) -> Callable[[str, bytes, str, str], int]:
    def upload(what: str, body: bytes, content_type: str, command_id: str) -> int:
        """POST a command's answer to the source: `screenshots` (§2) or `logs` (§8); returns its size."""
        url = f"{config.source.url.rstrip('/')}/devices/{config.device.id}/{what}"
        reply = client.post(url, body, content_type, 60, headers={"X-Command-Id": command_id})
        if not 200 <= reply.status_code < 300:
            raise client.http_error(reply, what)
        return len(body)
    return upload


def mqtt_settings(config: Config) -> MqttSettings | None:
    urls = broker_urls(config.mqtt.url)
    if not urls:
        return None
    return MqttSettings(urls=urls, device_id=config.device.id, groups=config.device.groups, token=config.token(),
                        topic_prefix=config.mqtt.topic_prefix, keepalive_s=config.mqtt.keepalive_s,
                        ca_file=config.mqtt.ca_file)


def zone(content: Content) -> dt.tzinfo:
    """The board's local time zone: the current manifest's."""
    manifest = content.current()
    return schedule.zone(manifest.timezone if manifest else DEFAULT_TIMEZONE)


def today(content: Content, clock: Clock) -> str:
    """The local date (manifest's zone) for journal pruning and the data meter."""
    return clock.now().astimezone(zone(content)).date().isoformat()


def display_status(renderer: Renderer, started: float) -> dict[str, Any]:
    first = renderer.first_frame_mono
    return {"driver": renderer.driver, "render_driver": kms.render_driver(), "size": list(renderer.size),
            "frames": renderer.frames,
            "first_frame_s": round(first - started, 3) if first is not None else None,
            "scene_shown_mono": renderer.scene_shown_mono}  # CLOCK_MONOTONIC, for latency benchmarks


def one_line_state(content: Content, problems: Problems, state: ScreenState) -> str:
    manifest = content.current()
    shown = "ALERT" if state.alert_active else (state.current_item or "splash") if state.screen_on else "screen off"
    return f"serial {manifest.serial if manifest else '-'}, {shown}, {len(problems.current())} problem(s)"


def problem_setter(problems: Problems, key: str) -> Callable[[str | None], None]:
    return lambda message: problems.report(key, message) if message else problems.resolve(key)


def file_problem(problems: Problems, path: Path, exc: OSError | None) -> None:
    key = f"file:{path.name}"
    if exc is None:
        problems.resolve(key)
    else:
        problems.report(key, f"{path} not saved ({exc.strerror or exc}); it is kept in memory only")


def live_targets(lifecycle: Lifecycle, inbox: Inbox, source: FileSource | HttpSource | NoSource, reporter: Reporter | None,
                  outbox: Outbox, loop: DisplayLoop, renderer: Renderer, power: ScreenPower,
                  mqtt: MqttSlot) -> LiveTargets:
    def poll_interval(seconds: int) -> None:
        if isinstance(source, HttpSource):
            source.settings = dataclasses.replace(source.settings, poll_interval_s=seconds)

    def report(heartbeat_s: int, upload_s: int, batch: int) -> None:
        if reporter is not None:
            reporter.set_intervals(heartbeat_s, upload_s, batch)

    def outbox_limits(max_records: int, journal_days: int) -> None:
        outbox.max_records, outbox.journal_days = max_records, journal_days

    def display(fps: int, crossfade_ms: int, splash_title: str) -> None:
        def change() -> None:
            renderer.settings = dataclasses.replace(renderer.settings, fps=fps, crossfade_ms=crossfade_ms,
                                                    splash_title=splash_title)
            renderer.invalidate()
        loop.post(change)

    def power_commands(on: str | None, off: str | None) -> None:
        power.set_commands(resolve_command(on, CEC_ON), resolve_command(off, CEC_OFF))

    def restart_for(keys: set[str]) -> None:
        request_restart_in_place(lifecycle, inbox)

    def log_level(level: str) -> None:
        if not lifecycle.log_level_pinned:
            logging.getLogger().setLevel(level)

    def downloads(windows: tuple[tuple[str, str], ...], small_mb: float) -> None:
        if isinstance(source, HttpSource):
            rules = DownloadRules.from_config(windows, small_mb)
            if rules != source.downloads:
                source.downloads = rules
                source.request_sync()  # a file that waited may come now (or one running must pause)

    return LiveTargets(poll_interval, report, outbox_limits, display, power_commands,
                       lambda new: mqtt.replace(mqtt_settings(new)), restart_for, log_level, downloads)


def put_in_force(lifecycle: Lifecycle, targets: LiveTargets, new: Config, changed: set[str]) -> bool:
    """Put a changed config in force; False when the board restarts in place to take it."""
    if apply_edit(targets, new, changed):
        lifecycle.config = new
        return True
    return False


def settings_problems(problems: Problems, found: tuple[str, ...]) -> None:
    if found:
        problems.report("settings", found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    else:
        problems.resolve("settings")


def config_refused(problems: Problems, found: list[str]) -> None:
    problems.report("config", f"config edit refused, running config kept ({len(found)} problem(s)): {found[0]}")


def request_stop(lifecycle: Lifecycle, inbox: Inbox) -> None:
    lifecycle.stop.set()
    inbox.wake()


def request_restart_in_place(lifecycle: Lifecycle, inbox: Inbox) -> None:
    lifecycle.exec_restart = True
    request_stop(lifecycle, inbox)


def request_restart(lifecycle: Lifecycle, inbox: Inbox) -> None:
    lifecycle.restart_requested = True
    request_stop(lifecycle, inbox)


def request_update_restart(lifecycle: Lifecycle, inbox: Inbox) -> None:
    lifecycle.update_restart = True
    request_stop(lifecycle, inbox)


def install_signals(lifecycle: Lifecycle, inbox: Inbox) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, lambda *_: request_stop(lifecycle, inbox))
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


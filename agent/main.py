"""The composition root: builds every part, wires them, runs the display loop, stops cleanly.

Threads: "MainThread" owns pygame and the player; "file-source" watches the content folder;
"control-socket" answers technicians; "slide-prep" decodes images ahead of their turn. They talk
to the display thread through one queue of work items, which also wakes it at once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pygame

from agent import __version__, hardware, schedule
from agent.cache.store import MediaStore
from agent.clock import Clock
from agent.commands import CommandLog, RemoteCommands
from agent.config import Config
from agent.content import Content
from agent.control import Actions, Dispatcher
from agent.ctlsocket import ControlServer
from agent.display import kms
from agent.display.renderer import DisplaySettings, Renderer
from agent.files import atomic_write
from agent.health import Problems
from agent.liveconfig import HOT_KEYS, ConfigWatcher
from agent.manifest import DEFAULT_TIMEZONE, load_trusted_keys
from agent.models import Alert, ScreenMode
from agent.outbox import RECORDS_FILE, Outbox
from agent.player import Player
from agent.power import CEC_OFF, CEC_ON, ScreenPower, resolve_command
from agent.sync.client import HttpClient
from agent.sync.filesource import FileSource
from agent.sync.http import HttpSettings, HttpSource
from agent.sync.mqtt import MqttLink, MqttSettings, broker_urls
from agent.sync.reporter import Reporter
from agent.systemd import Notifier

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0
ALERTS_FILE = "alerts.json"
HEARTBEAT_FIELDS = ("device", "sent_at", "agent_version", "uptime_s", "manifest_serial", "current_item", "screen_on",
                    "alert_active", "cache", "disk_free_bytes", "outbox_pending", "last_sync_ok_at", "clock_offset_s",
                    "errors")
MAX_IDLE_WAIT_S = 0.5  # window events (close button) and the 1 s emergency rule need a pulse


@dataclass
class _Work:
    run: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class Agent:
    """One running board."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_mono = time.monotonic()
        storage = Path(config.storage.dir)
        self.storage = storage
        self.stop = threading.Event()
        self.restart_requested = False
        self.problems = Problems()
        self.clock = Clock()
        self.store = MediaStore(storage / "media")
        self.keys = load_trusted_keys(config.security.manifest_keys)  # for manifests and commands alike
        self.content = Content(
            storage, self.store, self.problems,
            keys=self.keys,
            device_id=config.device.id, groups=config.device.groups,
        )
        self.outbox = Outbox(storage / RECORDS_FILE, on_error=self._outbox_problem,
                             max_records=config.report.outbox_max_records, journal_days=config.report.journal_days)
        self.player = Player(self.content, self.outbox, self.problems)
        self.renderer = Renderer(
            DisplaySettings(
                width=config.display.width, height=config.display.height, fullscreen=config.display.fullscreen,
                fps=config.display.fps, crossfade_ms=config.display.crossfade_ms,
                splash_title=config.display.splash_title, device_id=config.device.id,
            ),
            self.store,
        )
        self._inbox: queue.Queue[_Work | None] = queue.Queue()
        self.client: HttpClient | None = None
        self.reporter: Reporter | None = None
        self.source = self._make_source()
        self.dispatcher = Dispatcher(Actions(
            post=self.post,
            status=self.status,
            add_alert=self._add_alert,
            clear_alerts=self._clear_alerts,
            set_screen_mode=self._set_screen_mode,  # type: ignore[arg-type]
            screenshot_png=self.renderer.screenshot_png,
            sync=self.request_sync,
            restart=self.request_restart,
            now=self.clock.now,
        ))
        self.control = ControlServer(Path(config.control.socket), self.dispatcher.handle, self.stop)
        self.command_log = CommandLog(storage / "commands.sqlite")
        self._mqtt_stop = threading.Event()  # its own, so a config edit can replace the link alone
        self.mqtt = self._make_mqtt()
        self.notifier = Notifier()
        self.power = ScreenPower(resolve_command(config.display.power_on_command, CEC_ON),
                                 resolve_command(config.display.power_off_command, CEC_OFF), self.stop)
        self.config_watcher = ConfigWatcher(Path(config.path), lambda: self.config, self._config_edited,
                                            self._config_refused, self.stop) if config.path else None
        self.exec_restart = False  # a config edit that needs a fresh process: main.run() re-executes
        self._started: list[Any] = []  # threads to join at the end, in reverse order
        self._status_line_due = 0.0  # systemd's STATUS= is refreshed once a second, not per ticker frame

    def _make_mqtt(self) -> MqttLink | None:
        config = self.config
        urls = broker_urls(config.mqtt.url)
        if not urls:
            return None
        commands = RemoteCommands(self.dispatcher, self.command_log, self.keys, self.clock.now,
                                  self._upload_screenshot if self.client is not None else None,
                                  on_dropped=lambda count, why: self.problems.report(
                                      "commands", f"{count} command(s) dropped; last: {why}"))
        settings = MqttSettings(urls=urls, device_id=config.device.id, groups=config.device.groups, token=config.token(),
                                topic_prefix=config.mqtt.topic_prefix, keepalive_s=config.mqtt.keepalive_s,
                                ca_file=config.mqtt.ca_file)
        link = MqttLink(settings, commands.handle, self.heartbeat, self._mqtt_stop,
                        refresh_s=None if self.reporter is not None else config.report.heartbeat_interval_s)
        if self.reporter is not None:
            self.reporter.deliver_elsewhere = link.publish_status
        return link

    def _upload_screenshot(self, png: bytes, command_id: str) -> int:
        """POST a PNG to the source (§2) for the `screenshot` command; returns its size."""
        assert self.client is not None
        url = f"{self.config.source.url.rstrip('/')}/devices/{self.config.device.id}/screenshots"
        response = self.client.post(url, png, "image/png", 60, headers={"X-Command-Id": command_id})
        if not 200 <= response.status_code < 300:
            raise self.client.http_error(response, "screenshot")
        return len(png)

    # --- alerts survive a restart until they expire ------------------------------------------------

    def _add_alert(self, alert: Alert) -> None:
        self.player.add_alert(alert)
        self._save_alerts()
        self._presence_changed()

    def _clear_alerts(self, alert_id: str | None) -> int:
        cleared = self.player.clear_alerts(alert_id, self.clock.now(), time.monotonic())
        self._save_alerts()
        self._presence_changed()
        return cleared

    def _set_screen_mode(self, mode: ScreenMode) -> None:
        self.player.set_screen_mode(mode)
        self._presence_changed()

    def _presence_changed(self) -> None:
        if self.mqtt is not None:
            self.mqtt.request_presence()

    def _save_alerts(self) -> None:
        alerts = [{"id": a.id, "title": a.title, "body": a.body, "until": a.until.isoformat()}
                  for a in self.player.active_alerts()]
        try:
            atomic_write(self.storage / ALERTS_FILE, json.dumps(alerts, ensure_ascii=False).encode())
        except OSError as exc:
            self.problems.report("alerts", f"active alerts not saved ({exc.strerror}): they end with a restart")

    def _restore_alerts(self) -> None:
        try:
            saved = json.loads((self.storage / ALERTS_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.problems.report("alerts", f"{ALERTS_FILE} unreadable ({exc}); no alert restored")
            return
        now = self.clock.now()
        for entry in saved if isinstance(saved, list) else []:
            try:
                alert = Alert(str(entry["id"]), str(entry["title"]), str(entry["body"]),
                              dt.datetime.fromisoformat(entry["until"]))
            except (KeyError, TypeError, ValueError):
                continue
            if alert.until > now:
                self.player.add_alert(alert)

    def _make_source(self) -> FileSource | HttpSource:
        config = self.config
        url = urlsplit(config.source.url)
        if url.scheme == "file":
            return FileSource(Path(unquote(url.path)), self.content, self.store, self.problems, self.stop,
                              self.content_changed)
        settings = HttpSettings(
            base_url=config.source.url, device_id=config.device.id, token=config.token(), ca_file=config.source.ca_file,
            poll_interval_s=config.source.poll_interval_s, cache_limit_bytes=config.storage.cache_max_mb * 1024 * 1024,
            user_agent=f"bangtin-agent/{__version__}",
        )
        self.client = HttpClient(settings.client_settings(), self.clock.set_offset)
        self.reporter = Reporter(
            self.client, device_url=f"{config.source.url.rstrip('/')}/devices/{config.device.id}",
            device_id=config.device.id, outbox=self.outbox, heartbeat=self.heartbeat, problems=self.problems,
            stop=self.stop, heartbeat_interval_s=config.report.heartbeat_interval_s,
            upload_interval_s=config.report.upload_interval_s, batch_size=config.report.batch_size, today=self.today,
        )
        return HttpSource(
            settings, self.content, self.store, self.problems, self.stop, self.content_changed,
            set_clock_offset=self.clock.set_offset,
            media_order=lambda manifest: schedule.media_in_order_of_need(manifest, self.clock.now(),
                                                                         self.player.current_item_id),
            client=self.client,
        )

    def _outbox_problem(self, message: str | None) -> None:
        if message is None:
            self.problems.resolve("outbox")
        else:
            self.problems.report("outbox", message)

    # --- cross-thread entry points ---------------------------------------------------------------

    def post(self, work: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run `work` on the display thread at its next turn (at once: the put wakes it)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put(_Work(work, future))
        return future

    def wake(self) -> None:
        self._inbox.put(None)

    def content_changed(self) -> None:
        """A source made new content current or verified media: redraw, and tell the province."""
        self.wake()
        if self.mqtt is not None:
            self.mqtt.request_presence()

    def request_sync(self) -> None:
        self.source.request_sync()

    def request_restart(self) -> None:
        self.restart_requested = True
        self.request_stop()

    def request_stop(self) -> None:
        self.stop.set()
        self._mqtt_stop.set()
        self.wake()

    def today(self) -> str:
        """The local date (manifest's zone) for journal pruning."""
        manifest = self.content.current()
        zone = schedule.zone(manifest.timezone if manifest else DEFAULT_TIMEZONE)
        return self.clock.now().astimezone(zone).date().isoformat()

    def heartbeat(self) -> dict[str, Any]:
        """The §6 heartbeat: required fields, what the hardware tells, nothing else (it is paid per byte)."""
        status = self.post(self.status).result(timeout=10)
        beat = {key: status[key] for key in HEARTBEAT_FIELDS}
        beat.update(hardware.readings())
        summarised = self.outbox.summarised()
        if summarised:
            beat["outbox_summarised"] = summarised  # records folded into daily summaries by the cap
        return beat

    # --- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Heartbeat fields (§6) available at this stage, plus local details. Display thread."""
        snapshot = self.content.snapshot()
        manifest = snapshot.manifest
        wanted = {m.sha256: m.size for m in manifest.media} if manifest else {}
        missing = [sha for sha in wanted if sha not in snapshot.verified_sha256]
        cache_bytes = self.store.bytes_used()
        first = self.renderer.first_frame_mono
        return {
            "device": self.config.device.id,
            "sent_at": self.clock.now().isoformat(timespec="seconds"),
            "agent_version": __version__,
            "uptime_s": round(time.monotonic() - self.started_mono),
            "manifest_serial": manifest.serial if manifest else None,
            **self.player.status(),
            "cache": {"bytes_used": cache_bytes, "bytes_limit": self.config.storage.cache_max_mb * 1024 * 1024,
                      "media_missing": len(missing)},
            "disk_free_bytes": shutil.disk_usage(self.storage).free,
            "outbox_pending": self.outbox.pending(),
            "last_sync_ok_at": _iso(self.source.last_sync_ok_at),
            "sync": self.source.status(),
            "report": self.reporter.status() if self.reporter is not None else None,
            "mqtt": self.mqtt.status() if self.mqtt is not None else None,
            "clock_offset_s": round(self.clock.offset_s, 3),
            "errors": self.problems.current(),
            "source": self.config.source.url,
            "alerts": [{"id": a.id, "title": a.title, "until": a.until.isoformat()} for a in self.player.active_alerts()],
            "display": {
                "driver": pygame.display.get_driver() if pygame.display.get_init() else None,
                "render_driver": kms.render_driver(),
                "size": list(self.renderer.size),
                "frames": self.renderer.frames,
                "first_frame_s": round(first - self.started_mono, 3) if first is not None else None,
                "frame_ms": self.renderer.frame_cost_summary(),
                "scene_shown_mono": self.renderer.scene_shown_mono,  # CLOCK_MONOTONIC, for latency benchmarks
                "video": self.renderer.video_stats(),
            },
        }

    # --- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Play until SIGTERM/SIGINT or a window close; 0 after a clean stop."""
        self.storage.mkdir(parents=True, exist_ok=True)
        self.store.open()
        self.outbox.open()
        self.command_log.open()
        self.control.open()
        previous_handlers = self._install_signals()
        started: list[Any] = self._started
        try:
            try:
                self.renderer.open()
            except pygame.error as exc:
                driver = os.environ.get("SDL_VIDEODRIVER", "SDL's default")
                log.error("cannot open the display with %s driver: %s (on a board console set SDL_VIDEODRIVER=kmsdrm "
                          "and give the user the video and render groups)", driver, exc)
                return 1
            # A first frame before anything slow: the splash, never a dark screen.
            self._step()
            if (problem := kms.presenting_problem()) is not None:  # issue #16.1: a renderer that draws nothing
                self.problems.report("display", problem)
            self.notifier.ready("splash on screen, loading content")
            self.content.restore()
            self._restore_alerts()
            if not self.config.security.manifest_keys:
                log.warning("no security.manifest_keys configured: unsigned manifests are accepted (development only)")
            self.control.start()
            started.append(self.control)
            self.source.start()
            started.append(self.source)
            if self.reporter is not None:
                self.reporter.start()
                started.append(self.reporter)
            if self.mqtt is not None:
                self.mqtt.start()
                started.append(self.mqtt)
            self.power.start()
            started.append(self.power)
            if self.config_watcher is not None:
                self.config_watcher.start()
                started.append(self.config_watcher)
            self._loop()
        finally:
            if not self.exec_restart:  # a restart in place keeps the unit active; the new image sends READY=1 (#16.2)
                self.notifier.stopping()
            self.player.shutdown(self.clock.now(), time.monotonic())
            self.stop.set()
            self._mqtt_stop.set()
            for part in reversed(started):
                part.join(JOIN_TIMEOUT_S)
                if part.is_alive() and getattr(part, "blocked_in_network_io", lambda: False)():
                    log.info("%s is still waiting on the network; it ends with the process", type(part).__name__)
                elif part.is_alive():
                    log.error("bug: thread of %s still alive at exit", type(part).__name__)
            self._fail_pending_work()
            self.renderer.close()
            self.outbox.close()
            self.command_log.close()
            if self.client is not None and not any(p.is_alive() for p in started):
                self.client.close()
            self._restore_signals(previous_handlers)
        log.info("stopped cleanly%s", " (restart requested)" if self.restart_requested else "")
        return 0

    def _loop(self) -> None:
        while not self.stop.is_set():
            deadline = self._step()
            timeout = max(0.0, min(deadline - time.monotonic(), MAX_IDLE_WAIT_S))
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                continue
            self._run_work(item)
            while True:  # drain what else arrived, then draw once
                try:
                    self._run_work(self._inbox.get_nowait())
                except queue.Empty:
                    break

    def _run_work(self, item: _Work | None) -> None:
        if item is None:
            return
        try:
            item.future.set_result(item.run())
        except Exception as exc:  # noqa: BLE001 — the caller gets the error; the board plays on
            item.future.set_exception(exc)

    def _step(self) -> float:
        """Decide and draw once; returns the monotonic time of the next change."""
        for event in pygame.event.get():
            if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE
                                             and not self.config.display.fullscreen):
                self.request_stop()
        for _ in range(8):  # items that fail to load are skipped at once, a few per step at most
            now, mono = self.clock.now(), time.monotonic()
            scene = self.player.update(now, mono)
            frame = self.renderer.render(scene, now, mono)
            if frame.notice is not None and scene.item is not None:
                self.problems.report(f"video:{scene.item.id}", f"video {scene.item.id} {frame.notice}")
            if frame.finished_showing is not None:
                self.player.finished(frame.finished_showing, now, mono)
                continue
            if frame.failed_showing is None:
                break
            self.player.item_failed(frame.failed_showing, frame.failure, now, mono)
        # Only a loop that gets here pings systemd: a frozen renderer gets the board restarted.
        self.notifier.watchdog()
        lit = self.player.screen_on
        self.power.set(lit)
        mono = time.monotonic()
        if mono >= self._status_line_due:
            self._status_line_due = mono + 1.0
            self.notifier.status(self._one_line_state(lit))
        ends = self.player.ends_at()
        return min(frame.next_change, ends if ends is not None else frame.next_change)

    def _one_line_state(self, lit: bool) -> str:
        manifest = self.content.current()
        item = self.player.current_item_id
        problems = len(self.problems.current())
        return (f"serial {manifest.serial if manifest else '-'}, "
                f"{'ALERT' if self.player.alert_active else (item or 'splash') if lit else 'screen off'}, "
                f"{problems} problem(s)")

    # --- live config ---------------------------------------------------------------------------

    def _config_refused(self, problems: list[str]) -> None:
        self.problems.report("config", f"config edit refused, running config kept ({len(problems)} problem(s)): "
                                       f"{problems[0]}")

    def _config_edited(self, new: Config, changed: set[str]) -> None:
        """From the config thread: applied on the display thread, which owns what changes."""
        self.post(lambda: self.apply_config(new, changed))

    def apply_config(self, new: Config, changed: set[str]) -> None:
        self.problems.resolve("config")
        cold = changed - HOT_KEYS
        if cold:
            log.warning("config change to %s needs a fresh start: restarting cleanly", ", ".join(sorted(cold)))
            self.exec_restart = True
            self.request_stop()
            return
        self.config = new
        if isinstance(self.source, HttpSource):
            self.source.settings = dataclasses.replace(self.source.settings, poll_interval_s=new.source.poll_interval_s)
        if self.reporter is not None:
            self.reporter.set_intervals(new.report.heartbeat_interval_s, new.report.upload_interval_s,
                                        new.report.batch_size)
        self.outbox.max_records, self.outbox.journal_days = new.report.outbox_max_records, new.report.journal_days
        self.renderer.settings = dataclasses.replace(self.renderer.settings, fps=new.display.fps,
                                                     crossfade_ms=new.display.crossfade_ms,
                                                     splash_title=new.display.splash_title)
        self.renderer.invalidate()
        self.power.set_commands(resolve_command(new.display.power_on_command, CEC_ON),
                                resolve_command(new.display.power_off_command, CEC_OFF))
        if any(key.startswith("mqtt.") for key in changed):
            self._replace_mqtt()
        log.info("config applied without a restart")

    def _replace_mqtt(self) -> None:
        old = self.mqtt
        if old is not None:
            self._mqtt_stop.set()
            old.join(JOIN_TIMEOUT_S)
            self._started.remove(old)
        self._mqtt_stop = threading.Event()
        self.mqtt = self._make_mqtt()
        if self.mqtt is not None:
            self.mqtt.start()
            self._started.append(self.mqtt)
        elif self.reporter is not None:
            self.reporter.deliver_elsewhere = lambda beat: False

    def _fail_pending_work(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.future.set_exception(RuntimeError("the agent is stopping"))

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: self.request_stop())
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _iso(unix_time: float | None) -> str | None:
    if unix_time is None:
        return None
    return dt.datetime.fromtimestamp(unix_time, dt.UTC).isoformat(timespec="seconds")


def run(config: Config) -> int:
    """Build the agent from a validated config and play until stopped."""
    log.info("bangtin-agent %s starting as %s (pid %d)", __version__, config.device.id, os.getpid())
    agent = Agent(config)
    code = agent.run()
    if agent.exec_restart and code == 0:
        # Same PID (systemd keeps tracking it), fresh process with the new config.
        os.execv(sys.executable, [sys.executable, "-m", "agent", *sys.argv[1:]])
    return code

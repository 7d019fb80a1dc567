"""The composition root: builds every part, wires them, runs the display loop, stops cleanly.

Read `build` top to bottom: each part is made from parts made above it, and the whole is a frozen
`Board`. The back-references (status, which reads almost everything, is needed by the command
dispatcher built before it; a manifest change reaches MQTT presence, the updater and the remote
settings, built after the sources that report it) are lambdas over names bound later in `build`,
each marked, and none runs before `run_board` starts the services. The callbacks the parts hand
each other are agent/wiring.py.

Threads (docs/design.md has the full table): MainThread owns pygame, the player and the screen;
"disk-writer" commits records and small files; "http-source" or "file-source" fetches content;
"reporter" posts heartbeats and records; "mqtt" carries commands; "control-socket" answers `ctl`;
"config" applies edits; "screen-power" runs CEC; "slide-prep" and "video-decode" prepare pictures.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pygame

from agent import __version__, hardware, i18n, schedule, wiring
from agent.alerts import ALERTS_FILE, AlertStore
from agent.cache.store import MediaStore
from agent.clock import Clock
from agent.commands import CommandLog, RemoteCommands
from agent.config import Config, config_warnings
from agent.configchecks import storage_dir_problem
from agent.content import Content
from agent.control import Actions, Dispatcher
from agent.ctlsocket import ControlServer
from agent.display import kms
from agent.display.pyav import PyAVBackend
from agent.display.renderer import DisplaySettings, Renderer
from agent.downloads import DownloadRules, Windows
from agent.enrolment import EnrolmentScreen, NoSource
from agent.envelope import load_trusted_keys
from agent.events import RunEvents, manifest_changed, stop_reason
from agent.health import Problems
from agent.identity import Identity, IdentityError, machine_id
from agent.identity import load_or_create as load_identity
from agent.liveconfig import ConfigWatcher, changed_keys
from agent.logring import LogRing
from agent.loop import DisplayLoop, Inbox
from agent.meter import METER_FILE, DataMeter
from agent.outbox import RECORDS_FILE, Outbox
from agent.player import Player
from agent.power import CEC_OFF, CEC_ON, ScreenPower, resolve_command
from agent.provision import DROP_FOLDER, NOTICE_S, Provisioner
from agent.screenhealth import ScreenHealth
from agent.service import Services
from agent.settings import ConfigInForce
from agent.startguard import StartGuard
from agent.status import StatusBuilder, StatusParts
from agent.sync.client import ClientSettings, HttpClient
from agent.sync.filesource import FileSource
from agent.sync.http import HttpSettings, HttpSource
from agent.sync.mqtt import MqttLink, MqttSettings, MqttSlot
from agent.sync.reporter import Reporter
from agent.systemd import Notifier
from agent.update import Updater, base_python, update_paths
from agent.withdrawn import WITHDRAWN_FILE, WithdrawnStore
from agent.writer import DiskWriter

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
EXIT_RESTART = 75  # to the launcher: start again (a new release is in place)


@dataclass(frozen=True)
class Board:
    config: Config
    lifecycle: wiring.Lifecycle
    problems: Problems
    clock: Clock
    notifier: Notifier
    store: MediaStore
    content: Content
    outbox: Outbox
    writer: DiskWriter
    guard: StartGuard
    alerts: AlertStore
    withdrawn: WithdrawnStore
    command_log: CommandLog
    player: Player
    renderer: Renderer
    loop: DisplayLoop
    client: HttpClient | None
    source: FileSource | HttpSource | NoSource
    reporter: Reporter | None
    mqtt: MqttSlot
    power: ScreenPower
    control: ControlServer
    config_watcher: ConfigWatcher | None
    updater: Updater
    enrolment: EnrolmentScreen
    provisioner: Provisioner | None
    in_force: ConfigInForce
    status: StatusBuilder
    meter: DataMeter


def build(config: Config, identity: Identity | IdentityError | None = None, logs: LogRing | None = None,
          log_level_pinned: bool = False) -> Board:
    """Every part, in dependency order. Nothing starts here; `run_board` starts them. `identity` is
    the board's key (PROTOCOL.md §12), or why it cannot be used (reported; POSTs go unsigned);
    `logs` the ring of recent log lines the `logs` command reads."""
    storage = Path(config.storage.dir)
    started = time.monotonic()
    lifecycle = wiring.Lifecycle(config, threading.Event(), log_level_pinned=log_level_pinned)
    ring = logs or LogRing()
    stop = lifecycle.stop
    rng = random.Random()
    problems = Problems()
    if isinstance(identity, IdentityError):
        problems.report("identity", f"board identity: {identity}")
    elif isinstance(identity, Identity) and identity.replaced:
        problems.report("identity", f"board identity: {identity.replaced}")
    board_key = identity if isinstance(identity, Identity) else None
    clock = Clock(report=lambda problem: problems.report("clock", problem) if problem else problems.resolve("clock"))
    notifier = Notifier()
    keys = load_trusted_keys(config.security.manifest_keys)  # for manifests and commands alike
    cache_limit = config.storage.cache_max_mb * 1024 * 1024

    store = MediaStore(storage / "media")
    outbox = Outbox(storage / RECORDS_FILE, on_error=wiring.problem_setter(problems, "outbox"),
                    max_records=config.report.outbox_max_records, journal_days=config.report.journal_days)
    writer = DiskWriter(outbox, on_file_error=lambda path, exc: wiring.file_problem(problems, path, exc))
    content = Content(storage, store, problems, keys=keys, device_id=config.device.id, groups=config.device.groups,
                      on_commit=lambda manifest, previous: writer.add([manifest_changed(clock.now(), manifest, previous)]))
    guard = StartGuard(storage / "starts.json")
    meter = DataMeter(storage / METER_FILE, lambda: wiring.today(content, clock), writer.write_file)
    alerts = AlertStore(storage / ALERTS_FILE, writer.write_file)
    withdrawn = WithdrawnStore(storage / WITHDRAWN_FILE, writer.write_file)
    command_log = CommandLog(storage / "commands.sqlite")
    player = Player(content, writer, problems)

    inbox = Inbox()
    renderer = Renderer(
        DisplaySettings(width=config.display.width, height=config.display.height, fullscreen=config.display.fullscreen,
                        fps=config.display.fps, crossfade_ms=config.display.crossfade_ms,
                        splash_title=config.display.splash_title, device_id=config.device.id,
                        language=i18n.language()),  # the splash's footer follows the board's locale
        store, PyAVBackend(), wake=inbox.wake)
    power = ScreenPower(resolve_command(config.display.power_on_command, CEC_ON),
                        resolve_command(config.display.power_off_command, CEC_OFF), stop)
    loop = DisplayLoop(
        inbox, renderer, player, problems, notifier, now=clock.now, screen_lit=power.set,
        shown=lambda scene: wiring.mark_shown(store, scene),
        healthy=lambda: writer.call(guard.ended_well),
        showing=lambda: notifier.send("BANGTIN_SHOWING=1"),  # the launcher's trial of a new release counts from here
        one_line_state=lambda state: wiring.one_line_state(content, problems, state),
        quit_on_escape=not config.display.fullscreen, request_stop=lambda: wiring.request_stop(lifecycle, inbox),
    )

    def on_change() -> None:
        inbox.wake()
        mqtt.request_presence()  # `mqtt`, `updater`, `in_force` are bound below, before any source thread starts
        manifest = content.current()
        updater.offer(manifest.release if manifest is not None else None)
        in_force.settings_changed(manifest.settings if manifest is not None else None)

    def prepare() -> bool:
        return wiring.verify_cache(content, clock, loop, lifecycle.set_aside)

    def on_screen() -> set[str]:
        return wiring.media_on_screen(content, player)

    client: HttpClient | None = None
    reporter: Reporter | None = None
    url = urlsplit(config.source.url)
    source: FileSource | HttpSource | NoSource
    if not config.enrolled:
        source = NoSource(config.missing_for_enrolment())  # the enrolment screen waits for a bundle
    elif url.scheme == "file":
        source = FileSource(Path(unquote(url.path)), content, store, problems, stop, on_change,
                            cache_limit_bytes=cache_limit, on_screen=on_screen, prepare=prepare)
    else:
        settings = HttpSettings(base_url=config.source.url, device_id=config.device.id, token=config.token(),
                                ca_file=config.source.ca_file, poll_interval_s=config.source.poll_interval_s,
                                cache_limit_bytes=cache_limit, user_agent=f"bangtin-agent/{__version__}")
        client = HttpClient(ClientSettings(settings.base_url, settings.token, settings.ca_file, settings.user_agent),
                            clock.set_offset, signer=board_key.signature_header if board_key is not None else None,
                            count=meter.add)
        source = HttpSource(settings, content, store, problems, stop, on_change,
                            media_order=lambda manifest: schedule.media_in_order_of_need(
                                manifest, clock.now(), player.current_item_id),
                            client=client, rng=rng, on_screen=on_screen, prepare=prepare, now=clock.now,
                            downloads=DownloadRules.from_config(config.downloads.windows, config.downloads.small_mb),
                            on_polled=lambda: reporter.source_polled() if reporter is not None else None)

    dispatcher = Dispatcher(Actions(
        on_display=loop.post,
        status=lambda: status.status().to_json(),  # `status` is bound at the end of build
        add_alert=lambda alert: wiring.add_alert(player, alerts, alert, mqtt),
        clear_alerts=lambda alert_id: wiring.clear_alerts(player, alerts, clock, alert_id, mqtt),
        set_screen_mode=lambda mode: wiring.set_screen_mode(player, mode, mqtt),  # type: ignore[arg-type]
        screenshot_png=lambda: wiring.png(loop.post(loop.screenshot).result(timeout=10)),
        sync=source.request_sync,
        restart=lambda: wiring.request_restart(lifecycle, inbox),
        now=clock.now,
        withdraw=lambda ids: wiring.withdraw(player, withdrawn, clock, ids, mqtt),
        recent_logs=ring.recent,
    ))
    upload = wiring.uploader(client, config) if client is not None else None
    commands = RemoteCommands(dispatcher, command_log, keys, clock.now, upload,
                              on_dropped=lambda count, why: problems.report("commands", f"{count} command(s) dropped; "
                                                                                        f"last: {why}"),
                              device_id=config.device.id, groups=config.device.groups)

    def make_link(mqtt_settings: MqttSettings, link_stop: threading.Event) -> MqttLink:
        # Presence updates are not the periodic heartbeat (unless no HTTP reporter sends one).
        return MqttLink(mqtt_settings, commands.handle,
                        lambda: status.heartbeat(count_frames=client is None).to_json(), link_stop, rng,
                        refresh_s=None if client is not None else config.report.heartbeat_interval_s,
                        on_refused=commands.drop, count=meter.add)

    mqtt = MqttSlot(make_link, wiring.mqtt_settings(config), stop)
    updater = Updater(
        update_paths(), load_trusted_keys(config.security.release_keys), device_id=config.device.id,
        groups=config.device.groups, manifest_url=source.settings.manifest_url if isinstance(source, HttpSource) else "",
        downloader=source.downloader if isinstance(source, HttpSource) else None, stop=stop,
        health_s=lambda: lifecycle.config.update.health_s,
        may_download=lambda: not loop.state.emergency and not (isinstance(source, HttpSource) and source.busy()),
        windows=Windows(lambda: source.downloads, clock.now, lambda: wiring.zone(content))
        if isinstance(source, HttpSource) else None,
        restart=lambda: wiring.request_update_restart(lifecycle, inbox), python=base_python(),
        report=lambda problem: problems.report("update", problem) if problem else problems.resolve("update"))
    if client is not None:
        reporter = Reporter(
            client, device_url=f"{config.source.url.rstrip('/')}/devices/{config.device.id}",
            device_id=config.device.id, outbox=outbox, heartbeat=lambda: status.heartbeat().to_json(),
            problems=problems, stop=stop, heartbeat_interval_s=config.report.heartbeat_interval_s,
            upload_interval_s=config.report.upload_interval_s, batch_size=config.report.batch_size,
            today=lambda: wiring.today(content, clock), deliver_elsewhere=mqtt.publish_status, rng=rng,
            board_key=board_key.public_b64 if board_key is not None else None,
            poll_in=source.next_poll_in if isinstance(source, HttpSource) else lambda: None)
    control = ControlServer(Path(config.control.socket), dispatcher.handle, stop)
    screen_health = ScreenHealth(lambda: renderer.frames, problems)
    provision_keys = load_trusted_keys(config.security.provision_keys)
    enrolment = EnrolmentScreen(loop.post, renderer.set_enrolment, renderer.set_notice, problems,
                                None if config.enrolled else wiring.enrolment_card(config, board_key, bool(provision_keys)),
                                NOTICE_S)
    provisioner = Provisioner(
        Path(config.path), storage / DROP_FOLDER, provision_keys, board_key.public_b64 if board_key else None, stop,
        applied_restart=lambda bundle: wiring.request_restart_in_place(lifecycle, inbox), refused=enrolment.refused,
        now=clock.now, every_scan=enrolment.refresh, current=config) if config.path else None
    status = StatusBuilder(StatusParts(
        device_id=config.device.id, source_url=config.source.url, storage_dir=storage, cache_limit_bytes=cache_limit,
        started_mono=started, now=clock.now, clock_offset=lambda: clock.offset_s,
        screen=lambda: loop.state, manifest_and_verified=lambda: wiring.manifest_and_verified(content),
        cache_bytes=store.bytes_used, records_pending=lambda: outbox.pending() + writer.pending_records(),
        records_summarised=outbox.summarised, errors=problems.current, source=source, reporter=reporter,
        mqtt=mqtt if mqtt.enabled else None, display=lambda: wiring.display_status(renderer, started),
        storage=writer.health, readings=hardware.readings, update=updater.health,
        identity=wiring.identity_status(identity), provision=provisioner, settings=lambda: in_force.sources(),
        screen_health=lambda since_last: screen_health.read(since_last=since_last), meter=meter,
    ))
    targets = wiring.live_targets(lifecycle, inbox, source, reporter, outbox, loop, renderer, power, mqtt)
    in_force = ConfigInForce(config, lambda new, changed: wiring.put_in_force(lifecycle, targets, new, changed),
                             lambda found: wiring.settings_problems(problems, found), changed_keys)
    config_watcher = ConfigWatcher(
        Path(config.path), lambda: in_force.file_config, lambda new, changed: in_force.file_edited(new),
        lambda found: wiring.config_refused(problems, found), stop) if config.path else None
    return Board(config, lifecycle, problems, clock, notifier, store, content, outbox, writer, guard, alerts,
                 withdrawn, command_log, player, renderer, loop, client, source, reporter, mqtt, power, control,
                 config_watcher, updater, enrolment, provisioner, in_force, status, meter)


# --- the run ----------------------------------------------------------------------------------


def run_board(board: Board) -> int:
    """Play until SIGTERM/SIGINT, a window close or a restart; 0 after a clean stop."""
    config, lifecycle = board.config, board.lifecycle
    storage = Path(config.storage.dir)
    storage.mkdir(mode=0o750, parents=True, exist_ok=True)
    board.store.open()
    board.outbox.open()
    board.command_log.open()
    board.control.open()
    meter_problem = board.meter.load()
    if meter_problem:
        board.problems.report("meter", meter_problem)
    previous_handlers = wiring.install_signals(lifecycle, board.loop.inbox)
    services = Services()
    run_events = RunEvents(storage, board.writer, __version__)  # start and stop in the journal (the yearly report)
    clean = False
    try:
        try:
            board.renderer.open()
        except pygame.error as exc:
            driver = os.environ.get("SDL_VIDEODRIVER", "SDL's default")
            log.error("cannot open the display with %s driver: %s (on a board console set SDL_VIDEODRIVER=kmsdrm "
                      "and give the user the video and render groups)", driver, exc)
            return EXIT_FAIL
        run_events.started(board.clock.now())  # the journal's first row of this run, before the screen's first event
        # A first frame before anything slow: the splash (or the enrolment screen), never a dark screen.
        board.renderer.set_enrolment(board.enrolment.first_card())
        board.loop.safe_step()
        if (problem := kms.presenting_problem()) is not None:  # issue #16.1: a renderer that draws nothing
            board.problems.report("display", problem)
        board.notifier.ready("splash on screen, loading content")
        for warning in config_warnings(config):
            log.warning("%s", warning)
        lifecycle.set_aside = wiring.restore(board.guard, board.content, board.alerts, board.withdrawn, board.player,
                                       board.clock, board.problems)
        run_events.mark_running()
        services.start(board.writer)
        manifest = board.content.current()
        board.updater.offer(manifest.release if manifest is not None else None)
        board.in_force.settings_changed(manifest.settings if manifest is not None else None)
        for part in (board.control, board.source, board.reporter, board.mqtt, board.power, board.config_watcher,
                     board.updater, board.provisioner):
            if part is not None:
                services.start(part)
        board.loop.run(lifecycle.stop)
        clean = True
    finally:
        if not (lifecycle.exec_restart or lifecycle.update_restart):
            board.notifier.stopping()  # a restart in place keeps the unit active: READY comes again
        board.player.shutdown(board.clock.now(), time.monotonic())
        run_events.stopped(board.clock.now(), board.content.current(), clean=clean,
                           reason=stop_reason(clean, lifecycle.restart_requested, lifecycle.exec_restart))
        lifecycle.stop.set()
        if clean:
            board.writer.call(board.guard.ended_well)
        services.stop_all()
        board.meter.save_now()  # after every network thread has ended: their last bytes are in
        board.loop.inbox.fail_pending()
        board.renderer.close()
        board.outbox.close()
        board.command_log.close()
        if board.client is not None and not board.source.is_alive() and not (board.reporter and board.reporter.is_alive()):
            board.client.close()
        wiring.restore_signals(previous_handlers)
    log.info("stopped cleanly%s", " (restart requested)" if lifecycle.restart_requested else
             " (to start a new release)" if lifecycle.update_restart else "")
    return EXIT_RESTART if lifecycle.update_restart else EXIT_OK


def run(config: Config, log_level: str | None = None) -> int:
    """Build the agent from a validated config and play until stopped. `log_level` (from the
    command line) wins over the config's `log_level`."""
    problem = storage_dir_problem(config.storage.dir)
    if problem:
        log.error("storage.dir: %s", problem)
        return EXIT_CONFIG
    log.info("bangtin-agent %s starting as %s (pid %d)", __version__, config.device.id or "a board not enrolled",
             os.getpid())
    identity: Identity | IdentityError
    try:
        identity = load_identity(Path(config.storage.dir), machine_id())
    except IdentityError as exc:
        identity = exc
    except OSError as exc:
        identity = IdentityError(f"cannot read or make {Path(config.storage.dir) / 'identity.key'}: "
                                 f"{exc.strerror or exc}")
    logging.getLogger().setLevel(log_level or config.log_level)
    ring = LogRing()
    try:
        ring.add_secret(config.token())  # also the MQTT password: never in a line the province can ask for
    except (OSError, ValueError):
        pass  # an unreadable token file is reported by the source that needs it
    logging.getLogger().addHandler(ring)
    try:
        board = build(config, identity, ring, log_level_pinned=log_level is not None)
        code = run_board(board)
    finally:
        logging.getLogger().removeHandler(ring)
    if board.lifecycle.exec_restart and code == EXIT_OK:
        # Same PID (systemd keeps tracking it), fresh process with the new config. -P: the
        # current directory never joins the import path (a planted agent/ there cannot run).
        os.execv(sys.executable, [sys.executable, "-P", "-m", "agent", *sys.argv[1:]])
    return code

"""The display loop: the one thread that owns pygame, the player and the screen ("MainThread").

It sleeps until the next visual change or until work arrives in its inbox (a command, a finished
slide, new content), decides with the player, draws with the renderer, pings the systemd watchdog,
and publishes a small `ScreenState` for everyone else to read. It never waits on disk, the network,
a subprocess or another thread's lock: records go to the disk writer, status is assembled by the
caller's thread from what is published here.

A failure the renderer cannot contain (a bug) is logged and reported; if it persists for
`GIVE_UP_AFTER_S` the loop stops pinging the watchdog and ends, so the service manager restarts the
board (and the start guard counts it: PROTOCOL.md §10).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pygame

from agent.display.renderer import Renderer
from agent.health import Problems
from agent.limits import clip
from agent.models import Alert, Scene
from agent.player import Player
from agent.startguard import HEALTHY_AFTER_S

log = logging.getLogger(__name__)

MAX_IDLE_WAIT_S = 0.5  # window events (close button) and the 1 s emergency rule need a pulse
GIVE_UP_AFTER_S = 10.0
PUBLISH_EVERY_S = 1.0


@dataclass
class _Work:
    run: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class Inbox:
    """Work for the display thread; a put wakes it at once (an alert is on screen in the next turn)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Work | None] = queue.Queue()

    def post(self, work: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run `work` on the display thread at its next turn."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Work(work, future))
        return future

    def wake(self) -> None:
        self._queue.put(None)

    def get(self, timeout: float) -> _Work | None:
        return self._queue.get(timeout=timeout)

    def get_nowait(self) -> _Work | None:
        return self._queue.get_nowait()

    def fail_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.future.set_exception(RuntimeError("the agent is stopping"))


@dataclass(frozen=True)
class ScreenState:
    """What the display thread owns, published for status and heartbeats (read from any thread)."""

    manifest_serial: int | None = None
    current_item: str | None = None
    screen_on: bool = True
    screen_mode: str = "auto"
    alert_active: bool = False
    emergency: bool = False  # an alert or an emergency item is on screen
    alerts: tuple[Alert, ...] = ()
    frame_ms: tuple[tuple[str, float], ...] = ()
    video: tuple[tuple[str, Any], ...] | None = None


class Watchdog(Protocol):
    def watchdog(self, now: float | None = None) -> None: ...
    def status(self, status: str) -> None: ...


class DisplayLoop:
    def __init__(
        self,
        inbox: Inbox,
        renderer: Renderer,
        player: Player,
        problems: Problems,
        notifier: Watchdog,
        *,
        now: Callable[[], Any],
        screen_lit: Callable[[bool], None],
        shown: Callable[[Scene], None],
        healthy: Callable[[], None],
        showing: Callable[[], None],
        one_line_state: Callable[[ScreenState], str],
        quit_on_escape: bool,
        request_stop: Callable[[], None],
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inbox = inbox
        self.renderer = renderer
        self.player = player
        self._problems = problems
        self._notifier = notifier
        self._now = now
        self._screen_lit = screen_lit  # the screen-power service: a cheap, non-blocking call
        self._shown = shown  # a new showing began (the cache marks its media as shown)
        self._healthy = healthy  # content shown for HEALTHY_AFTER_S: the start guard is told (off-thread)
        self._showing = showing  # the first scene drawn after start (the launcher's trial counts from it)
        self._one_line_state = one_line_state
        self._quit_on_escape = quit_on_escape
        self._request_stop = request_stop
        self._mono = mono
        self._started = mono()
        self._told_healthy = False
        self._told_showing = False
        self.running = False  # set by run(): the services are up, what is drawn now is the board's content
        self._status_due = 0.0
        self._publish_due = 0.0
        self._last_showing: str | None = None
        self._failing_since: float | None = None
        self._zone_problems: dict[str, str] = {}
        self.state = ScreenState()

    # --- from other threads ----------------------------------------------------------------------

    def post(self, work: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        return self.inbox.post(work)

    def wake(self) -> None:
        self.inbox.wake()

    # --- the display thread ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.running = True
        done: list[tuple[_Work, Any, BaseException | None]] = []
        while not stop.is_set():
            deadline = self.safe_step()
            # Answered only now, after a step drew and published the change: a `status` right after
            # an `alert` sees the alert on screen.
            for work, result, error in done:
                if error is None:
                    work.future.set_result(result)
                else:
                    work.future.set_exception(error)
            done = []
            timeout = max(0.0, min(deadline - self._mono(), MAX_IDLE_WAIT_S))
            try:
                item = self.inbox.get(timeout)
            except queue.Empty:
                continue
            self._run_work(item, done)
            while True:  # drain what else arrived, then draw once
                try:
                    self._run_work(self.inbox.get_nowait(), done)
                except queue.Empty:
                    break
        for work, result, error in done:
            if error is None:
                work.future.set_result(result)
            else:
                work.future.set_exception(error)

    def _run_work(self, item: _Work | None, done: list[tuple[_Work, Any, BaseException | None]]) -> None:
        if item is None:
            return
        try:
            done.append((item, item.run(), None))
        except Exception as exc:  # the caller gets the error; nobody may be waiting, so it is logged too
            log.exception("work posted to the display loop failed")
            done.append((item, None, exc))

    def safe_step(self) -> float:
        """One step; a failure is contained here, and given up on only when it persists."""
        try:
            deadline = self.step()
        except Exception as exc:
            mono = self._mono()
            if self._failing_since is None:
                self._failing_since = mono
                log.exception("display step failed")
            self._problems.report("display", clip(f"the screen cannot be drawn: {type(exc).__name__}: {exc}"))
            if mono - self._failing_since > GIVE_UP_AFTER_S:
                log.error("the screen has failed for %.0f s: ending so the service manager restarts the board",
                          GIVE_UP_AFTER_S)
                raise
            self.renderer.invalidate()
            return mono + 0.1
        if self._failing_since is not None:
            self._failing_since = None
            self._problems.resolve("display")
        return deadline

    def step(self) -> float:
        """Decide and draw once; returns the monotonic time of the next change."""
        for event in pygame.event.get():
            if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE
                                             and self._quit_on_escape):
                self._request_stop()
        frame = None
        for _ in range(8):  # items that fail to load are skipped at once, a few per step at most
            now, mono = self._now(), self._mono()
            scene = self.player.update(now, mono)
            if scene.showing_id is not None and scene.showing_id != self._last_showing:
                self._last_showing = scene.showing_id
                self._shown(scene)
            frame = self.renderer.render(scene, now, mono)
            if not frame.waiting:
                self.player.presented(self.renderer.drawn_showing, now, mono)
                if self.running and not self._told_showing:
                    self._told_showing = True
                    self._showing()
            if frame.notice is not None and scene.item is not None:
                self._problems.report(f"video:{scene.item.id}", f"video {scene.item.id} {frame.notice}")
            if frame.finished_showing is not None:
                self.player.finished(frame.finished_showing, now, mono)
                continue
            if frame.failed_showing is None:
                break
            self.player.item_failed(frame.failed_showing, frame.failure, now, mono)
        assert frame is not None
        self._sync_zone_problems()
        # Only a loop that gets here pings systemd: a frozen renderer gets the board restarted.
        self._notifier.watchdog()
        lit = self.player.screen_on
        self._screen_lit(lit)
        mono = self._mono()
        if not self._told_healthy and mono - self._started >= HEALTHY_AFTER_S and self.renderer.frames > 0:
            self._told_healthy = True
            self._healthy()
        self._publish(mono)
        ends = self.player.ends_at()
        return min(frame.next_change, ends if ends is not None else frame.next_change)

    def _sync_zone_problems(self) -> None:
        current = self.renderer.zone_problems
        if current == self._zone_problems:
            return
        for zone in self._zone_problems.keys() - current.keys():
            self._problems.resolve(f"zone:{zone}")
        for zone, message in current.items():
            self._problems.report(f"zone:{zone}", message)
        self._zone_problems = dict(current)

    def _publish(self, mono: float) -> None:
        player = self.player
        status = player.status()
        changed = (status["current_item"] != self.state.current_item or status["screen_on"] != self.state.screen_on
                   or player.manifest_serial != self.state.manifest_serial
                   or status["screen_mode"] != self.state.screen_mode
                   or status["alert_active"] != self.state.alert_active
                   or status["emergency"] != self.state.emergency
                   or tuple(player.active_alerts()) != self.state.alerts)
        if not changed and mono < self._publish_due:
            return
        self._publish_due = mono + PUBLISH_EVERY_S
        video = self.renderer.video_stats()
        self.state = ScreenState(
            manifest_serial=player.manifest_serial,
            current_item=status["current_item"],  # type: ignore[arg-type]
            screen_on=bool(status["screen_on"]),
            screen_mode=str(status["screen_mode"]),
            alert_active=bool(status["alert_active"]),
            emergency=bool(status["emergency"]),
            alerts=tuple(player.active_alerts()),
            frame_ms=tuple(self.renderer.frame_cost_summary().items()),
            video=tuple(video.items()) if video is not None else None,
        )
        if mono >= self._status_due:
            self._status_due = mono + 1.0
            self._notifier.status(self._one_line_state(self.state))

    def screenshot(self) -> pygame.Surface:
        """Display thread: a copy of the screen (the caller encodes it)."""
        return self.renderer.screenshot()

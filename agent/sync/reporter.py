"""Reports to the province (PROTOCOL.md §2, §5, §6): heartbeats and proof-of-play uploads.

One thread ("reporter") over the shared HTTP client. Heartbeats go every `heartbeat_interval_s`
(±10 %); a missed one is not queued (only the latest matters). Records go oldest first in batches
of `batch_size`, at least every `upload_interval_s` while any are pending; they leave the outbox
only after a 2xx for their batch, so a crash, a 503 storm or a week offline loses nothing (the
source de-duplicates by record id, so re-sending after a crash is safe). Errors back off with
jitter and honour `Retry-After`.

On a metered SIM each new connection costs a TCP and TLS handshake once the server has closed the
idle one (docs/metered.md), so exchanges share connections: records go right after the heartbeat,
and a round rides on the source's manifest poll when it falls within a quarter of its interval of
one (`ReportTimer`, pure, so bench/bench_report.py simulates a month of it).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.models import ProblemSink
from agent.sync.client import Backoff, HttpClient, SourceError

log = logging.getLogger(__name__)

LIMITS_EVERY_S = 3600.0  # folding and pruning the journal: hourly is plenty
HTTP_HEARTBEAT_EVERY_S = 86400.0  # with MQTT carrying the status, the source still hears one over HTTP daily
POST_DEADLINE_S = 60.0
ALIGN = 0.25  # a round sends early, or waits, up to this fraction of its interval to share a connection


class ReportTimer:
    """When heartbeats and uploads go. Pure: the time, whether the source has just polled (its
    connection is open) and when it polls next are passed in.

    - Records go with the heartbeat: an upload that would come due before the next heartbeat goes
      with this one, on its connection.
    - A round rides on a poll: after a poll, what is due within `ALIGN` of its interval goes now.
    - A round that comes due shortly before a poll (within `ALIGN` of its interval) waits for it;
      if the poll does not come (the source is busy downloading), it goes alone at that limit.
    """

    def __init__(self, heartbeat_s: float, upload_s: float, rng: random.Random, now: float) -> None:
        self.heartbeat_s, self.upload_s = heartbeat_s, upload_s
        # Soon after start (the province learns the board is back), but spread across a district.
        self.next_heartbeat = now + rng.uniform(0, min(10.0, heartbeat_s))
        self.next_upload = now + rng.uniform(0, min(5.0, upload_s))

    def due(self, now: float, polled: bool, poll_in: float | None) -> tuple[bool, bool]:
        """(send the heartbeat, upload records) at `now`. `poll_in`: seconds to the source's next poll."""
        heartbeat = _due(now, self.next_heartbeat, self.heartbeat_s, polled, poll_in)
        upload = _due(now, self.next_upload, self.upload_s, polled, poll_in) or (
            heartbeat and self.next_upload <= now + self.heartbeat_s)
        return heartbeat, upload

    def wake_at(self, now: float) -> float:
        """The next instant something may come due without a poll (a waiting round's limit included)."""
        return min(at if now < at else at + ALIGN * interval
                   for at, interval in ((self.next_heartbeat, self.heartbeat_s), (self.next_upload, self.upload_s)))

    def heartbeat_sent(self, now: float, delay: float) -> None:
        self.next_heartbeat = now + delay

    def uploaded(self, now: float, delay: float) -> None:
        self.next_upload = now + delay

    def upload_now(self, now: float) -> None:
        self.next_upload = min(self.next_upload, now)


def _due(now: float, at: float, interval: float, warm: bool, poll_in: float | None) -> bool:
    slack = ALIGN * interval
    if warm:
        return now >= at - slack
    if now < at:
        return False
    # Due; wait for a poll that comes before the limit: the round then shares its connection.
    return now >= at + slack or poll_in is None or poll_in > at + slack - now


class RecordQueue(Protocol):
    def pending_batch(self, limit: int) -> list[tuple[int, dict[str, Any]]]: ...
    def mark_uploaded(self, seqs: list[int]) -> None: ...
    def pending(self) -> int: ...
    def enforce_limits(self, today: str) -> None: ...



class Reporter:
    name = "reporter"

    def __init__(
        self,
        client: HttpClient,
        *,
        device_url: str,  # <source.url>/devices/<id>
        device_id: str,
        outbox: RecordQueue,
        heartbeat: Callable[[], dict[str, Any]],
        problems: ProblemSink,
        stop: threading.Event,
        heartbeat_interval_s: float,
        upload_interval_s: float,
        batch_size: int,
        today: Callable[[], str],
        deliver_elsewhere: Callable[[dict[str, Any]], bool] = lambda beat: False,
        rng: random.Random | None = None,
        board_key: str | None = None,
        poll_in: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._client = client
        self._device_url = device_url.rstrip("/")
        self._device_id = device_id
        self._outbox = outbox
        self._heartbeat = heartbeat
        self._problems = problems
        self._stop = stop
        self._heartbeat_interval_s = heartbeat_interval_s
        self._upload_interval_s = upload_interval_s
        self._batch_size = batch_size
        self._today = today
        self._deliver_elsewhere = deliver_elsewhere  # the MQTT link's retained status, when connected
        # In each playlog batch too: a source that never sees an HTTP heartbeat (MQTT carries them)
        # still learns which key signs this board's records (§12).
        self._board_key = board_key
        self._http_heartbeat_due = 0.0  # the first heartbeat of a run goes over HTTP whatever MQTT does
        self._poll_in = poll_in  # seconds to the source's next manifest poll (None: not known)
        self._rng = rng or random.Random()
        self._upload_backoff = Backoff(self._rng)
        self._wake = threading.Event()
        self._polled = threading.Event()
        self._timer: ReportTimer | None = None
        self._thread: threading.Thread | None = None
        self.last_heartbeat_ok_at: float | None = None
        self.last_upload_ok_at: float | None = None
        self.uploaded_records = 0

    # --- thread ----------------------------------------------------------------------------------

    def start(self) -> None:
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

    def blocked_in_network_io(self) -> bool:
        return self._thread is not None and self._thread.ident is not None and \
            self._client.blocked_in_network_io(self._thread.ident)

    def health(self) -> dict[str, Any]:
        return {"uploaded_records": self.uploaded_records, "last_upload_ok_at": self.last_upload_ok_at,
                "last_heartbeat_ok_at": self.last_heartbeat_ok_at, "heartbeat_interval_s": self._heartbeat_interval_s,
                "upload_interval_s": self._upload_interval_s}

    status = health

    def set_intervals(self, heartbeat_s: float, upload_s: float, batch_size: int) -> None:
        """A live config edit: takes effect from the next round."""
        self._heartbeat_interval_s, self._upload_interval_s, self._batch_size = heartbeat_s, upload_s, batch_size
        timer = self._timer
        if timer is not None:
            timer.heartbeat_s, timer.upload_s = heartbeat_s, upload_s
        self._wake.set()

    def source_polled(self) -> None:
        """The source has just polled the manifest (any thread): its connection is open, so what is
        due soon goes now and shares it."""
        self._polled.set()
        self._wake.set()

    def _jittered(self, interval: float) -> float:
        return jittered(self._rng, interval)

    def _run(self) -> None:
        now = time.monotonic()
        timer = self._timer = ReportTimer(self._heartbeat_interval_s, self._upload_interval_s, self._rng, now)
        next_limits = now
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_limits:
                self._enforce_limits()
                next_limits = now + LIMITS_EVERY_S
            polled = self._polled.is_set()
            self._polled.clear()
            heartbeat, upload = timer.due(now, polled, self._poll_in())
            if heartbeat:
                timer.heartbeat_sent(time.monotonic(), self._send_heartbeat())
            if upload:
                timer.uploaded(time.monotonic(), self.upload_pending())
            self._wake.wait(max(0.0, min(timer.wake_at(time.monotonic()), next_limits) - time.monotonic()))
            if self._wake.is_set():
                self._wake.clear()
                if not self._polled.is_set():
                    timer.upload_now(time.monotonic())  # an explicit request uploads now

    # --- work ------------------------------------------------------------------------------------

    def _enforce_limits(self) -> None:
        try:
            self._outbox.enforce_limits(self._today())
        except Exception:  # a storage hiccup must not stop reporting; the next hour tries again
            log.exception("outbox limits could not be enforced")

    def _send_heartbeat(self) -> float:
        """POST one heartbeat; returns the delay to the next one."""
        interval = self._jittered(self._heartbeat_interval_s)
        try:
            beat = self._heartbeat()
            if time.monotonic() < self._http_heartbeat_due and self._deliver_elsewhere(beat):
                self._problems.resolve("heartbeat")
                return interval  # the broker carried it (retained status): not twice on a metered SIM
            body = json.dumps(beat, ensure_ascii=False, separators=(",", ":")).encode()
            response = self._client.post(f"{self._device_url}/heartbeat", body, "application/json", POST_DEADLINE_S)
            if not 200 <= response.status_code < 300:
                raise self._client.http_error(response, "heartbeat")
        except SourceError as exc:
            self._problems.report("heartbeat", f"heartbeat not delivered: {exc}")
            return max(interval, exc.retry_after or 0.0)
        except Exception as exc:  # a bug in assembling it: logged, and the next one is tried
            log.exception("heartbeat not built")
            self._problems.report("heartbeat", f"heartbeat not built: {type(exc).__name__}: {exc}")
            return interval
        self._problems.resolve("heartbeat")
        self.last_heartbeat_ok_at = time.time()
        self._http_heartbeat_due = time.monotonic() + HTTP_HEARTBEAT_EVERY_S
        return interval

    def upload_pending(self) -> float:
        """Upload batches, oldest first, until none are pending; returns the delay to the next round."""
        while not self._stop.is_set():
            rows = self._outbox.pending_batch(self._batch_size)
            batch = [record for _, record in rows]
            if not batch:
                self._upload_backoff.reset()
                return self._jittered(self._upload_interval_s)
            batch_body: dict[str, Any] = {"device": self._device_id, "records": batch}
            if self._board_key is not None:
                batch_body["board_key"] = self._board_key
            body = json.dumps(batch_body, ensure_ascii=False, separators=(",", ":")).encode()
            try:
                response = self._client.post(f"{self._device_url}/playlogs", body, "application/json", POST_DEADLINE_S)
                if not 200 <= response.status_code < 300:
                    raise self._client.http_error(response, "playlogs")
            except SourceError as exc:
                delay = self._upload_backoff.next_delay(exc.retry_after)
                self._problems.report("upload", f"{len(batch)} record(s) not uploaded, next try in {delay:.0f} s: {exc}")
                return delay
            # Only now, with the source's 2xx in hand, do the records leave the outbox.
            self._outbox.mark_uploaded([seq for seq, _ in rows])
            self.uploaded_records += len(batch)
            self.last_upload_ok_at = time.time()
            self._upload_backoff.reset()
            self._problems.resolve("upload")
        return 0.0


def jittered(rng: random.Random, interval: float) -> float:
    return rng.uniform(interval * 0.9, interval * 1.1)

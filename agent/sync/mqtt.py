"""MQTT push (PROTOCOL.md §8): commands in, acks and retained presence out. Transport only.

paho-mqtt 2.x (callback API version 2) driven by our own thread ("mqtt") so that reconnects get
jitter (paho's own back-off has none, and a broker restart would otherwise stampede a fleet) and
so that a list of brokers is tried in turn. MQTT v5 first, 3.1.1 if the broker refuses it. Username
= device id, password = token; TLS verifies with the CA file. Subscriptions are made again on every
connect. Refused credentials wait a long back-off: they will not fix themselves by hammering.
A broker that is down never touches playback: everything here runs off the display thread.

Bounds (PROTOCOL.md §8, §10): under MQTT v5 the board tells the broker the largest packet it takes
(`Maximum Packet Size`) and asks for no retained messages on its command subscriptions; whatever
still arrives retained, or over 64 KiB, is dropped before it is parsed.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.limits import MAX_COMMAND_BYTES
from agent.sync.client import Backoff
from agent.wire import Reading, SocketGauge, TcpCounters, TrafficKind, tcp_counters

log = logging.getLogger(__name__)

AUTH_FAILURE_WAIT_S = 600.0  # refused credentials: try again in ten minutes, not in a loop
UNSUPPORTED_PROTOCOL = 132
AUTH_REASONS = {134, 135, 4, 5}  # bad user name or password / not authorised (v5 and 3.1.1 codes)
LOOP_TIMEOUT_S = 0.2
PACKET_OVERHEAD = 1024  # topic and header bytes around a 64 KiB command
METER_EVERY_S = 10.0  # the socket's bytes go to the data meter this often, and when it closes


@dataclass(frozen=True)
class MqttSettings:
    urls: tuple[str, ...]
    device_id: str
    groups: tuple[str, ...]
    token: str | None
    topic_prefix: str
    keepalive_s: int
    ca_file: str | None

    def topic(self, suffix: str) -> str:
        return f"{self.topic_prefix}/devices/{self.device_id}/{suffix}"

    @property
    def command_topics(self) -> list[str]:
        return [self.topic("commands")] + [f"{self.topic_prefix}/groups/{g}/commands" for g in self.groups]

    def group_of(self, topic: str) -> str | None:
        """The group whose command topic this is (None: the board's own topic)."""
        for group in self.groups:
            if topic == f"{self.topic_prefix}/groups/{group}/commands":
                return group
        return None


CommandHandler = Callable[[bytes, str, "str | None"], "dict[str, Any] | None"]


class _CountingClient(paho.Client):
    """paho's client, counting the bytes it passes through its socket: the data meter's fallback where
    the kernel cannot count (paho has no public hook; these two methods are where every byte passes)."""

    gauge: SocketGauge | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        data = super()._sock_recv(bufsize)
        if self.gauge is not None:
            self.gauge.stream_received += len(data)
        return data

    def _sock_send(self, buf: bytes | bytearray) -> int:
        sent = super()._sock_send(buf)
        if self.gauge is not None:
            self.gauge.stream_sent += sent
        return sent


class MqttLink:
    def __init__(
        self,
        settings: MqttSettings,
        on_command: CommandHandler,
        presence: Callable[[], dict[str, Any]],
        stop: threading.Event,
        rng: random.Random,
        refresh_s: float | None = None,
        on_refused: Callable[[str], None] = lambda why: None,
        count: Callable[[TrafficKind, Reading], None] = lambda kind, reading: None,
        tcp_read: TcpCounters = tcp_counters,
    ) -> None:
        self.settings = settings
        self._count = count  # the data meter
        self._tcp_read = tcp_read
        self._refresh_s = refresh_s  # presence refresh when no HTTP reporter drives heartbeats
        self._on_command = on_command
        self._on_refused = on_refused  # a message dropped before parsing (retained, too large)
        self._presence = presence
        self._stop = stop
        self._rng = rng
        self._backoff = Backoff(self._rng, base_s=2.0, cap_s=300.0)
        self._thread: threading.Thread | None = None
        self._client: paho.Client | None = None
        self._connected = threading.Event()
        self._presence_due = threading.Event()
        self._refused: int | None = None  # reason code of a refused CONNACK
        self._subscribe_mid: int | None = None
        self._protocols: dict[str, MQTTProtocolVersion] = {}  # broker url → version it accepted
        self.broker: str | None = None
        self.last_error: str | None = None
        self.connects = 0

    # --- thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        return {"connected": self._connected.is_set(), "broker": self.broker, "last_error": self.last_error}

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def request_presence(self) -> None:
        """Publish fresh presence soon (the manifest, an alert or the screen mode changed)."""
        self._presence_due.set()

    def publish_status(self, beat: dict[str, Any]) -> bool:
        """Retained presence with the heartbeat; False when not connected (then HTTP carries it)."""
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        payload = json.dumps({**beat, "online": True}, ensure_ascii=False, separators=(",", ":"))
        return client.publish(self.settings.topic("status"), payload, qos=1, retain=True).rc == paho.MQTT_ERR_SUCCESS

    def _run(self) -> None:
        attempt = 0
        urls = self.settings.urls
        while not self._stop.is_set():
            url = urls[attempt % len(urls)]
            attempt += 1
            self._session(url)
            if self._stop.is_set():
                break
            if self._refused in AUTH_REASONS:
                delay = AUTH_FAILURE_WAIT_S * self._rng.uniform(0.8, 1.2)
            elif self._refused == UNSUPPORTED_PROTOCOL and self._protocols.get(url) == MQTTProtocolVersion.MQTTv311:
                delay = 0.0  # fall back to 3.1.1 at once
            else:
                delay = self._backoff.next_delay() if attempt % len(urls) == 0 or len(urls) == 1 else 0.5
            log.info("MQTT: next connection attempt in %.1f s", delay)
            self._stop.wait(delay)

    # --- one connection --------------------------------------------------------------------------

    def _session(self, url: str) -> None:
        parts = urlsplit(url)
        protocol = self._protocols.get(url, MQTTProtocolVersion.MQTTv5)
        client = _CountingClient(callback_api_version=CallbackAPIVersion.VERSION2,
                                 client_id=f"bangtin-{self.settings.device_id}", protocol=protocol,
                                 reconnect_on_failure=False)
        client.username_pw_set(self.settings.device_id, self.settings.token)
        # The broker publishes this if we vanish (power cut, kill -9): the province sees the board go.
        client.will_set(self.settings.topic("status"), json.dumps({"online": False}), qos=1, retain=True)
        if parts.scheme == "mqtts":
            client.tls_set(ca_certs=self.settings.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = lambda client, userdata, sock: self._meter(client, sock)
        self._refused = None
        self.broker = url
        properties = None
        if protocol == MQTTProtocolVersion.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.MaximumPacketSize = MAX_COMMAND_BYTES + PACKET_OVERHEAD  # the broker drops larger ones
        try:
            client.connect(parts.hostname or "localhost", parts.port or (8883 if parts.scheme == "mqtts" else 1883),
                           keepalive=self.settings.keepalive_s, properties=properties)
        except (OSError, ValueError, ssl.SSLError) as exc:
            self.last_error = f"cannot connect to {url}: {exc}"
            log.info("MQTT: %s", self.last_error)
            return
        self._client = client
        next_refresh = time.monotonic() + (self._refresh_s or 0)
        next_meter = time.monotonic() + METER_EVERY_S
        try:
            while not self._stop.is_set():
                if client.loop(timeout=LOOP_TIMEOUT_S) != paho.MQTT_ERR_SUCCESS or self._refused is not None:
                    break
                if time.monotonic() >= next_meter:
                    next_meter = time.monotonic() + METER_EVERY_S
                    self._meter(client, client.socket())
                periodic = self._refresh_s is not None and time.monotonic() >= next_refresh
                if self._connected.is_set() and (periodic or self._presence_due.is_set()):
                    self._presence_due.clear()
                    next_refresh = time.monotonic() + (self._refresh_s or 0)
                    self.publish_status(self._presence())
            if self._stop.is_set() and self._connected.is_set():
                self._say_goodbye(client)
        finally:
            self._connected.clear()
            self._client = None
            self._meter(client, client.socket())
            try:
                client.disconnect()
            except (OSError, ValueError):
                pass
            self._meter(client, client.socket())  # the DISCONNECT, where paho has not closed the socket itself

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """A fresh socket (TLS handshake done): its kernel counters start at the connect, so the
        handshake is in its first reading."""
        if isinstance(client, _CountingClient):
            client.gauge = SocketGauge(self._tcp_read)

    def _meter(self, client: paho.Client, sock: Any) -> None:
        gauge = client.gauge if isinstance(client, _CountingClient) else None
        if gauge is None or sock is None:
            return
        reading = gauge.take(sock)
        if reading.total:
            self._count("mqtt", reading)

    def _say_goodbye(self, client: paho.Client) -> None:
        """A clean stop says "offline" itself (the will is only for deaths)."""
        info = client.publish(self.settings.topic("status"), json.dumps({"online": False}), qos=1, retain=True)
        deadline = time.monotonic() + 2.0
        while not info.is_published() and time.monotonic() < deadline:
            client.loop(timeout=0.1)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        code = int(getattr(reason_code, "value", reason_code))
        if getattr(reason_code, "is_failure", code != 0):
            self._refused = code
            if code == UNSUPPORTED_PROTOCOL and self.broker is not None:
                self._protocols[self.broker] = MQTTProtocolVersion.MQTTv311
            self.last_error = f"broker {self.broker} refused the connection: {reason_code}"
            log.warning("MQTT: %s", self.last_error)
            return
        self._backoff.reset()
        self.last_error = None
        # Every connect: a broker restarted without persistence has forgotten our subscriptions.
        if client.protocol == MQTTProtocolVersion.MQTTv5:
            # A command is live or nothing: no retained message is sent to us at subscribe time.
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            _, self._subscribe_mid = client.subscribe([(topic, options) for topic in self.settings.command_topics])
        else:
            _, self._subscribe_mid = client.subscribe([(topic, 1) for topic in self.settings.command_topics])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        """Only with the SUBACK in hand can commands arrive: that is when the link counts as up."""
        if mid != self._subscribe_mid:
            return
        refused = [code for code in reason_codes if getattr(code, "is_failure", False)]
        if refused:
            self.last_error = f"broker refused the command subscriptions: {refused} (check its ACL)"
            log.warning("MQTT: %s", self.last_error)
        self._connected.set()
        self.connects += 1
        log.info("MQTT: connected to %s, listening on %s", self.broker, ", ".join(self.settings.command_topics))
        try:
            self.publish_status(self._presence())
        except Exception:  # presence comes again with the next heartbeat
            log.exception("MQTT: presence not published")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._connected.is_set():
            log.info("MQTT: disconnected from %s (%s)", self.broker, reason_code)
        self._connected.clear()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.retain:
            self._on_refused(f"retained message on {message.topic} ignored (a command is live or nothing)")
            return
        if len(message.payload) > MAX_COMMAND_BYTES:
            self._on_refused(f"message on {message.topic} dropped: {len(message.payload)} bytes, "
                             f"over the limit of {MAX_COMMAND_BYTES}")
            return
        try:
            ack = self._on_command(bytes(message.payload), message.topic, self.settings.group_of(message.topic))
        except Exception:  # a bug in one command must not end the link
            log.exception("MQTT: command on %s failed", message.topic)
            return
        if ack is not None:
            client.publish(self.settings.topic("acks"), json.dumps(ack, ensure_ascii=False, separators=(",", ":")),
                           qos=1)


def broker_urls(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


class MqttSlot:
    """The board's MQTT link as one service: none, or one link that a config edit can replace alone."""

    name = "mqtt"

    def __init__(self, make: Callable[[MqttSettings, threading.Event], MqttLink], settings: MqttSettings | None,
                 stop: threading.Event) -> None:
        self._make = make
        self._settings = settings
        self._stop = stop
        self._link: MqttLink | None = None
        self._link_stop = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._settings is not None:
                self._link_stop = threading.Event()
                self._link = self._make(self._settings, self._link_stop)
                self._link.start()

    def stop(self) -> None:
        self._link_stop.set()

    def join(self, timeout: float) -> None:
        link = self._link
        if link is not None:
            link.join(timeout)

    def is_alive(self) -> bool:
        link = self._link
        return link is not None and link.is_alive()

    def replace(self, settings: MqttSettings | None, timeout: float = 5.0) -> None:
        """A live config edit: the old link says goodbye and goes; the new one connects."""
        with self._lock:
            old = self._link
            self._link_stop.set()
            self._link = None
            self._settings = settings
        if old is not None:
            old.join(timeout)
        if not self._stop.is_set():
            self.start()

    def health(self) -> dict[str, Any]:
        link = self._link
        return link.status() if link is not None else {"connected": False, "broker": None, "last_error": None}

    def publish_status(self, beat: dict[str, Any]) -> bool:
        link = self._link
        return link.publish_status(beat) if link is not None else False

    def request_presence(self) -> None:
        link = self._link
        if link is not None:
            link.request_presence()

    @property
    def enabled(self) -> bool:
        return self._settings is not None

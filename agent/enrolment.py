"""A board that is not enrolled yet (PROTOCOL.md §12): what its enrolment screen says, and the
stand-in for a source it does not have.

A board without `device.id` or `source.url` never shows a black screen: it shows who it is (its
key fingerprint, and a QR code carrying the fingerprint and public key, which `refsource provision
--board-key` reads to bind a bundle to this board), where it can be reached (its addresses, for the
technician's SSH) and what it waits for — in Vietnamese, for the commune office.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.limits import clip
from agent.models import ProblemSink

QR_PREFIX = "bangtin:board"
SIOCGIFADDR = 0x8915
MAX_ADDRESSES = 6


@dataclass(frozen=True)
class EnrolmentCard:
    """Everything the enrolment screen draws; the renderer redraws when it changes."""

    fingerprint: str  # 16 hex, or "" when the board has no usable key
    qr_text: str
    addresses: tuple[str, ...]
    waiting_for: tuple[str, ...]  # lines, Vietnamese
    refusal: str | None = None  # the last provisioning bundle refused, and why (Vietnamese)


def qr_text(fingerprint: str, public_key_b64: str) -> str:
    """`bangtin:board?fp=<16 hex>&key=<base64url public key>`: short enough for a QR code a phone
    reads across a room, and all `refsource provision --board-key` needs."""
    raw = base64.b64decode(public_key_b64)
    return f"{QR_PREFIX}?fp={fingerprint}&key={base64.urlsafe_b64encode(raw).decode('ascii').rstrip('=')}"


def public_key_from_qr(text: str) -> str:
    """The standard-base64 public key in an enrolment QR code's text; ValueError when it is not one."""
    prefix = f"{QR_PREFIX}?"
    if not text.startswith(prefix):
        raise ValueError(f"not a bangtin board code (expected {QR_PREFIX}?fp=…&key=…)")
    fields = dict(part.partition("=")[::2] for part in text[len(prefix):].split("&"))
    key = fields.get("key", "")
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    if len(raw) != 32:
        raise ValueError("the code's key is not a 32-byte Ed25519 public key")
    return base64.b64encode(raw).decode("ascii")


def network_addresses() -> tuple[str, ...]:
    """The board's IPv4 and global IPv6 addresses with their interface, loopback left out, e.g.
    `eth0 192.168.1.20`. Read from the kernel (no extra package); an interface that will not say is
    skipped."""
    found: list[str] = []
    try:
        interfaces = [name for _, name in socket.if_nameindex() if name != "lo"]
    except OSError:
        return ()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for name in interfaces:
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on it
            found.append(f"{name} {socket.inet_ntoa(answer[20:24])}")
    found.extend(_ipv6_addresses())
    return tuple(found[:MAX_ADDRESSES])


def _ipv6_addresses() -> list[str]:
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[5] == "lo":
            continue
        address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
        if address.is_global or (address.is_private and not address.is_link_local):
            found.append(f"{fields[5]} {address.compressed}")
    return found


def waiting_lines(missing: list[str], can_be_provisioned: bool, drop_dir: Path, config_path: str) -> tuple[str, ...]:
    lines = [f"Chưa có: {', '.join(missing)}"]
    if can_be_provisioned:
        lines.append("Đang chờ gói thiết lập của tỉnh: cắm USB có tệp bangtin-provision….json")
        lines.append(f"hoặc chép gói vào {drop_dir}")
    else:
        lines.append("Chưa cài khóa của tỉnh: chạy install.sh --province-key KHÓA")
        lines.append(f"hoặc điền device.id và source.url vào {config_path}")
    return tuple(clip(line, 160) for line in lines)


class NoSource:
    """Stands in for the content source on a board that is not enrolled: nothing to sync, and
    status says what is missing."""

    name = "no-source"
    last_sync_ok_at: float | None = None

    def __init__(self, missing: list[str]) -> None:
        self._missing = list(missing)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def join(self, timeout: float) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    def request_sync(self) -> None:
        pass  # `ctl sync` on an unenrolled board: nothing to poll

    def health(self) -> Mapping[str, Any]:
        return {"state": "not enrolled", "missing": list(self._missing)}


class RefusalLike(Protocol):
    @property
    def on_screen(self) -> str: ...



class EnrolmentScreen:
    """What the screen says about enrolment: the card on a board not enrolled (its addresses kept
    fresh), and on an enrolled board a refused bundle's words in the header for a while. Called from
    the provision thread; what the display owns is posted to it."""

    def __init__(self, post: Callable[[Callable[[], None]], object], show_card: Callable[[EnrolmentCard | None], None],
                 show_notice: Callable[[str | None], None], problems: ProblemSink, card: EnrolmentCard | None,
                 notice_s: float, addresses: Callable[[], tuple[str, ...]] = network_addresses) -> None:
        self._post = post
        self._show_card = show_card
        self._show_notice = show_notice
        self._problems = problems
        self._card = card
        self._notice_s = notice_s
        self._addresses = addresses
        self._notice_timer: threading.Timer | None = None
        self._words_shown: str | None = None
        self._lock = threading.Lock()

    @property
    def card(self) -> EnrolmentCard | None:
        with self._lock:
            return self._card

    def first_card(self) -> EnrolmentCard | None:
        """For the display thread before the first frame: the card, with addresses read now."""
        self.refresh(post=False)
        return self.card

    def refresh(self, post: bool = True) -> None:
        with self._lock:
            card = self._card
            if card is None:
                return
            addresses = self._addresses()
            if addresses == card.addresses:
                return
            self._card = card = dataclasses.replace(card, addresses=addresses)
        if post:
            self._post(lambda: self._show_card(card))

    def refused(self, refusal: RefusalLike | None) -> None:
        """Called at every scan while a refusal lasts: `errors` keeps it (never forgotten while the
        file is there); the screen changes only when the words do."""
        if refusal is None:
            self._problems.resolve("provision")
        else:
            self._problems.report("provision", f"provisioning bundle refused: {refusal}")
        words = refusal.on_screen if refusal is not None else None
        with self._lock:
            if words == self._words_shown:
                return
            self._words_shown = words
            card = self._card
            if card is not None:
                self._card = card = dataclasses.replace(card, refusal=words)
        if card is not None:
            self._post(lambda: self._show_card(card))
            return
        if self._notice_timer is not None:
            self._notice_timer.cancel()
        self._post(lambda: self._show_notice(words))
        if words is not None:  # not for ever: a stick left in must not take the commune's title for good
            self._notice_timer = threading.Timer(self._notice_s, lambda: self._post(lambda: self._show_notice(None)))
            self._notice_timer.daemon = True
            self._notice_timer.start()

"""ICMP echo probes to every worker's tunnel address, from one socket, inside asyncio.

Each worker's tunnel address is a /32 in that worker's own peer's AllowedIPs, so an echo to it
travels through that peer whatever peer holds the routes: the probes see each tunnel separately.
The socket is bound to the WireGuard interface (SO_BINDTODEVICE) so probes never leak out another
way and the kernel only hands us what came back through the tunnel.

A raw ICMP socket needs root or CAP_NET_RAW; without it we fall back to an unprivileged ICMP
datagram socket (allowed by `net.ipv4.ping_group_range`), where the kernel owns the echo id.
IPv6 tunnel addresses get ICMPv6 echoes from a second socket, opened only when one is needed.

Each worker has its own schedule: every `interval`, or faster while `interval_for(worker)` says so
(the burst after a missed probe); a callback that shortens it takes effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("wg_failover.switcher")

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
PAYLOAD = b"wg-failover-prb"
MAX_EXPIRED = 512  # missed probes remembered for a late answer (a few seconds' worth)
LATE_LIMIT = 5.0  # seconds: an answer later than this says nothing useful about the path


class ProbeError(RuntimeError):
    pass


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD, v6: bool = False) -> bytes:
    """An ICMP (or ICMPv6) echo request. For ICMPv6 the kernel fills in the checksum (it covers
    a pseudo-header with addresses only the kernel picks), so it stays 0 here."""
    kind = ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    header = struct.pack("!BBHHH", kind, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    csum = 0 if v6 else checksum(header + payload)
    return struct.pack("!BBHHH", kind, 0, csum, ident & 0xFFFF, seq & 0xFFFF) + payload


def parse_echo_reply(data: bytes, has_ip_header: bool, v6: bool = False) -> tuple[int, int] | None:
    """(ident, seq) of an echo reply, or None for anything else. Raw IPv6 sockets never hand
    over the IP header."""
    if has_ip_header and not v6:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8:
        return None
    kind, code, _csum, ident, seq = struct.unpack("!BBHHH", data[:8])
    if kind != (ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY) or code != 0:
        return None
    return ident, seq


def _norm(address: str) -> str:
    return ipaddress.ip_address(address.split("%")[0]).compressed


def open_icmp_socket(interface: str | None, v6: bool = False) -> tuple[socket.socket, bool]:
    """(socket, raw?): a raw ICMP socket when allowed, else an ICMP datagram socket."""
    family, proto = ((socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6
                     else (socket.AF_INET, socket.IPPROTO_ICMP))
    try:
        sock = socket.socket(family, socket.SOCK_RAW, proto)
        raw = True
    except PermissionError:
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        except OSError as exc:
            raise ProbeError(
                "cannot open an ICMP socket: run as root, grant CAP_NET_RAW, or allow this "
                f"group in net.ipv4.ping_group_range ({exc})"
            ) from None
        raw = False
    sock.setblocking(False)
    if interface:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
        except OSError as exc:
            sock.close()
            raise ProbeError(f"cannot bind the probe socket to {interface}: {exc}") from None
    return sock, raw


@dataclass
class _Outstanding:
    worker: str
    sent: float
    timer: asyncio.TimerHandle


class IcmpProber:
    """Sends one echo to every target each `interval`; calls back on each answer or deadline.

    on_reply(worker, rtt_seconds, now) and on_miss(worker, now) run in the event loop; `timeout`
    (worker -> seconds) gives each probe's deadline, so it can follow the measured RTT;
    `interval_for` (worker -> seconds or None) a shorter interval for a worker, for a while.
    """

    def __init__(
        self,
        targets: dict[str, str],
        interval: float,
        on_reply: Callable[[str, float, float], None],
        on_miss: Callable[[str, float], None],
        timeout: Callable[[str], float],
        interface: str | None = None,
        interval_for: Callable[[str], float | None] | None = None,
        on_late: Callable[[str, float, float], None] | None = None,
    ) -> None:
        self.targets = {w: _norm(addr) for w, addr in targets.items()}
        self.by_address = {addr: w for w, addr in self.targets.items()}
        self.v6 = {w for w, addr in self.targets.items() if ":" in addr}
        self.interval_for = interval_for or (lambda _w: None)
        self.next_due: dict[str, float] = {}
        self.last_sent: dict[str, float] = {}
        self.wake: asyncio.Event | None = None
        self.interval = interval
        self.on_reply, self.on_miss, self.timeout = on_reply, on_miss, timeout
        self.interface = interface
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.outstanding: dict[int, _Outstanding] = {}
        # Probes past their deadline (counted as missed) whose answer may still come: on_late.
        self.expired: dict[int, _Outstanding] = {}
        self.on_late = on_late
        self.sock: socket.socket | None = None
        self.raw = True
        self.sock6: socket.socket | None = None
        self.raw6 = True
        self.sent = 0
        self.send_errors = 0
        self.round_dev_errors = 0
        self.reopened_at = -1e9
        self.errnos_seen: set[int | None] = set()

    def open(self) -> None:
        """Open the socket(s) the targets need (ICMPv6 only when a target is IPv6)."""
        if len(self.v6) < len(self.targets) or not self.targets:
            self.sock, self.raw = open_icmp_socket(self.interface)
        if self.v6:
            self.sock6, self.raw6 = open_icmp_socket(self.interface, v6=True)

    def _sockets(self) -> list[tuple[socket.socket, bool]]:
        return [(s, v6) for s, v6 in ((self.sock, False), (self.sock6, True)) if s is not None]

    def close(self) -> None:
        for item in self.outstanding.values():
            item.timer.cancel()
        self.outstanding.clear()
        self.expired.clear()
        for sock, _ in self._sockets():
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        self.sock = self.sock6 = None

    def _add_readers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sock, v6 in self._sockets():
            loop.add_reader(sock.fileno(), self._readable, sock, v6)

    def _remove_readers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sock, _ in self._sockets():
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())

    async def run(self, rounds: int | None = None) -> None:
        """Probe until cancelled (or until every target had `rounds` probes, then wait out the
        last deadlines)."""
        loop = asyncio.get_running_loop()
        if not self._sockets():
            self.open()
        self._add_readers(loop)
        self.wake = asyncio.Event()
        try:
            now = loop.time()
            self.next_due = dict.fromkeys(self.targets, now)
            sends: dict[str, int] = {}
            while True:
                now = loop.time()
                sent_any = False
                for worker, address in self.targets.items():
                    due = self.next_due[worker]
                    if due > now:
                        continue
                    self._send(loop, worker, address)
                    sends[worker] = sends.get(worker, 0) + 1
                    sent_any = True
                    step = self._interval(worker)
                    # A stalled loop does not burst to catch up: one probe, then the schedule.
                    self.next_due[worker] = max(due + step, now) if due + step > now - step \
                        else now + step
                if sent_any:
                    self._maybe_reopen(loop)
                if rounds is not None and all(sends.get(w, 0) >= rounds for w in self.targets):
                    break
                self.wake.clear()
                # No target (a view without workers yet): wait for set_targets.
                delay = min(self.next_due.values(), default=now + self.interval) - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), delay)
            deadline = loop.time() + 3.0
            while self.outstanding and loop.time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            self._remove_readers(loop)

    def set_targets(self, targets: dict[str, str]) -> None:
        """The workers changed (a switcher following its view): a new one is probed at once, a
        departed one no more, and its probes in flight are dropped, not counted as misses."""
        self.targets = {w: _norm(addr) for w, addr in targets.items()}
        self.by_address = {addr: w for w, addr in self.targets.items()}
        self.v6 = {w for w, addr in self.targets.items() if ":" in addr}
        for seq, item in list(self.outstanding.items()):
            if item.worker not in self.targets:
                item.timer.cancel()
                del self.outstanding[seq]
        self.last_sent = {w: t for w, t in self.last_sent.items() if w in self.targets}
        if self.wake is None:
            return  # not running: `run` schedules every target and opens what they need
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.next_due = {w: self.next_due.get(w, now) for w in self.targets}
        # A new worker may be the first of its address family: its socket is opened now.
        if self.v6 and self.sock6 is None:
            self.sock6, self.raw6 = open_icmp_socket(self.interface, v6=True)
            loop.add_reader(self.sock6.fileno(), self._readable, self.sock6, True)
        if len(self.v6) < len(self.targets) and self.sock is None:
            self.sock, self.raw = open_icmp_socket(self.interface)
            loop.add_reader(self.sock.fileno(), self._readable, self.sock, False)
        self.wake.set()

    def _interval(self, worker: str) -> float:
        fast = self.interval_for(worker)
        return self.interval if fast is None else min(fast, self.interval)

    def reschedule_all(self) -> None:
        """Every worker's interval may have just got shorter (the active went silent)."""
        for worker in list(self.next_due):
            self._reschedule(worker)

    def _reschedule(self, worker: str) -> None:
        """After a result: a worker whose interval just got shorter is probed on its new
        schedule now, not after the old interval."""
        sent = self.last_sent.get(worker)
        if sent is None or worker not in self.next_due:
            return
        due = sent + self._interval(worker)
        if due < self.next_due[worker]:
            self.next_due[worker] = due
            if self.wake is not None:
                self.wake.set()

    def _send(self, loop: asyncio.AbstractEventLoop, worker: str, address: str) -> None:
        v6 = worker in self.v6
        sock = self.sock6 if v6 else self.sock
        assert sock is not None
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        old = self.outstanding.pop(seq, None)  # only after 65536 probes in flight: never
        if old is not None:
            old.timer.cancel()
        self.expired.pop(seq, None)
        now = loop.time()
        self.last_sent[worker] = now
        timer = loop.call_at(now + self.timeout(worker), self._expire, seq)
        self.outstanding[seq] = _Outstanding(worker, now, timer)
        try:
            sock.sendto(echo_request(self.ident, seq, v6=v6), (address, 0))
            self.sent += 1
            self.round_dev_errors = 0
        except OSError as exc:
            # ENOKEY (no peer for it), ENETUNREACH, ENOBUFS, ENODEV (the interface is gone)...:
            # the probe is lost, and its deadline counts it as a miss like any other.
            self.send_errors += 1
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                self.round_dev_errors += 1
            if exc.errno not in self.errnos_seen:
                self.errnos_seen.add(exc.errno)
                log.warning("probe: sending to %s (%s) failed: %s", worker, address,
                            exc.strerror or exc)

    def _maybe_reopen(self, loop: asyncio.AbstractEventLoop) -> None:
        """A socket bound to an interface that was deleted stays bound to the dead one: when
        as many sends in a row as there are targets say the device is gone, bind fresh sockets
        (at most once a second), so probing resumes as soon as the interface is back."""
        dead = self.round_dev_errors >= len(self.targets) > 0
        if not dead or loop.time() - self.reopened_at < 1.0:
            return
        self.round_dev_errors = 0
        self.reopened_at = loop.time()
        old = self._sockets()
        try:
            self.sock = self.sock6 = None
            self.open()
        except ProbeError as exc:
            log.warning("probe: %s", exc)
            for s, _ in self._sockets():
                s.close()
            self.sock = next((s for s, v6 in old if not v6), None)
            self.sock6 = next((s for s, v6 in old if v6), None)
            return
        for s, _ in old:
            with contextlib.suppress(Exception):
                loop.remove_reader(s.fileno())
            s.close()
        self._add_readers(loop)
        log.info("probe: socket bound to %s again", self.interface)

    def _expire(self, seq: int) -> None:
        item = self.outstanding.pop(seq, None)
        if item is not None:
            self.expired[seq] = item
            while len(self.expired) > MAX_EXPIRED:  # oldest first: dicts keep insertion order
                del self.expired[next(iter(self.expired))]
            self.on_miss(item.worker, asyncio.get_running_loop().time())
            self._reschedule(item.worker)

    def _readable(self, sock: socket.socket, v6: bool = False) -> None:
        loop = asyncio.get_running_loop()
        raw = self.raw6 if v6 else self.raw
        for _ in range(64):  # drain what is queued, bounded so probes keep flowing
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            now = loop.time()
            parsed = parse_echo_reply(data, raw, v6)
            if parsed is None:
                continue
            ident, seq = parsed
            if raw and ident != self.ident:
                continue  # someone else's ping (a datagram socket only sees its own)
            item = self.outstanding.get(seq)
            if item is None:
                late = self.expired.get(seq)
                if late is not None and self.by_address.get(_norm(addr[0])) == late.worker:
                    del self.expired[seq]
                    if self.on_late is not None and now - late.sent < LATE_LIMIT:
                        self.on_late(late.worker, now - late.sent, now)
                continue
            if self.by_address.get(_norm(addr[0])) != item.worker:
                continue
            del self.outstanding[seq]
            item.timer.cancel()
            self.on_reply(item.worker, now - item.sent, now)
            self._reschedule(item.worker)

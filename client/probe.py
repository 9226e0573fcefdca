"""ICMP echo probes to every worker's tunnel address, from one socket, inside asyncio.

Each worker's tunnel address is a /32 in that worker's own peer's AllowedIPs, so an echo to it
travels through that peer whatever peer holds the routes: the probes see each tunnel separately.
The socket is bound to the WireGuard interface (SO_BINDTODEVICE) so probes never leak out another
way and the kernel only hands us what came back through the tunnel.

A raw ICMP socket needs root or CAP_NET_RAW; without it we fall back to an unprivileged ICMP
datagram socket (allowed by `net.ipv4.ping_group_range`), where the kernel owns the echo id.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("wg_failover.switcher")

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
PAYLOAD = b"wg-failover-prb"


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


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident & 0xFFFF,
                       seq & 0xFFFF) + payload


def parse_echo_reply(data: bytes, has_ip_header: bool) -> tuple[int, int] | None:
    """(ident, seq) of an echo reply, or None for anything else."""
    if has_ip_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8:
        return None
    kind, code, _csum, ident, seq = struct.unpack("!BBHHH", data[:8])
    if kind != ICMP_ECHO_REPLY or code != 0:
        return None
    return ident, seq


def open_icmp_socket(interface: str | None) -> tuple[socket.socket, bool]:
    """(socket, raw?): a raw ICMP socket when allowed, else an ICMP datagram socket."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        raw = True
    except PermissionError:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
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
    (worker -> seconds) gives each probe's deadline, so it can follow the measured RTT.
    """

    def __init__(
        self,
        targets: dict[str, str],
        interval: float,
        on_reply: Callable[[str, float, float], None],
        on_miss: Callable[[str, float], None],
        timeout: Callable[[str], float],
        interface: str | None = None,
    ) -> None:
        self.targets = dict(targets)
        self.by_address = {addr: w for w, addr in targets.items()}
        self.interval = interval
        self.on_reply, self.on_miss, self.timeout = on_reply, on_miss, timeout
        self.interface = interface
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.outstanding: dict[int, _Outstanding] = {}
        self.sock: socket.socket | None = None
        self.raw = True
        self.sent = 0
        self.send_errors = 0
        self.round_dev_errors = 0
        self.reopened_at = -1e9
        self.errnos_seen: set[int | None] = set()

    def open(self) -> None:
        self.sock, self.raw = open_icmp_socket(self.interface)

    def close(self) -> None:
        for item in self.outstanding.values():
            item.timer.cancel()
        self.outstanding.clear()
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    async def run(self, rounds: int | None = None) -> None:
        """Probe until cancelled (or for `rounds` rounds, then wait out the last deadlines)."""
        loop = asyncio.get_running_loop()
        if self.sock is None:
            self.open()
        assert self.sock is not None
        loop.add_reader(self.sock.fileno(), self._readable)
        try:
            next_at = loop.time()
            done = 0
            while rounds is None or done < rounds:
                for worker, address in self.targets.items():
                    self._send(loop, worker, address)
                self._maybe_reopen(loop)
                done += 1
                next_at += self.interval
                delay = next_at - loop.time()
                if delay < -self.interval:  # the loop stalled: do not burst to catch up
                    next_at = loop.time()
                    delay = 0
                await asyncio.sleep(max(0.0, delay))
            deadline = loop.time() + 3.0
            while self.outstanding and loop.time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            if self.sock is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(self.sock.fileno())

    def _send(self, loop: asyncio.AbstractEventLoop, worker: str, address: str) -> None:
        assert self.sock is not None
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        old = self.outstanding.pop(seq, None)  # only after 65536 probes in flight: never
        if old is not None:
            old.timer.cancel()
        now = loop.time()
        timer = loop.call_at(now + self.timeout(worker), self._expire, seq)
        self.outstanding[seq] = _Outstanding(worker, now, timer)
        try:
            self.sock.sendto(echo_request(self.ident, seq), (address, 0))
            self.sent += 1
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
        every send of a round says the device is gone, bind a fresh socket (at most once a
        second), so probing resumes as soon as the interface is back."""
        dead = self.round_dev_errors >= len(self.targets) > 0
        self.round_dev_errors = 0
        if not dead or loop.time() - self.reopened_at < 1.0:
            return
        self.reopened_at = loop.time()
        try:
            sock, raw = open_icmp_socket(self.interface)
        except ProbeError as exc:
            log.warning("probe: %s", exc)
            return
        old = self.sock
        if old is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(old.fileno())
            old.close()
        self.sock, self.raw = sock, raw
        loop.add_reader(sock.fileno(), self._readable)
        log.info("probe: socket bound to %s again", self.interface)

    def _expire(self, seq: int) -> None:
        item = self.outstanding.pop(seq, None)
        if item is not None:
            self.on_miss(item.worker, asyncio.get_running_loop().time())

    def _readable(self) -> None:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        for _ in range(64):  # drain what is queued, bounded so probes keep flowing
            try:
                data, addr = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            now = loop.time()
            parsed = parse_echo_reply(data, self.raw)
            if parsed is None:
                continue
            ident, seq = parsed
            if self.raw and ident != self.ident:
                continue  # someone else's ping (a datagram socket only sees its own)
            item = self.outstanding.get(seq)
            if item is None or self.by_address.get(addr[0]) != item.worker:
                continue
            del self.outstanding[seq]
            item.timer.cancel()
            self.on_reply(item.worker, now - item.sent, now)

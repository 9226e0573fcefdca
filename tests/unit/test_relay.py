"""lab/relay.py on loopback: it forwards both ways, drops the share it is told to, and delays."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from wg_failover.lab.relay import Relay, RelaySettings, parse_set


@pytest.fixture
def echo_server():
    """A UDP echo server on loopback, in a thread."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(100)
            except TimeoutError:
                continue
            s.sendto(data, addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()
    stop.set()
    t.join(2)
    s.close()


def _roundtrips(relay: Relay, n: int, wait: float) -> list[float]:
    """Send n datagrams through the relay 1 ms apart; round-trip times of those that came back
    within `wait` after the last."""
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.setblocking(False)
    sent: dict[int, float] = {}
    rtts: list[float] = []

    def drain() -> None:
        while True:
            try:
                data = c.recv(100)
            except BlockingIOError:
                return
            rtts.append(time.monotonic() - sent[int.from_bytes(data, "big")])

    try:
        for i in range(n):
            sent[i] = time.monotonic()
            c.sendto(i.to_bytes(4, "big"), relay.listen)
            time.sleep(0.001)
            drain()
        end = time.monotonic() + wait
        while time.monotonic() < end and len(rtts) < n:
            time.sleep(0.005)
            drain()
    finally:
        c.close()
    return rtts


def test_clean_relay_forwards_everything_both_ways(echo_server):
    relay = Relay(("127.0.0.1", 0), echo_server, seed=1).start()
    try:
        rtts = _roundtrips(relay, 50, wait=0.5)
    finally:
        relay.stop()
    assert len(rtts) == 50
    assert relay.stats.forwarded == {"to": 50, "from": 50}


def test_loss_drops_about_the_share_asked_and_delay_delays(echo_server):
    relay = Relay(("127.0.0.1", 0), echo_server,
                  RelaySettings(loss=0.3, delay=0.04, direction="to"), seed=7).start()
    try:
        rtts = _roundtrips(relay, 200, wait=0.5)
    finally:
        relay.stop()
    dropped = relay.stats.dropped["to"]
    assert 35 <= dropped <= 85, dropped  # 30 % of 200, seeded
    assert relay.stats.dropped["from"] == 0
    assert len(rtts) == 200 - dropped
    assert min(rtts) >= 0.039


def test_settings_are_checked_and_parsed():
    with pytest.raises(ValueError):
        RelaySettings(loss=1.5).check()
    with pytest.raises(ValueError):
        RelaySettings(direction="sideways").check()
    assert parse_set(["delay_ms=50", "jitter_ms=15", "loss=0.2", "direction=from"]) == {
        "delay": 0.05, "jitter": 0.015, "loss": 0.2, "direction": "from"}
    with pytest.raises(ValueError):
        parse_set(["bogus=1"])

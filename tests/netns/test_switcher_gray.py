"""Gray failure on real parts (issue 18): a userspace UDP relay (lab/relay.py) in front of a
worker's wireguard-go loses or delays its datagrams, since `tc netem` is not available here.

The switcher runs as a real process; the responder runs in the lab, so the switch event's cause
is checked where it is counted. How fast it leaves is measured by bench/gray.py, not here.
"""

from __future__ import annotations

import re
import time

import pytest

from wg_failover.lab import kit
from wg_failover.lab.procs import poll_until
from wg_failover.lab.relay import front_wireguard

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

PORT = 51820  # the lab fleet's worker endpoint port


def _start(sl: kit.SwitcherLab, state, responder: str) -> kit.SwitcherProc:
    sw = sl.start_switcher(state, responder)
    for w in sl.prefs():
        assert sw.wait_for(rf"probe: {w} is up", 20), sw.text()
    return sw


def test_twenty_percent_loss_on_the_active_worker_is_left_as_gray_and_counted(netlab, tmp_path):
    sl = kit.build(netlab, tmp_path / "lab")
    w1 = sl.workers["w1"]
    relay = front_wireguard(w1.host, w1.iface.name, PORT, seed=18)
    sl.start_responder()
    assert sl.responder_url is not None
    sw = _start(sl, tmp_path / "state", sl.responder_url)
    try:
        time.sleep(6)  # backups need 20 answered probes before they count as clean
        assert sl.route_holder() == "w1"
        assert "switch w1" not in sw.text(), sw.text()
        offset = len(sw.text())
        relay.set(loss=0.2, direction="to")  # a fifth of what the client sends to w1 is lost
        m = sw.wait_for(r"switch w1 -> (w\d) \((gray|failover)\)[^\n]*", 20, offset)
        assert m, sw.text()[offset:]
        assert m.group(1) in ("w2", "w3")
        # Most runs leave on the loss rule; a run of misses past 150 ms of silence, as dead.
        assert m.group(2) == "gray" and re.search(r"w1 lost \d+ of \d+ probes", m.group(0)) \
            or re.search(r"w1 missed \d+ probes", m.group(0)), m.group(0)
        cause = "gray-loss" if m.group(2) == "gray" else "dead"
        assert poll_until(lambda: sl.route_holder() == m.group(1), 5)
        assert relay.stats()["dropped"]["to"] > 0

        def counted() -> bool:
            status, page = kit.ns_request(sl.master, "GET", sl.responder_url + "/metrics")
            return status == 200 and f'wgfo_client_switch_causes_total{{cause="{cause}"}} 1.0' \
                in str(page)

        assert poll_until(counted, 10), "the responder did not count the switch's cause"
        # The worker left is held down: a gray w1 is not taken back within the hold.
        offset = len(sw.text())
        time.sleep(3)
        assert "switch" not in sw.text()[offset:], sw.text()[offset:]
    finally:
        sw.stop()
        relay.stop()


def test_one_percent_loss_and_jitter_everywhere_makes_no_switch(netlab, tmp_path):
    """The short, seeded version of bench/gray.py's 10-minute soak: 1 % loss each way and
    20 +- 15 ms each way on every worker, 40 s, not one switch and no worker seen down."""
    sl = kit.build(netlab, tmp_path / "lab")
    relays = []
    try:
        for i, name in enumerate(sl.prefs()):
            node = sl.workers[name]
            relays.append(front_wireguard(node.host, node.iface.name, PORT, seed=100 + i,
                                          delay=0.020, jitter=0.015, loss=0.01))
        sw = _start(sl, tmp_path / "state", "http://198.18.0.254:9")  # responder away
        try:
            offset = len(sw.text())
            time.sleep(40)
            text = sw.text()[offset:]
            dropped = sum(r.stats()["dropped"]["to"] + r.stats()["dropped"]["from"]
                          for r in relays)
        finally:
            sw.stop()
        assert dropped > 10, "the relays dropped nothing: the soak tested nothing"
        assert "switch " not in text and " is down" not in text, text
        assert sl.route_holder() == "w1"
    finally:
        for r in relays:
            r.stop()

"""Latency placement on real parts (issue 18): three workers behind userspace UDP relays
(lab/relay.py; no `tc netem` here) with 80, 60 and 20 ms of round trip and some jitter, the real
responder with `placement: latency`, and a real switcher reporting its probes. The responder
moves the client to the fastest worker once the gain has lasted the sustain time, and not
before; jitter then moves nothing.

The switcher runs with --no-gray: its own gray-RTT rule (leave a worker 5x slower than a backup)
is the fast path's business, and this test is about the responder's placement.
"""

from __future__ import annotations

import time

import pytest

from wg_failover.fleet import dump_fleet
from wg_failover.lab import kit
from wg_failover.lab.procs import poll_until
from wg_failover.lab.relay import front_wireguard

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

PORT = 51820  # the lab fleet's worker endpoint port
SUSTAIN = 10.0
DELAYS = {"w1": 0.040, "w2": 0.030, "w3": 0.010}  # each way: RTT 80, 60, 20 ms


def test_the_responder_moves_the_client_to_its_fastest_worker_after_the_sustain_time(
        netlab, tmp_path):
    sl = kit.build(netlab, tmp_path / "lab")
    rs = sl.gen.fleet.responder.model_copy(update={
        "placement": "latency", "latency_sustain_seconds": SUSTAIN})
    assert sl.fleet_file is not None
    sl.fleet_file.write_text(dump_fleet(sl.gen.fleet.model_copy(update={"responder": rs})))
    relays = [front_wireguard(sl.workers[w].host, sl.workers[w].iface.name, PORT, seed=i,
                              delay=d, jitter=0.004)
              for i, (w, d) in enumerate(DELAYS.items())]
    sw = None
    try:
        sl.start_responder()
        assert sl.responder_url is not None
        # A report every second (heartbeat 1 s): the figures come within the sustain time.
        sw = sl.start_switcher(tmp_path / "state", sl.responder_url, "--no-gray",
                               "--report-every", "1", "--report-heartbeat", "1")
        for w in DELAYS:
            assert sw.wait_for(rf"probe: {w} is up", 30), sw.text()
        t_up = time.monotonic()
        assert sl.route_holder() == "w1"  # preference order until the figures say otherwise

        def assignment() -> dict:
            status, body = sl.http("GET", "/v1/clients/c1/assignment", "c1")
            assert status == 200, body
            assert isinstance(body, dict)
            return body

        assert poll_until(lambda: assignment()["worker"] == "w3", 60, 0.5), assignment()
        waited = time.monotonic() - t_up
        a = assignment()
        assert a["reason"] == "latency", a
        assert waited >= SUSTAIN - 1, waited  # the gain had to last, not just appear
        assert poll_until(lambda: sl.route_holder() == "w3", 10), sw.text()
        # Jitter moves nothing afterwards.
        time.sleep(8)
        assert assignment()["version"] == a["version"] and sl.route_holder() == "w3"
        assert relays[2].stats()["forwarded"]["to"] > 0, "w3's relay carried nothing"
    finally:
        if sw is not None:
            sw.stop()
        for r in relays:
            r.stop()
